"""`vitgender train`: the fine-tune recipe that built the default model (imports training/ lazily)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from vitgender.cli.app import app
from vitgender.cli.common import progress_bar


@app.command()
def train(
    data: Path = typer.Option(..., "--data", metavar="DATA", help="UTKFace-named folder, ImageFolder tree, CSV (path,label) or a pack .zip."),
    out: Path = typer.Option(..., "--out", metavar="DIR", help="Where to write the fine-tuned checkpoint directory."),
    image_size: int = typer.Option(140, metavar="N", help="Input resolution (multiple of 14); the model ships at it."),
    epochs: int = typer.Option(30, metavar="N", min=1),
    batch_size: int = typer.Option(128, metavar="N", min=1),
    lr: float = typer.Option(1e-4, metavar="X", help="Peak learning rate of the last block (earlier blocks decay by 0.75 per block)."),
    device: str = typer.Option("auto", metavar="DEVICE", help="auto, cpu or cuda."),
    init: Optional[Path] = typer.Option(None, metavar="DIR", help="Start from this checkpoint instead of the imported DINOv2 backbone."),
    resume: bool = typer.Option(True, help="Continue from OUT.run/checkpoint.pt if present."),
    pack: Optional[Path] = typer.Option(None, metavar="FILE", help="Also write the resized data as a compact pack .zip (for another machine)."),
) -> None:
    """Fine-tune a ViT gender classifier (the recipe that built the default model)."""
    from vitgender.training.finetune import TrainConfig
    from vitgender.training.recipe import run_training

    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr)

    def rich_iter(items):
        with progress_bar("decoding", total=len(items)) as advance:
            for item in items:
                yield item
                advance()

    written = run_training(data, out, image_size=image_size, init=init, cfg=cfg, device=device,
                           resume=resume, pack=pack, progress=rich_iter, log=lambda m: typer.echo(m, err=True))
    typer.echo(f"wrote {written}")

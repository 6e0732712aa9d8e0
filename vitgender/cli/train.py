"""`vitgender train`: fine-tune a ViT classifier with the recipe that built the default model (imports training/ lazily)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from vitgender.cli.app import app
from vitgender.cli.common import progress_bar


@app.command()
def train(
    data: Path = typer.Option(
        ...,
        "--data",
        metavar="DATA",
        help="Class folders (one per label), a CSV (path,label), "
        "a folder of UTKFace-named files (labelled by their gender field) or a pack .zip.",
    ),
    out: Path = typer.Option(..., "--out", metavar="DIR", help="Where to write the fine-tuned checkpoint directory."),
    image_size: Optional[int] = typer.Option(
        None,
        metavar="N",
        help="Input resolution, a multiple of 14 (default 140, " "the model's); --refit-top keeps --init's.",
    ),
    epochs: Optional[int] = typer.Option(
        None, metavar="N", min=1, help="Default 30 (full fine-tune) or 4 (--refit-top)."
    ),
    batch_size: int = typer.Option(128, metavar="N", min=1),
    lr: Optional[float] = typer.Option(
        None,
        metavar="X",
        help="Peak learning rate of the last block (default 1e-4; "
        "earlier blocks decay by 0.75 per block), or of the refit blocks (default 2e-5).",
    ),
    refit_top: int = typer.Option(
        0,
        metavar="N",
        min=0,
        help="CPU path: freeze all but the last N blocks of --init "
        "(default: the embedded model), cache the frozen blocks' tokens once (in OUT.run, reused "
        "unless --no-resume), refit the last N with race x gender balanced sampling and fold "
        "a temperature fitted on the holdout into the head (meaningful only when --init never "
        "trained on these faces).",
    ),
    balance: Optional[str] = typer.Option(
        None,
        metavar="KEYS",
        help="Draw training faces balanced over these groups, "
        "e.g. race,gender (default: none; race,gender with --refit-top).",
    ),
    holdout: Optional[float] = typer.Option(
        None,
        metavar="X",
        min=0.0,
        max=0.5,
        help="Keep this fraction of the "
        "training split out of training, log on it instead of the validation "
        "split and fold a temperature fitted on it into the head (default 0; "
        "0.1 with --refit-top).",
    ),
    device: str = typer.Option("auto", metavar="DEVICE", help="auto, cpu or cuda."),
    init: Optional[Path] = typer.Option(
        None, metavar="DIR", help="Start from this checkpoint instead of the imported DINOv2 backbone."
    ),
    resume: bool = typer.Option(True, help="Continue from OUT.run/checkpoint.pt if present."),
    pack: Optional[Path] = typer.Option(
        None, metavar="FILE", help="Also write the resized data as a compact pack .zip (for another machine)."
    ),
) -> None:
    """Fine-tune a ViT image classifier on labelled images (the recipe that built the default model)."""
    from vitgender.training.finetune import TrainConfig
    from vitgender.training.recipe import run_refit, run_training
    from vitgender.training.top_blocks import TopBlocksConfig

    def rich_iter(items):
        with progress_bar("decoding", total=len(items)) as advance:
            for item in items:
                yield item
                advance()

    def log(message: str) -> None:
        typer.echo(message, err=True)

    given = {
        "epochs": epochs,
        "lr": lr,
        "holdout_fraction": holdout,
        "balance": None if balance is None else tuple(k for k in balance.split(",") if k),
    }
    given = {k: v for k, v in given.items() if v is not None}  # unset options keep each recipe's defaults
    if refit_top:
        if pack is not None or device not in ("auto", "cpu") or image_size is not None:
            from vitgender.errors import UsageError

            raise UsageError(
                "--refit-top",
                "the CPU path (cached tokens of --init) takes no --pack, --device cuda " "or --image-size",
            )
        cfg = TopBlocksConfig(trainable=refit_top, batch_size=batch_size, **given)
        written = run_refit(data, out, init=init, cfg=cfg, resume=resume, progress=rich_iter, log=log)
    else:
        cfg = TrainConfig(batch_size=batch_size, **given)
        written = run_training(
            data,
            out,
            image_size=image_size or 140,
            init=init,
            cfg=cfg,
            device=device,
            resume=resume,
            pack=pack,
            progress=rich_iter,
            log=log,
        )
    typer.echo(f"wrote {written}")

"""`vitgender convert`: pickle weights -> model.safetensors + SHA256SUMS (the way past the pickle refusal)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from vitgender.cli.app import app
from vitgender.cli.common import error


@app.command()
def convert(
    model: Path = typer.Argument(
        ...,
        metavar="MODEL",
        help="A checkpoint folder with pytorch_model.bin (or sharded "
        ".bin files and their index), or the .bin file itself.",
    ),
    out: Optional[Path] = typer.Option(
        None,
        "--out",
        "-o",
        metavar="DIR",
        help="New folder for the converted " "checkpoint (written complete or not at all; must not exist).",
    ),
    in_place: bool = typer.Option(
        False,
        "--in-place",
        help="Add model.safetensors to MODEL's folder instead, and "
        "rewrite its SHA256SUMS; the pickle files stay (delete them yourself).",
    ),
) -> None:
    """Convert pickle weights to safetensors, checked tensor by tensor, with a fresh SHA256SUMS.

    Every other command refuses pickle files because loading them can run code; this one loads
    them (torch.load with weights_only=True) because you asked it to.
    """
    from vitgender.convert import convert as run

    written = run(model, out, in_place=in_place, warn=lambda line: error(f"warning: {line}"))
    typer.echo(
        f"wrote {written / 'model.safetensors'} and {written / 'SHA256SUMS'}; "
        f"check it with 'vitgender verify {written}'"
    )

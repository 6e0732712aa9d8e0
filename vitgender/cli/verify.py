"""`vitgender verify`: check (or write) a checkpoint's SHA256SUMS, safetensors headers and config."""

from __future__ import annotations

from pathlib import Path

import typer

from vitgender.cli.app import app
from vitgender.errors import UsageError


@app.command()
def verify(
    ctx: typer.Context,
    directory: Path = typer.Argument(..., metavar="DIR", help="Checkpoint directory."),
    write: bool = typer.Option(False, "--write", help="Create or refresh SHA256SUMS instead of checking it."),
    allow_pickle: bool = typer.Option(
        False, "--allow-pickle", help="Accept .bin/.pt weights; or convert them once: " "'vitgender convert DIR'."
    ),
) -> None:
    """Check a checkpoint: SHA256SUMS, safetensors headers, config. Exit 0 only if all pass.

    Without SHA256SUMS the headers and config are still checked, and the exit code is 2: a
    checkpoint whose files nothing vouches for is not verified.
    """
    from vitgender import checkpoint
    from vitgender.cli.common import only_with

    only_with(ctx, not write, "checking (--write records the files as they are, pickle or not)", "allow_pickle")
    if not directory.is_dir():
        raise UsageError(str(directory), "not a directory")
    if write:
        target = checkpoint.write_sha256sums(directory)
        typer.echo(f"wrote {target} ({len(checkpoint.read_sha256sums(directory))} files)")
        return
    ckpt = checkpoint.open_checkpoint(directory, allow_pickle=allow_pickle)  # headers and config, checksums if any
    described = (
        f"{len(ckpt.files.weights)} weight file(s) valid; model_type={ckpt.model_type}, " f"labels={list(ckpt.labels)}"
    )
    if ckpt.sha256 is None:
        # Valid files, but nothing proves they are the ones that were published: not a pass.
        raise UsageError(
            str(directory),
            f"{described}, but there is no {checkpoint.SHA256SUMS}, so nothing "
            "proves these are the intended files; record them with "
            f"'vitgender verify {directory} --write' and commit it",
        )
    typer.echo(f"OK {directory}: {len(ckpt.sha256)} files match {checkpoint.SHA256SUMS}; {described}")

"""Helpers shared by the subcommands: error lines, progress bars, option texts."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import typer

from vitgender.runtimes import runtime_help

MODEL_HELP = "Checkpoint directory or hub id owner/name[@revision]; default: the embedded model."
RUNTIME_HELP = runtime_help()  # generated from the registry: every runtime, none forgotten
TTA_HELP = ("flip: average each image's logits with its mirror image's (twice the compute; its measured "
            "accuracy gain is in the model card). Default none.")


def error(message: str) -> None:
    typer.echo(f"vitgender: {message}", err=True)


def show_progress() -> bool:
    """Progress bars on an interactive terminal only; CI logs stay clean."""
    return sys.stderr.isatty() and not os.environ.get("CI")


@contextmanager
def progress_bar(description: str, total: int | None = None) -> Iterator:
    """Yields `advance(n)`; a rich progress bar on a terminal, a no-op elsewhere."""
    if not show_progress():
        yield lambda n=1: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)


@contextmanager
def closed_pipe_ends_quietly() -> Iterator[None]:
    """`vitgender classify ... | head`: a reader that stops early is not an error (exit 0, no message),
    as with standard Unix tools. Click would otherwise exit 1 silently."""
    try:
        yield
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's final flush of stdout must not raise again
        raise typer.Exit(0) from None

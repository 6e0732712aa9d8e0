"""Helpers shared by the subcommands: error lines, progress bars, option texts."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum

import typer

from vitgender.runtimes import runtime_help

MODEL_HELP = "Checkpoint directory or hub id owner/name[@revision]; default: the embedded model."
RUNTIME_HELP = runtime_help()  # generated from the registry: every runtime, none forgotten


class AlphaPolicy(str, Enum):
    """`--alpha`: `vitgender.preprocess.ALPHA_POLICIES` (not imported here: the CLI starts without Pillow)."""

    white = "white"
    black = "black"
    drop = "drop"


ALPHA_HELP = (
    "Transparent images: white or black (composite on that colour) or drop (discard alpha, keep the "
    "colours beneath, as transformers.pipeline does). Default: what the model or artifact records, else "
    "white."
)
PICKLE_HELP = "Accept .bin/.pt weights (loaded weights_only); or convert them once: 'vitgender convert DIR'."
TTA_HELP = (
    "flip: average each image's logits with its mirror image's (twice the compute; its measured "
    "accuracy gain is in the model card). Default none."
)


def given(ctx: typer.Context, *names: str) -> list[str]:
    """The options among `names` (parameter names) the user set, rather than left at their defaults."""
    sources = {name: ctx.get_parameter_source(name) for name in names}  # enum of the click Typer bundles
    return [
        name for name, source in sources.items() if source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")
    ]


def only_with(ctx: typer.Context, condition: bool, what: str, *names: str) -> None:
    """Options mean what they say: one that does nothing unless `condition` holds is refused (exit 2,
    one line naming it and `what` it needs) instead of being silently ignored."""
    from vitgender.errors import UsageError

    used = [] if condition else given(ctx, *names)
    if used:
        flag = next(p.opts[0] for p in ctx.command.params if p.name == used[0])
        raise UsageError(flag, f"only with {what}")


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

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True
    ) as bar:
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

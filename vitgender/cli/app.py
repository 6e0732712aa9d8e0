"""The Typer application every `vitgender` subcommand module registers itself on."""

from __future__ import annotations

import typer

from vitgender import __version__

EXIT_CODES = (
    "Exit codes: 0 success; 1 the parity gate failed (an artifact does not match PyTorch); "
    "2 usage or input error (bad flag, missing or corrupt file, unreadable image); "
    "3 tool-chain failure (a converter or worker crashed on valid input)."
)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: no truncated option texts, no markup eating [brackets]
    help="Classify, verify, export and parity-check ViT image classifiers (default: the embedded female/male model).",
    epilog=EXIT_CODES,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vitgender {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """vitgender: ViT classifiers from checkpoint to phone, browser and server, with proof of parity."""

"""The `vitgender` command: one module per subcommand, each a thin layer over the Python API.

Every failure the user can act on is a `VitgenderError`: one line `vitgender: <what>: <why>`
on stderr and the error's exit code (see `vitgender.errors.ExitCode`), never a traceback.
"""

from __future__ import annotations

import sys
import warnings

from vitgender.cli import (  # noqa: F401 - registers
    bench,
    classify,
    convert,
    evaluate,
    explain,
    export,
    serve,
    train,
    validate,
    verify,
)
from vitgender.cli.app import app
from vitgender.cli.common import error
from vitgender.errors import VitgenderError


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    error(f"warning: {message}")


def main() -> None:
    warnings.showwarning = _show_warning
    try:
        app()
    except VitgenderError as exc:
        error(str(exc))
        sys.exit(int(exc.exit_code))
    except KeyboardInterrupt:
        error("interrupted")
        sys.exit(130)


__all__ = ["app", "main"]

"""Errors a user can act on.

Every failure caused by input (a bad image, a missing model, a corrupt checkpoint) is a
`UsageError`: the CLI prints `vitgender: <what>: <why>` and exits 2, never a traceback.
"""

from __future__ import annotations


class VitgenderError(Exception):
    """Base class; `exit_code` is what the CLI returns."""

    exit_code = 2

    def __init__(self, what: str, why: str) -> None:
        super().__init__(f"{what}: {why}")
        self.what = what
        self.why = why


class UsageError(VitgenderError):
    """Bad arguments or unusable input: exit code 2."""


class ImageError(UsageError):
    """An input image that cannot be decoded or is refused by policy."""


class CheckpointError(UsageError):
    """A checkpoint that is missing, unsafe, corrupt or fails integrity checks."""

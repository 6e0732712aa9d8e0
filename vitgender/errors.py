"""Errors a user can act on, and the exit code each one means.

The CLI prints `vitgender: <what>: <why>` on stderr and exits with the error's code, never a
traceback. The codes are part of the interface (CI jobs branch on them):

| code | meaning |
|---|---|
| 0 | success |
| 1 | the parity gate ran and failed (an artifact does not match PyTorch) |
| 2 | usage or input error: bad flag, missing or corrupt file, unreadable image |
| 3 | tool-chain failure: a converter or benchmark worker crashed on valid input |
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    GATE_FAILED = 1
    USAGE = 2
    TOOLCHAIN = 3


class VitgenderError(Exception):
    """Base class; `exit_code` is what the CLI returns."""

    exit_code: ExitCode = ExitCode.USAGE

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


class ToolchainError(VitgenderError):
    """A converter, quantizer or worker process failed on valid input: exit code 3."""

    exit_code = ExitCode.TOOLCHAIN

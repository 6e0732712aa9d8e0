"""Child processes that die with their parent.

Converters (onnx2tf, the TFLite converter) and benchmark workers run in child processes so their
memory is returned and a crash cannot take the caller down. A child must not outlive its parent:
a `kill -9` of `vitgender export` would otherwise leave a converter running, writing into a
folder nobody will collect. The parent passes its pid; the child asks the kernel for SIGKILL
when the parent dies (Linux `prctl(PR_SET_PDEATHSIG)`) and exits at once if the parent is
already gone.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PARENT_ENV = "VITGENDER_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def child_env(base: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
    """The environment for a worker child: `base` (default: ours) plus our pid for `die_with_parent`."""
    return {**(os.environ if base is None else base), **extra, PARENT_ENV: str(os.getpid())}


def die_with_parent() -> None:
    """Call first thing in a worker child started with `child_env`."""
    parent = int(os.environ.get(PARENT_ENV, "0") or 0)
    if not parent:
        return
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request above took effect
        os._exit(1)

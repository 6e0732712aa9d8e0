"""Side environments: toolchains that cannot share the main Python environment.

ExecuTorch (torch.export -> .pte, and its runtime) needs numpy >= 2; the TensorFlow/onnx2tf and
MediaPipe pins need numpy < 2. So ExecuTorch lives in `.venv-executorch` beside `.venv`
(`scripts/setup.sh` creates both from `requirements/executorch.txt`) and runs behind a process
boundary (`vitgender.toolchains.executorch_worker`). ExecuTorch moved rather than TensorFlow because it
touches two places (one converter, one runner) where the TF stack touches five (SavedModel and
TFLite runners, the TFLite inventory, the onnx2tf converter, MediaPipe face detection).
"""

from __future__ import annotations

import os
from pathlib import Path

from vitgender.errors import ToolchainError
from vitgender.toolchains.processes import child_env

EXECUTORCH_ENV = "VITGENDER_EXECUTORCH_PYTHON"
_REPO = Path(__file__).resolve().parent.parent


def executorch_python() -> str:
    """The side environment's interpreter: $VITGENDER_EXECUTORCH_PYTHON, else .venv-executorch beside the checkout."""
    configured = os.environ.get(EXECUTORCH_ENV)
    candidate = Path(configured) if configured else _REPO / ".venv-executorch" / "bin" / "python"
    if not candidate.is_file():
        raise ToolchainError("executorch", f"no ExecuTorch environment at {candidate}: run 'bash scripts/setup.sh', or "
                                           f"create one from requirements/executorch.txt and set {EXECUTORCH_ENV}")
    return str(candidate)


def executorch_command(*args: str) -> tuple[list[str], dict[str, str]]:
    """argv and environment for `python -m vitgender.toolchains.executorch_worker ARGS` in the side environment.

    The worker imports this package from the checkout (PYTHONPATH), never from the side
    environment's site-packages, so both processes run the same code.
    """
    env = child_env(PYTHONPATH=str(Path(__file__).resolve().parent.parent), CUDA_VISIBLE_DEVICES="",
                    PYTHONUNBUFFERED="1")
    env.pop("VIRTUAL_ENV", None)
    return [executorch_python(), "-m", "vitgender.toolchains.executorch_worker", *args], env

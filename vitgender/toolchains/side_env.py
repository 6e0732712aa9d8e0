"""Side environments: toolchains that cannot share the main Python environment.

ExecuTorch (torch.export -> .pte, and its runtime) needs numpy >= 2; the TensorFlow/onnx2tf and
MediaPipe pins need numpy < 2. So ExecuTorch lives in `.venv-executorch` beside `.venv`
(`scripts/setup.sh` creates both from `requirements/executorch.txt`) and runs behind a process
boundary (`vitgender.toolchains.executorch_worker`). ExecuTorch moved rather than TensorFlow because it
touches two places (one converter, one runner) where the TF stack touches five (SavedModel and
TFLite runners, the TFLite inventory, the onnx2tf converter, MediaPipe face detection).
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from pathlib import Path

from vitgender.errors import ToolchainError
from vitgender.toolchains.processes import child_env, run_job, start_worker

EXECUTORCH_ENV = "VITGENDER_EXECUTORCH_PYTHON"
WORKER = "vitgender.toolchains.executorch_worker"
_PACKAGE = Path(__file__).resolve().parents[1]  # the vitgender package folder
_REPO = _PACKAGE.parent  # the checkout, when running from one (where scripts/setup.sh puts .venv-executorch)


def executorch_python() -> str:
    """The side environment's interpreter: $VITGENDER_EXECUTORCH_PYTHON, else .venv-executorch beside the checkout."""
    configured = os.environ.get(EXECUTORCH_ENV)
    candidate = Path(configured) if configured else _REPO / ".venv-executorch" / "bin" / "python"
    if not candidate.is_file():
        raise ToolchainError(
            "executorch",
            f"no ExecuTorch environment at {candidate}: run 'bash scripts/setup.sh', or "
            f"create one from requirements/executorch.txt and set {EXECUTORCH_ENV}",
        )
    return str(candidate)


@functools.cache
def package_only_path() -> str:
    """A folder holding nothing but a link to this vitgender package, for the side environment's PYTHONPATH.

    The worker must import this very package (both processes run the same code) but nothing
    else from our environment: the package's parent folder is, outside an editable install,
    the main site-packages, whose numpy 1.26 would shadow the side environment's numpy 2.
    """
    folder = Path(tempfile.mkdtemp(prefix="vitgender-package-"))
    (folder / "vitgender").symlink_to(_PACKAGE, target_is_directory=True)
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return str(folder)


def executorch_env(threads: int | None = None) -> dict[str, str]:
    """The side environment's variables: our package only on its path, no GPU, unbuffered pipes."""
    env = child_env(PYTHONPATH=package_only_path(), CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    env.pop("VIRTUAL_ENV", None)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


# ExecuTorch's C++ runtime logs to stderr as "[file.cpp:NN] ..." and absl as "W1204 ..."/"I1204 ...".
EXECUTORCH_NOISE = ("[", "W1", "I1")


def run_executorch_job(command: str, job: dict, *, what: str, workdir: Path | None = None) -> dict:
    """One `export` or `inventory` job in the side environment (`run_job` framing)."""
    return run_job(
        WORKER,
        {"command": command, **job},
        what=what,
        python=executorch_python(),
        env=executorch_env(),
        workdir=workdir,
        noise=EXECUTORCH_NOISE,
    )


def start_executorch_worker(pte: Path, threads: int | None = None):
    """The resident `run` worker serving logits for one program over its stdin/stdout."""
    return start_worker([executorch_python(), "-m", WORKER, "run", str(Path(pte).absolute())], executorch_env(threads))

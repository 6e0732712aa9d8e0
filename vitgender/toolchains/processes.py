"""Every child process vitgender starts, through one protocol: `run_job` (and `start_worker` for a resident one).

Converters (onnx2tf, the TFLite converter, ExecuTorch), the ExecuTorch inventory and benchmark
workers run in child processes so their memory is returned and a crash cannot take the caller
down. One protocol for all of them:

- **Framing**: the parent writes the job as `job.json` in a work folder and runs
  `python -m MODULE /abs/job.json`; the child (`job_main`) writes `result.json` beside it, or
  `error.json` ({type, message, exit_code}) when it fails. stdout is left to the tools, which
  print freely (onnx2tf does), so a result is never parsed out of their log.
- **Absolute paths**: the child may run in another working directory, so every `Path` in a job
  is written as an absolute path (a relative model path was once taken for a hub id there).
- **Dies with its parent**: the child asks the kernel for SIGKILL when the parent dies (Linux
  `prctl(PR_SET_PDEATHSIG)`); a `kill -9` of `vitgender export` must not leave a converter
  writing into a folder nobody will collect.
- **Exit codes**: a child exits 2 for input it refused (`UsageError`: a corrupt artifact) and
  the parent raises `UsageError`; anything else non-zero is a tool chain failure
  (`ToolchainError`, exit 3). The message is the child's own error, or else the last lines of its
  stderr with the tool's log noise (lines starting with a given prefix) left out.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from vitgender.errors import ExitCode, ToolchainError, UsageError, VitgenderError

PARENT_ENV = "VITGENDER_PARENT_PID"
JOB, RESULT, ERROR = "job.json", "result.json", "error.json"
_PR_SET_PDEATHSIG = 1


def child_env(base: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
    """The environment for a child: `base` (default: ours) plus our pid for `die_with_parent`."""
    return {**(os.environ if base is None else base), **extra, PARENT_ENV: str(os.getpid())}


def die_with_parent() -> None:
    """Call first thing in a child started with `child_env`."""
    parent = int(os.environ.get(PARENT_ENV, "0") or 0)
    if not parent:
        return
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request above took effect
        os._exit(1)


def _absolute(value: object) -> object:
    """JSON-ready job data: Paths become absolute strings, containers are walked."""
    if isinstance(value, Path):
        return str(value.absolute())
    if isinstance(value, dict):
        return {str(k): _absolute(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_absolute(v) for v in value]
    return value


def stderr_tail(text: str, noise: Sequence[str] = (), lines: int = 2) -> str:
    """The last meaningful lines of a child's stderr, joined, without the tools' log noise."""
    kept = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith(tuple(noise))]
    return " | ".join(kept[-lines:])


def run_job(
    module: str,
    job: dict,
    *,
    what: str,
    python: str | None = None,
    env: dict[str, str] | None = None,
    workdir: Path | None = None,
    noise: Sequence[str] = (),
) -> dict:
    """Run `python -m module job.json` to completion and return its result (see the module docstring).

    `what` names the step in errors; `env` is the child's whole environment (default: ours,
    via `child_env`); `workdir` is where job.json lives and the child runs (default: a
    temporary folder, removed afterwards); `noise` are stderr line prefixes to leave out of errors.
    """
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="vitgender-job-") as tmp:
            return run_job(module, job, what=what, python=python, env=env, workdir=Path(tmp), noise=noise)
    workdir = workdir.absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    for stale in (RESULT, ERROR):
        (workdir / stale).unlink(missing_ok=True)
    (workdir / JOB).write_text(json.dumps(_absolute(job)))
    try:
        proc = subprocess.run(
            [python or sys.executable, "-m", module, str(workdir / JOB)],
            cwd=workdir,
            env=env if env is not None else child_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
        )
    except OSError as exc:
        raise ToolchainError(what, f"cannot start {module} ({exc.strerror or exc})") from None
    if proc.returncode == 0 and (workdir / RESULT).is_file():
        return json.loads((workdir / RESULT).read_text())
    error = _child_error(workdir / ERROR)
    code = error.get("exit_code", proc.returncode) if error else proc.returncode
    why = error.get("message") if error else None
    why = why or stderr_tail(proc.stderr or proc.stdout or "", noise) or f"exit code {proc.returncode}"
    raise (UsageError if code == ExitCode.USAGE else ToolchainError)(what, why[:400])


def _child_error(path: Path) -> dict | None:
    try:
        error = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return error if isinstance(error, dict) else None


def job_main(work: Callable[[dict], dict], argv: Sequence[str] | None = None) -> None:
    """The child's side of `run_job`: read job.json, write result.json or error.json, exit with the code."""
    die_with_parent()
    job_path = Path((argv or sys.argv)[-1])
    try:
        result = work(json.loads(job_path.read_text()))
    except VitgenderError as exc:
        _exit_with(job_path, type(exc).__name__, str(exc), int(exc.exit_code))
    except BaseException as exc:  # noqa: BLE001 - a converter raises anything; the parent needs its type and message
        traceback.print_exc()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        _exit_with(job_path, type(exc).__name__, f"{type(exc).__name__}: {first}", int(ExitCode.TOOLCHAIN))
    job_path.with_name(RESULT).write_text(json.dumps(result))


def _exit_with(job_path: Path, kind: str, message: str, code: int) -> None:
    job_path.with_name(ERROR).write_text(json.dumps({"type": kind, "message": message[:2000], "exit_code": code}))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # no atexit handlers: TensorFlow's can hang or crash at interpreter exit


def start_worker(argv: Sequence[str], env: dict[str, str]) -> subprocess.Popen:
    """A resident child speaking a binary protocol on stdin/stdout (the ExecuTorch runner).

    Same rules as `run_job` for the environment (`env` from `child_env`, so it dies with us);
    its framing is the caller's, its stderr is kept for `stderr_tail` when it fails.
    """
    try:
        return subprocess.Popen(
            list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
    except OSError as exc:
        raise ToolchainError(str(argv[0]), f"cannot start the worker ({exc.strerror or exc})") from None

"""ExecuTorch (.pte, XNNPACK delegate) through a worker in the ExecuTorch environment.

The program runs in `vitgender.toolchains.executorch_worker run` under `.venv-executorch`'s Python (see
`vitgender.toolchains.side_env` for why it has its own environment); pixel_values go to it over a pipe
and logits come back, so `validate`, `evaluate`, `bench`, `classify` and `serve` use it like any
other runner. Exported programs take a dynamic batch of 1-32; larger batches are split in the worker.
"""

from __future__ import annotations

import atexit
import os
import subprocess
from pathlib import Path

import numpy as np

from vitgender.errors import ToolchainError, UsageError
from vitgender.runtimes.base import RunnerInfo
from vitgender.runtimes.lifecycle import Closing
from vitgender.runtimes.sidecar import read_sidecar
from vitgender.runtimes.weights import weight_inventory
from vitgender.toolchains.executorch_worker import receive_array, send_array
from vitgender.toolchains.processes import stderr_tail
from vitgender.toolchains.side_env import EXECUTORCH_NOISE, run_executorch_job, start_executorch_worker


class ExecuTorchRunner(Closing):
    def __init__(self, process: subprocess.Popen, info: RunnerInfo) -> None:
        self._process = process
        self.info = info
        atexit.register(self.close)  # a backstop for callers that never close; close() unregisters it

    @classmethod
    def open(cls, source: str | os.PathLike | None, *, threads: int | None = None) -> ExecuTorchRunner:
        path = Path(source) if source is not None else None
        if path is None or not path.is_file():
            raise UsageError(str(source), "no such .pte file")
        with path.open("rb") as handle:
            identifier = handle.read(8)[4:8]
        if identifier != b"ET12":  # ExecuTorch program flatbuffer identifier
            raise UsageError(str(path), "not an ExecuTorch program (.pte)")
        sidecar = read_sidecar(path)
        process = start_executorch_worker(path, threads)
        runner = cls(
            process,
            RunnerInfo(
                "executorch",
                sidecar.labels,
                sidecar.preprocess,
                str(path),
                sidecar.precision,
                architecture=sidecar.architecture,
            ),
        )
        runner._receive()  # the worker says it is ready once the program is loaded
        return runner

    def _receive(self) -> np.ndarray:
        try:
            return receive_array(self._process.stdout)
        except (EOFError, OSError, ValueError):
            self._process.kill()
            why = stderr_tail(self._process.stderr.read().decode(errors="replace"), EXECUTORCH_NOISE, lines=1)
            raise ToolchainError(
                self.info.source, "ExecuTorch worker failed: " + (why or f"exit code {self._process.wait()}")[:300]
            ) from None

    def run(self, pixel_values: np.ndarray) -> np.ndarray:
        try:
            send_array(self._process.stdin, np.asarray(pixel_values, np.float32))
        except (BrokenPipeError, OSError):
            pass  # the worker died: _receive reports why
        return self._receive().copy()

    def close(self) -> None:
        """Ends the worker: stdin closed (it exits when the stream ends), killed after 5 s."""
        atexit.unregister(self.close)
        if self._process.poll() is None:
            self._process.stdin.close()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()


def inventory(path: Path) -> dict:
    """Weight bytes by dtype from the XNNPACK graphs inside the .pte, and its delegation coverage
    (decoded in the ExecuTorch environment)."""
    found = run_executorch_job(
        "inventory", {"pte": Path(path)}, what=f"{path}: reading the ExecuTorch program's weights"
    )
    return weight_inventory(
        found["weight_bytes_by_dtype"],
        found["op_counts"],
        delegates=found["delegates"],
        outside_delegates=found["outside_delegates"],
    )

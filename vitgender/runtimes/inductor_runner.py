"""PT2E int8 programs (.pt2) compiled for this CPU by torch.compile (Inductor, oneDNN).

A `pt2-int8` (or `pt2-int8-dynamic`) artifact holds no code for any CPU: a torch.export graph of quantize/dequantize ops
and int8 weights. Inductor compiles it on the machine that runs it, fusing each quantized linear
with its neighbours into oneDNN int8 matrix products (AMX or VNNI, whichever the CPU has), with
frozen, pre-packed weights. Compiling takes 10-30 s per batch size, so batches are padded to the
next of a few sizes (1, 2, 4, 8, 16, 32) and larger ones split: at most six compilations. In a static
program an image's answer is independent of the padding (rows never mix); a dynamic one measures its
ranges over the whole padded batch, so its answers depend on the batch (its info says so). Needs a C++ compiler on the machine,
as torch.compile does on CPU.

One setting, `precision`: `f32` (default) runs the program's float parts (LayerNorm, softmax, GELU,
attention's activation x activation products, a float head) in float32; `bf16` compiles it under
bfloat16 autocast, PyTorch's "int8-mixed-bf16" recipe for X86InductorQuantizer, where they run in
bfloat16 between the int8 linears (on AMX-BF16 / AVX512-BF16 CPUs only; refused elsewhere). The
linears stay int8, so the gate judges it as the int8 artifact it is, with the same budget.
"""

from __future__ import annotations

import os
import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np

from vitgender.errors import ToolchainError, UsageError
from vitgender.precision import Precision
from vitgender.runtimes import int8_attention
from vitgender.runtimes.base import RunnerInfo, check_float_precision, sidecar_info
from vitgender.runtimes.lifecycle import Closing
from vitgender.runtimes.weights import weight_inventory

BUCKETS = (1, 2, 4, 8, 16, 32)  # the batch sizes compiled; the program's batch dimension goes to 32
COMPILERS = ("g++", "c++", "clang++")


def _bucket(batch: int) -> int:
    return next(b for b in BUCKETS if b >= batch)


def _compiler() -> str | None:
    named = os.environ.get("CXX")
    return next((shutil.which(c) for c in ([named] if named else []) + list(COMPILERS) if shutil.which(c)), None)


def _load(path: Path):
    """The saved program; the quantize/dequantize ops it calls are registered before it is read."""
    import torch
    import torch.ao.quantization.fx._decomposed  # registers the quantized_decomposed ops the program calls

    try:
        return torch.export.load(str(path))
    except Exception as exc:  # noqa: BLE001  (torch raises RuntimeError or zip errors for a foreign file)
        raise UsageError(str(path), f"not a torch.export program vitgender can load ({type(exc).__name__})") from None


def bench_settings(precision: Precision) -> list[str]:
    """`bench`'s extra row on an int8 program: its float parts in bf16, where the CPU computes bf16."""
    from vitgender.machine import has_bf16_arithmetic

    return ["inductor:precision=bf16"] if precision.is_int8 and has_bf16_arithmetic() else []


class InductorRunner(Closing):
    def __init__(self, program, info: RunnerInfo, bf16: bool = False) -> None:
        import torch

        self._compiled = torch.compile(program.module(), dynamic=False)
        self._bf16 = bf16
        self.info = info

    @classmethod
    def open(
        cls, source: str | os.PathLike | None, *, threads: int | None = None, precision: str = "f32"
    ) -> InductorRunner:
        precision = check_float_precision("inductor", precision)
        path = Path(source) if source is not None else None
        if path is None or not path.is_file():
            raise UsageError(str(source), "no such .pt2 file")
        if not zipfile.is_zipfile(path):
            raise UsageError(str(path), "not a torch.export program (.pt2 is a zip archive)")
        if _compiler() is None:
            raise ToolchainError(
                str(path), f"torch.compile needs a C++ compiler: none of {', '.join(COMPILERS)} found (or set CXX)"
            )
        import torch

        if threads:
            torch.set_num_threads(threads)
        info = sidecar_info("inductor", path)
        return cls(_load(path), info, bf16=precision == "bf16")

    def warm_up(self, max_batch: int) -> None:
        """Compile every batch size a batch of up to `max_batch` images uses, now: `serve` calls this
        before it says ready, so no request waits for a compilation."""
        channels = self.info.architecture.num_channels if self.info.architecture else 3
        shape = (channels, self.info.preprocess.height, self.info.preprocess.width)
        for size in BUCKETS[: BUCKETS.index(_bucket(min(max_batch, BUCKETS[-1]))) + 1]:
            self._run_bucket(np.zeros((size, *shape), np.float32))

    def _run_bucket(self, pixels: np.ndarray) -> np.ndarray:
        import torch

        size = _bucket(len(pixels))
        padded = np.zeros((size, *pixels.shape[1:]), np.float32)
        padded[: len(pixels)] = pixels
        try:
            # Frozen weights are what lets Inductor pre-pack them into oneDNN's int8 kernels; set where
            # it compiles (lazily, per batch size), not for the whole process (torch.compile's
            # options= does not reach this pass).
            # Autocast is part of what Inductor traces: the bf16 setting compiles bf16 float parts.
            bf16 = torch.autocast("cpu", dtype=torch.bfloat16, enabled=self._bf16)
            # int8_attention: torchao's int8 attention kernel for a static program's quantized attention.
            frozen = torch._inductor.config.patch(freezing=True)
            with torch.no_grad(), bf16, frozen, int8_attention.compiling(), warnings.catch_warnings():
                # Inductor's oneDNN lowering copies zero points with torch.tensor(tensor): noise to a user
                warnings.filterwarnings("ignore", message="To copy construct from a tensor")
                logits = self._compiled(torch.from_numpy(padded))
        except Exception as exc:  # noqa: BLE001  (Inductor's compile errors have many types)
            why = [
                line for line in str(exc).strip().splitlines() if line.strip() and "TORCHDYNAMO_VERBOSE" not in line
            ][:1] or [type(exc).__name__]
            raise ToolchainError(self.info.source, f"torch.compile failed: {why[0][:300]}") from None
        return logits[: len(pixels)].float().numpy()

    def run(self, pixel_values: np.ndarray) -> np.ndarray:
        pixels = np.asarray(pixel_values, np.float32)
        top = BUCKETS[-1]
        return np.concatenate([self._run_bucket(pixels[i : i + top]) for i in range(0, max(len(pixels), 1), top)])

    def op_times(self, inputs: np.ndarray, runs: int) -> list[tuple[str, float]]:
        """(op, self CPU seconds) from torch.profiler: the oneDNN kernels, and the compiled graph's
        own generated loops as one entry (`profiling.torch_op_times`)."""
        from vitgender.runtimes.profiling import torch_op_times

        return torch_op_times(self.run, inputs, runs)

    def close(self) -> None:
        """Nothing held outside this process: the compiled code goes with the runner."""


def inventory(path: Path) -> dict:
    """Weight bytes by dtype and the program's op counts, read from the saved graph without compiling it."""
    from collections import Counter

    program = _load(Path(path))
    tensors = [*program.state_dict.values(), *program.constants.values()]
    by_dtype: Counter[str] = Counter()
    for tensor in tensors:
        by_dtype[str(tensor.dtype).removeprefix("torch.")] += tensor.numel() * tensor.element_size()
    ops = Counter(str(n.target) for n in program.graph.nodes if n.op == "call_function")
    return weight_inventory(dict(by_dtype), dict(ops), {op for op in ops if op.startswith("quantized_decomposed.")})

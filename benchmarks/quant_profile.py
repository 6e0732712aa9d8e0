"""Where an int8 artifact spends its time: ORT's profiler for .onnx, XNNPACK coverage for .tflite.

For an ONNX file: per op type, its share of kernel time at `--batch` (after warm-up), with the
node count, from onnxruntime's own profiler, i.e. the graph ORT really runs after its fusions
(it shows QLinearMatMul vs MatMulIntegerToFloat, leftover Quantize/DequantizeLinear, float GELU).
For a TFLite file: how many XNNPACK partitions LiteRT makes; each boundary is a hand-over to
LiteRT's builtin reference kernels (an int8 LayerNorm/Softmax/GELU split the graph into 76).

    .venv/bin/python benchmarks/quant_profile.py artifacts/vitgender-default/model_int8_static.onnx \\
        artifacts/vitgender-default/model_int8_dynamic.onnx artifacts/vitgender-default/model_int8.tflite
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np

from vitgender.machine import machine


def onnx_profile(path: Path, batch: int, runs: int = 4) -> list[tuple[str, float, int]]:
    """(op type, % of kernel time, nodes per run) from ORT's profiler, through the runner bench uses."""
    from vitgender.runtimes import open_runner

    with open_runner("onnx", path, threads=2) as runner:
        size, rng = (runner.info.preprocess.height, runner.info.preprocess.width), np.random.default_rng(0)
        x = (
            rng.integers(0, 256, (batch, *size, 3), dtype=np.uint8)
            if runner.info.raw_input
            else rng.normal(size=(batch, 3, *size)).astype(np.float32)
        )
        events = runner.op_times(x, runs)
    time, count = Counter(), Counter()
    for op, seconds in events:
        time[op] += seconds
        count[op] += 1
    total = sum(time.values()) or 1
    return [(op, 100 * t / total, count[op] // runs) for op, t in time.most_common()]


def tflite_partitions(path: Path) -> tuple[int, int]:
    """(ops in the file, XNNPACK partitions LiteRT made): every partition boundary is a hand-over
    to LiteRT's builtin kernels and back, so more than a couple means ops XNNPACK cannot run."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=2)
    interpreter.allocate_tensors()
    ops = interpreter._get_ops_details()
    return sum(o["op_name"] != "DELEGATE" for o in ops), sum(o["op_name"] == "DELEGATE" for o in ops)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", nargs="+", type=Path)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    m = machine()
    print(f"machine: {m['cpu']}, {m['cores']} cores, ISA flags: {' '.join(m['isa'])}")
    for path in args.artifacts:
        if path.suffix == ".onnx":
            print(f"\n{path.name} (ORT profiler, batch {args.batch}): op type, % of kernel time, nodes")
            for op, share, n in onnx_profile(path, args.batch):
                if share >= 0.5:
                    print(f"  {op:<28} {share:5.1f}%  {n}")
        elif path.suffix == ".tflite":
            total, partitions = tflite_partitions(path)
            print(f"\n{path.name}: {total} ops, {partitions} XNNPACK partition(s)")


if __name__ == "__main__":
    main()

"""The machine's arithmetic roofs, measured: how fast can a GEMM go here in fp32, fp16 and int8?

`vitgender bench` reports every candidate as a share of the roof for the arithmetic it computes
in, so the roof must be measured on this machine in the same run, never derived from a clock
and an assumed number of FMA pipes (that estimate was exceeded by 17% by ORT on an EPYC).
Each roof is the best of the libraries the runtimes use (PyTorch's oneDNN/MKL, onnxruntime's
MLAS) on two shapes: the ViT's own MLP GEMM at the benchmark's largest batch, and a square
GEMM. int8 is uint8 x int8 with int32 accumulation, what ORT runs for quantized MatMuls; ORT's
int8 x int8 kernel is measured beside it (`int8_s8s8`, not a roof) because it was 20x slower on
this project's AVX-512 VNNI machine, which is why artifacts use uint8 activations.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

SQUARE = 2048


def _rate(fn: Callable[[], object], ops: float, seconds: float) -> float:
    """Best-of-window GOP/s: the roof is what the machine can do, so noise only lowers it."""
    fn()
    best, stop = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < stop:
        began = time.perf_counter()
        fn()
        best = max(best, ops / (time.perf_counter() - began) / 1e9)
    return best


def _ort_session(
    m: int,
    k: int,
    n: int,
    integer: bool,
    threads: int,
    signed_activations: bool = False,
    weight: np.ndarray | None = None,
):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if integer:
        values = rng.integers(-127, 128, (k, n), dtype=np.int8) if weight is None else weight
        weight = numpy_helper.from_array(values, "w")
        x_type = TensorProto.INT8 if signed_activations else TensorProto.UINT8
        node, y_type = helper.make_node("MatMulInteger", ["x", "w"], ["y"]), TensorProto.INT32
    else:
        weight = numpy_helper.from_array(rng.standard_normal((k, n), dtype=np.float32), "w")
        node, x_type, y_type = helper.make_node("MatMul", ["x", "w"], ["y"]), TensorProto.FLOAT, TensorProto.FLOAT
    graph = helper.make_graph(
        [node],
        "gemm",
        [helper.make_tensor_value_info("x", x_type, [m, k])],
        [helper.make_tensor_value_info("y", y_type, None)],
        initializer=[weight],
    )
    model = helper.make_model(graph, ir_version=9, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def gemm_rates(
    m: int, k: int, n: int, threads: int, seconds: float = 1.0, fp16: bool = True, bf16: bool = False
) -> dict[str, dict[str, float]]:
    """{arithmetic: {library: GOP/s}} for one (m x k) @ (k x n) GEMM.

    fp16 is PyTorch only (what the transformers pipeline runs a float16 checkpoint in); ORT and
    LiteRT have no fp16 GEMM on x86 and run fp16 artifacts in fp32 after upcasting the weights.
    bf16 (PyTorch's oneDNN) is measured where asked: on CPUs with bf16 arithmetic, for the bf16 rows.
    """
    import torch

    torch.set_num_threads(threads)
    ops = 2.0 * m * k * n
    rng = np.random.default_rng(0)
    a, b = torch.randn(m, k), torch.randn(k, n)
    ah, bh = a.half(), b.half()
    out = {
        "fp32": {"torch": _rate(lambda: a @ b, ops, seconds)},
        "fp16": {"torch": _rate(lambda: ah @ bh, ops, seconds)} if fp16 else {},
        "int8": {},
    }
    if bf16:
        ab, bb = a.bfloat16(), b.bfloat16()
        out["bf16"] = {"torch": _rate(lambda: ab @ bb, ops, seconds)}
    ai, bi = torch.randint(-128, 128, (m, k), dtype=torch.int8), torch.randint(-128, 128, (k, n), dtype=torch.int8)
    try:
        out["int8"]["torch"] = _rate(lambda: torch._int_mm(ai, bi), ops, seconds)
    except RuntimeError:  # no int8 GEMM kernel for this shape/CPU in this torch build
        pass
    x = rng.standard_normal((m, k), dtype=np.float32)
    session = _ort_session(m, k, n, False, threads)
    out["fp32"]["onnxruntime"] = _rate(lambda: session.run(None, {"x": x}), ops, seconds)
    xu = rng.integers(0, 256, (m, k), dtype=np.uint8)
    session_int = _ort_session(m, k, n, True, threads)
    out["int8"]["onnxruntime"] = _rate(lambda: session_int.run(None, {"x": xu}), ops, seconds)
    # not a roof: the int8 x int8 kernel ORT would run for signed activations, measured to show why artifacts use uint8
    xs = rng.integers(-128, 128, (m, k), dtype=np.int8)
    session_s8 = _ort_session(m, k, n, True, threads, signed_activations=True)
    out["int8_s8s8"] = {"onnxruntime": _rate(lambda: session_s8.run(None, {"x": xs}), ops, seconds)}
    return {arith: {lib: round(v, 1) for lib, v in libs.items()} for arith, libs in out.items()}


def ort_int8_saturates(threads: int = 1) -> bool:
    """Whether onnxruntime's uint8 x int8 GEMM loses the exact sums on this CPU: x86 without VNNI
    multiplies pairs into saturating 16-bit sums (`vpmaddubsw`), so 255 x 127 + 255 x 127 clips to
    32,767, and a quantized artifact can answer differently here than on a VNNI or AMX machine.
    Measured on worst-case operands, not inferred from the flags."""
    k = 64
    session = _ort_session(1, k, 1, True, threads, weight=np.full((k, 1), 127, dtype=np.int8))
    return int(session.run(None, {"x": np.full((1, k), 255, dtype=np.uint8)})[0][0, 0]) != k * 255 * 127


def measure_roofs(hidden: int, intermediate: int, tokens: int, batch: int, threads: int, seconds: float = 1.0) -> dict:
    """Roofs per arithmetic (best over shapes and libraries) with every measurement behind them.

    bf16 only where the CPU computes it natively (`machine.has_bf16_arithmetic`)."""
    from vitgender.machine import has_bf16_arithmetic

    bf16 = has_bf16_arithmetic()
    shapes = {"vit_mlp": (batch * tokens, hidden, intermediate), "square": (SQUARE, SQUARE, SQUARE)}
    # fp16 only on the model's own shape: a square fp16 GEMM takes minutes on CPUs without fp16 units
    measured = {
        name: {"shape": list(shape), **gemm_rates(*shape, threads, seconds, fp16=name == "vit_mlp", bf16=bf16)}
        for name, shape in shapes.items()
    }
    roofs = {}
    for arith in ("fp32", "fp16", "int8", *(["bf16"] if bf16 else [])):
        candidates = [(rate, shape, lib) for shape, m in measured.items() for lib, rate in m.get(arith, {}).items()]
        rate, shape, lib = max(candidates)
        roofs[arith] = {"gops": rate, "shape": shape, "library": lib}
    return {"roofs": roofs, "measured": measured, "threads": threads, "int8_saturates": ort_int8_saturates(threads)}

"""Where a runner's time goes, per kind of operation, from each engine's own profiler.

`vitgender bench` asks every runner that has an `op_times(inputs, runs)` method (ONNX Runtime,
OpenVINO, PyTorch eager and Inductor) for the time its engine spent in each op type, and groups the engine-specific
names into a few kinds shared by all engines (matrix products, GELU, LayerNorm, ...). The
shares of those kinds, times the bench's own timed milliseconds per image, say how much of an
image's time the matrix products take against what they would take at the machine's measured
roof, and what the rest is. LiteRT and ExecuTorch have no per-op profiler reachable from Python
here: their rows get only the roof split (matrix products at the roof vs everything else).

A kind is what the engine ran, not what the model says: OpenVINO fuses GELU and the bias add into
its FullyConnected nodes, so there they count as matrix products, and ONNX Runtime's decomposed
GELU counts its Erf as GELU and its Div/Mul/Add as elementwise. Inductor fuses LayerNorm, softmax,
(de)quantization and the adds it did not fold into a linear into loops it generates, which the
profiler sees as one call per graph: they count as "compiled loops", its oneDNN kernels as matrix
products.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

# Kinds, in the order reports list them. "matrix products" covers every GEMM-like kernel (linear
# layers, attention scores and weighted sums, the patch-embedding convolution) in any precision.
KINDS = (
    "matrix products",
    "attention (fused)",
    "GELU",
    "LayerNorm",
    "Softmax",
    "quantize/dequantize",
    "data movement",
    "elementwise",
    "compiled loops",
    "other",
)

_BY_NAME = {
    # ONNX Runtime op types (after its graph fusions)
    **dict.fromkeys(
        (
            "MatMul",
            "Gemm",
            "FusedMatMul",
            "FusedGemm",
            "MatMulInteger",
            "MatMulIntegerToFloat",
            "DynamicQuantizeMatMul",
            "QLinearMatMul",
            "QGemm",
            "Conv",
            "FusedConv",
            "QLinearConv",
            "ConvInteger",
            "MatMulNBits",
        ),
        "matrix products",
    ),
    **dict.fromkeys(("Attention", "MultiHeadAttention", "QAttention"), "attention (fused)"),
    **dict.fromkeys(("Gelu", "BiasGelu", "FastGelu", "QuickGelu", "Erf"), "GELU"),
    **dict.fromkeys(("LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization"), "LayerNorm"),
    "Softmax": "Softmax",
    **dict.fromkeys(
        ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearAdd", "QLinearMul"),
        "quantize/dequantize",
    ),
    **dict.fromkeys(
        (
            "Transpose",
            "Reshape",
            "Concat",
            "Gather",
            "Slice",
            "Split",
            "Squeeze",
            "Unsqueeze",
            "Flatten",
            "Expand",
            "Identity",
            "Cast",
            "Pad",
            "ReorderOutput",
        ),
        "data movement",
    ),
    **dict.fromkeys(("Add", "Mul", "Div", "Sub", "Sqrt", "Pow", "Where", "Neg", "ReduceMean"), "elementwise"),
    # OpenVINO execution-graph node types
    **dict.fromkeys(("FullyConnected", "Convolution", "GroupConvolution"), "matrix products"),
    **dict.fromkeys(("ScaledDotProductAttention", "ScaledAttn"), "attention (fused)"),
    "MVN": "LayerNorm",
    "RMS": "LayerNorm",
    **dict.fromkeys(("FakeQuantize", "Convert"), "quantize/dequantize"),
    **dict.fromkeys(
        ("Reorder", "Concatenation", "StridedSlice", "Broadcast", "ShapeOf", "Interpolate"), "data movement"
    ),
    **dict.fromkeys(("Eltwise", "Subgraph", "MulAdd", "Multiply", "Power"), "elementwise"),
}
# PyTorch aten ops (self time, so wrappers such as aten::linear and aten::matmul add nothing)
_ATEN = {
    **dict.fromkeys(
        ("addmm", "mm", "bmm", "baddbmm", "_convolution", "mkldnn_convolution", "convolution", "_int_mm"),
        "matrix products",
    ),
    **dict.fromkeys(
        (
            "_scaled_dot_product_flash_attention_for_cpu",
            "_scaled_dot_product_attention_math",
            "_scaled_dot_product_efficient_attention",
        ),
        "attention (fused)",
    ),
    "gelu": "GELU",
    "native_layer_norm": "LayerNorm",
    "_softmax": "Softmax",
    **dict.fromkeys(
        ("copy_", "clone", "contiguous", "cat", "_reshape_alias", "index_select", "empty_like", "to", "_to_copy"),
        "data movement",
    ),
    **dict.fromkeys(("add", "add_", "mul", "div", "sub", "sqrt", "rsqrt", "pow"), "elementwise"),
}


# oneDNN kernels that Inductor's lowerings call (int8 linears and convolution, the packed float head)
_ONEDNN = ("onednn::qlinear_pointwise", "onednn::qconv_pointwise", "mkldnn::_linear_pointwise")
_COMPILED = "## Call CompiledFxGraph"  # torch.profiler's event for an Inductor graph's own (generated) code


def op_kind(op_type: str) -> str:
    """The shared kind of an engine's op type (`MatMulIntegerToFloat`, `FullyConnected`, `aten::addmm`)."""
    if op_type.startswith(_ONEDNN):
        return "matrix products"
    if op_type.startswith(_COMPILED):
        return "compiled loops"
    if op_type.startswith("aten::"):
        return _ATEN.get(op_type.removeprefix("aten::"), "other")
    return _BY_NAME.get(op_type, "other")


def torch_op_times(run: Callable[[np.ndarray], object], inputs: np.ndarray, runs: int) -> list[tuple[str, float]]:
    """(op, self CPU seconds) over `runs` calls of `run(inputs)` after one warm-up, from torch.profiler:
    self time, so a wrapper (aten::linear, a compiled region) never counts its kernels twice."""
    from torch.profiler import ProfilerActivity, profile

    run(inputs)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(runs):
            run(inputs)
    return [(event.key, event.self_cpu_time_total / 1e6) for event in prof.key_averages()]


def kind_shares(op_times: Iterable[tuple[str, float]]) -> dict[str, float]:
    """(op type, seconds) pairs -> each kind's share of the total, in `KINDS` order, kinds with no time left out."""
    totals = dict.fromkeys(KINDS, 0.0)
    for op_type, seconds in op_times:
        totals[op_kind(op_type)] += seconds
    total = sum(totals.values())
    if total <= 0:
        return {}
    return {kind: seconds / total for kind, seconds in totals.items() if seconds > 0}


def breakdown(
    shares: dict[str, float] | None, ms_per_image: float, gemm_ms_at_roof: float, profiler: str | None
) -> dict:
    """One row's split of its measured time per image: the matrix products at the roof, and where
    the rest goes by the engine's profiler where it has one (shares scaled to the timed ms)."""
    result = {
        "ms_per_image": round(ms_per_image, 4),
        "matmul_ms_at_roof": round(gemm_ms_at_roof, 4),
        "outside_roof_ms": round(ms_per_image - gemm_ms_at_roof, 4),
        "profiler": profiler,
    }
    if shares:
        kinds = {kind: round(share * ms_per_image, 4) for kind, share in shares.items()}
        matmul = kinds.get("matrix products", 0.0) + kinds.get("attention (fused)", 0.0)
        result["kinds_ms"] = kinds
        # how fast the engine's own matrix products ran, against the roof (fused attention counted in)
        result["matmul_pct_of_roof"] = round(100 * gemm_ms_at_roof / matmul, 1) if matmul else None
    return result

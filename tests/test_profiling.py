"""Op kinds shared by every engine's profiler, and one row's time split (`vitgender.runtimes.profiling`)."""

from __future__ import annotations

import pytest

from vitgender.runtimes.profiling import KINDS, breakdown, kind_shares, op_kind


@pytest.mark.parametrize(
    ("op_type", "kind"),
    [
        ("MatMulIntegerToFloat", "matrix products"),  # ORT int8
        ("DynamicQuantizeMatMul", "matrix products"),
        ("FullyConnected", "matrix products"),  # OpenVINO
        ("aten::addmm", "matrix products"),  # PyTorch
        ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention (fused)"),
        ("aten::linear", "other"),  # a wrapper: its self time is not a GEMM's
        ("onednn::qlinear_pointwise", "matrix products"),  # Inductor's int8 linears
        ("## Call CompiledFxGraph fabc123 ##", "compiled loops"),  # Inductor's generated code
        ("TorchDynamo Cache Lookup", "other"),
        ("Erf", "GELU"),
        ("MVN", "LayerNorm"),
        ("SkipLayerNormalization", "LayerNorm"),
        ("DequantizeLinear", "quantize/dequantize"),
        ("Reorder", "data movement"),
        ("SomethingNew", "other"),
    ],
)
def test_op_kind_names_each_engines_ops(op_type, kind):
    assert op_kind(op_type) == kind and kind in KINDS


def test_kind_shares_sum_to_one_in_report_order():
    shares = kind_shares([("MatMul", 3.0), ("Softmax", 0.5), ("aten::gelu", 0.5), ("MatMulInteger", 1.0)])
    assert shares == pytest.approx({"matrix products": 0.8, "GELU": 0.1, "Softmax": 0.1})
    assert list(shares) == [k for k in KINDS if k in shares]
    assert kind_shares([]) == {} and kind_shares([("MatMul", 0.0)]) == {}


def test_breakdown_scales_shares_to_the_timed_ms():
    split = breakdown({"matrix products": 0.75, "GELU": 0.25}, 8.0, 3.0, "onnx")
    assert split["kinds_ms"] == {"matrix products": 6.0, "GELU": 2.0}
    assert split["outside_roof_ms"] == 5.0 and split["matmul_pct_of_roof"] == 50.0
    # no profiler: only the split against the roof
    plain = breakdown(None, 8.0, 3.0, None)
    assert "kinds_ms" not in plain and plain["profiler"] is None and plain["matmul_ms_at_roof"] == 3.0

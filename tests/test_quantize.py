"""Static int8: the kernels it picks, batch invariance, and the sensitivity-guided `auto` preset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="quantization needs the onnx extra: pip install .[onnx]")

from vitgender.exporters import ExportOptions, main_export  # noqa: E402
from vitgender.manifest import read_manifest  # noqa: E402
from vitgender.runtimes import open_runner  # noqa: E402
from vitgender.validators.batching import batch_variation  # noqa: E402


@pytest.fixture(scope="module")
def static_and_dynamic(tiny_model, tmp_path_factory) -> Path:
    return main_export(tiny_model, tmp_path_factory.mktemp("quant") / "q", "onnx-int8-static,onnx-int8-dynamic")


def test_static_int8_runs_uint8_activations_and_float_gemm_outputs(static_and_dynamic):
    """U8S8 is what MLAS runs fast on VNNI; float MatMul outputs let ORT fuse DQ+MatMul into MatMulIntegerToFloat."""
    import onnx

    model = onnx.load(str(static_and_dynamic / "model_int8_static.onnx"))
    initializers = {i.name: i for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    activation_zero_points, weight_types = set(), set()
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear":  # activations are quantized at run time, weights are stored quantized
            activation_zero_points.add(initializers[node.input[2]].data_type)
            assert producers.get(node.input[0]) is None or producers[node.input[0]].op_type not in ("MatMul", "Gemm")
        if node.op_type == "DequantizeLinear" and node.input[0] in initializers:
            weight_types.add(initializers[node.input[0]].data_type)
    assert activation_zero_points == {onnx.TensorProto.UINT8}
    assert onnx.TensorProto.INT8 in weight_types
    plan = next(a for a in read_manifest(static_and_dynamic)["artifacts"] if a["name"] == "onnx-int8-static")
    assert plan["quantization"]["preset"] == "safe" and plan["quantization"]["activations"].startswith("uint8")


def test_static_int8_answers_the_same_whatever_the_batch(static_and_dynamic):
    pixels = np.random.default_rng(0).normal(size=(40, 3, 32, 32)).astype(np.float32)
    static = open_runner("onnx", static_and_dynamic / "model_int8_static.onnx")
    assert batch_variation(static.run, pixels)["batch_max_abs_logit_diff"] <= 1e-5
    # the check can see what it is for: dynamic int8 derives its activation scale from the whole batch
    dynamic = open_runner("onnx", static_and_dynamic / "model_int8_dynamic.onnx")
    assert static.info.batch_invariant and not dynamic.info.batch_invariant  # what `serve` warns about
    assert (
        batch_variation(dynamic.run, pixels * np.linspace(0.2, 5, 40, dtype=np.float32)[:, None, None, None])[
            "batch_max_abs_logit_diff"
        ]
        > 1e-4
    )


def test_auto_keeps_the_most_sensitive_units_float_until_the_target_is_met(tiny_model, tmp_path):
    def auto(target: str, max_float: int = 4) -> dict:
        out = main_export(
            tiny_model,
            tmp_path / f"{target}-{max_float}",
            "onnx-int8-static",
            ExportOptions(quant_preset="auto", quant_target=target, quant_max_float=max_float),
        )
        return read_manifest(out)["artifacts"][0]["quantization"]

    # everything int8 meets it: no sensitivity scan needed (agreement, not q90, which also asks for no flip:
    # on an AVX2-only CPU onnxruntime's saturating int8 kernels flip a random tiny model's closest decision)
    loose = auto("agreement=0.5")
    assert loose["kept_float"] == [] and loose["fit"]["reached"]["agreement"] >= 0.5
    # per block q, k, v, scores, context, out, fc1, fc2; the conv; the head stays float
    assert loose["quantized_nodes"] == 2 * 8 + 1 and loose["always_float"] == ["classifier"]

    target = loose["fit"]["reached"]["q90_abs_logit_diff"] / 1.5
    plan = auto(f"q90={target}", max_float=5)
    sensitivity = plan["sensitivity_q90_abs_logit_diff_alone"]
    # units are the stages `validate --localize` names; every one was measured alone
    assert set(sensitivity) == {"embeddings", "block 0 attention", "block 0 mlp", "block 1 attention", "block 1 mlp"}
    kept = plan["kept_float"]
    assert 0 < len(kept) < len(sensitivity), plan  # some float, not all: the search did its job
    assert kept == sorted(sensitivity, key=sensitivity.get, reverse=True)[: len(kept)]
    assert plan["fit"]["met"] and plan["fit"]["reached"]["q90_abs_logit_diff"] <= target
    assert plan["fit"]["reached"]["flips"] == 0
    assert plan["quantized_nodes"] < loose["quantized_nodes"] and plan["fit"]["calibration_images"] == 64
    # an unreachable target: at most --quant-max-float units float, and the plan says it missed
    capped = auto("q90=1e-9", max_float=1)
    assert len(capped["kept_float"]) == 1 and not capped["fit"]["met"]
    assert not capped["check"]["met"]  # the export's own check agrees


def test_full_integer_tflite_keeps_layernorm_softmax_gelu_float_and_honours_int8_io(tiny_model, tmp_path):
    """XNNPACK has no int8 LayerNorm/Softmax/GELU; as int8 they ran on reference kernels (3x slower)."""
    pytest.importorskip("tensorflow", reason="TFLite export needs the onnx extra")
    from ai_edge_litert.interpreter import Interpreter

    from vitgender.exporters.options import ExportOptions
    from vitgender.runtimes.tflite_runner import inventory as tflite_inventory

    out = main_export(tiny_model, tmp_path / "tfl", "tflite-int8", ExportOptions(tflite_int8_io=True))
    entry = read_manifest(out)["artifacts"][0]
    assert entry["quantization"]["float_ops"][:4] == ["SOFTMAX", "GELU", "ADD", "BATCH_MATMUL"]
    assert entry["quantization"]["float_layer_norm_nodes"] > 0  # found by onnx2tf's layer names
    details = Interpreter(model_path=str(out / "model_int8.tflite")).get_input_details()[0]
    assert entry["input"]["dtype"] == "int8" and details["dtype"] == np.int8  # the manifest says what the file takes
    ops = tflite_inventory(out / "model_int8.tflite")["op_counts"]
    assert ops.get("SOFTMAX") and ops.get("FULLY_CONNECTED")
    # int8 I/O only moves the input quantization out of the graph: same answers as float I/O (with
    # an int8 head: a graph that returns int8 cannot end in a float head)
    float_io = main_export(tiny_model, tmp_path / "float-io", "tflite-int8", ExportOptions(float_head=False))
    pixels = np.random.default_rng(0).uniform(-1, 1, size=(4, 3, 32, 32)).astype(np.float32)  # like normalised images
    int8_logits = open_runner("tflite", out / "model_int8.tflite").run(pixels)
    np.testing.assert_allclose(
        int8_logits, open_runner("tflite", float_io / "model_int8.tflite").run(pixels), atol=1e-6
    )
    # by default the classification head (the ops after the last LayerNorm) stays float
    head = main_export(tiny_model, tmp_path / "head", "tflite-int8")
    quantization = read_manifest(head)["artifacts"][0]["quantization"]
    assert quantization["float_head_nodes"] > 0 and quantization["float_modules"] == ["classifier"]
    assert read_manifest(float_io)["artifacts"][0]["quantization"]["float_head_nodes"] == 0


def test_auto_plans_full_integer_tflite_from_the_units_its_layernorms_cut(tiny_model, tmp_path):
    """`--quant-preset auto` for tflite-int8: each unit (cut at the LayerNorms onnx2tf names) is
    re-quantized alone and run by LiteRT; the most sensitive stay float in the written model."""
    pytest.importorskip("tensorflow", reason="TFLite export needs the onnx extra")
    from vitgender.runtimes import file_inventory

    def auto(target: str, max_float: int) -> tuple[dict, float]:
        options = ExportOptions(quant_preset="auto", quant_target=target, quant_max_float=max_float)
        out = main_export(tiny_model, tmp_path / f"{target}-{max_float}", "tflite-int8", options)
        shares = file_inventory("tflite", out / "model_int8.tflite")["weight_share_by_dtype"]
        return read_manifest(out)["artifacts"][0]["quantization"], shares.get("int8", 0)

    loose, loose_int8 = auto("agreement=0.01", 2)  # everything int8 meets it: nothing float, nothing scanned
    assert loose["fit"]["met"], loose["fit"]
    assert loose["kept_float"] == [] and loose["sensitivity_q90_abs_logit_diff_alone"] == {}
    assert loose["fit"]["method"].endswith("run by LiteRT") and loose["fit"]["calibration_images"] == 64

    capped, capped_int8 = auto("q90=0.000001", 2)  # unreachable: two units float, and the plan says it missed
    sensitivity = capped["sensitivity_q90_abs_logit_diff_alone"]
    assert set(sensitivity) == {"embeddings", "block 0 attention", "block 0 mlp", "block 1 attention", "block 1 mlp"}
    assert capped["kept_float"] == sorted(sensitivity, key=sensitivity.get, reverse=True)[:2]
    assert capped["fit"]["met"] is False and capped["check"]["met"] is False  # the export's own check agrees
    assert capped_int8 < loose_int8 - 0.05  # the float units' weights really are float in the file

"""Exporters: every format from a tiny ViT, the manifest, and clean failures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="exporters need the onnx extra: pip install .[onnx]")

from vitgender.exporters import FORMATS, ExportError, main_export, parse_formats  # noqa: E402
from vitgender.manifest import read_manifest, verify_artifact  # noqa: E402
from vitgender.runtimes import open_runner, runtime_for  # noqa: E402

CLI = [sys.executable, "-m", "vitgender.cli"]


@pytest.fixture(scope="module")
def exported(tiny_model, tmp_path_factory) -> Path:
    return main_export(tiny_model, tmp_path_factory.mktemp("export") / "tiny", "all")


def test_manifest_lists_every_format_with_checksums(exported):
    manifest = read_manifest(exported)
    assert manifest["schema"] == 2
    assert [a["name"] for a in manifest["artifacts"]] == list(FORMATS)
    for entry in manifest["artifacts"]:  # the manifest and the registry agree on what each artifact is
        spec = FORMATS[entry["name"]]
        assert (entry["runtime"], entry["precision"], entry["path"]) == (spec.runtime, spec.precision, spec.filename)
        assert runtime_for(exported / entry["path"]) == spec.runtime
    for entry in manifest["artifacts"]:
        path = verify_artifact(exported, entry)
        assert entry["bytes"] > 0 and len(entry["sha256"]) == 64
        assert {"name", "layout", "dtype", "shape"} <= set(entry["input"])
        sidecar = json.loads(path.with_name(path.name + ".json").read_text())
        assert sidecar["labels"] == ["female", "male"] and sidecar["precision"] == entry["precision"]
    static = next(a for a in manifest["artifacts"] if a["name"] == "onnx-int8-static")
    assert static["calibration"]["count"] == 64 and static["calibration"]["normalisation"]["image_mean"]
    assert manifest["created_by"]["onnxruntime"] and manifest["model"]["labels"] == ["female", "male"]
    assert not [p for p in exported.parent.iterdir() if "partial" in p.name]


def test_onnx_has_dynamic_batch_and_matches_torch(exported, tiny_model):
    import onnx

    onnx.checker.check_model(onnx.load(str(exported / "model.onnx")), full_check=True)
    pixels = np.random.default_rng(0).normal(size=(3, 3, 32, 32)).astype(np.float32)
    reference = open_runner("torch", tiny_model).run(pixels)
    for name in ("model.onnx", "model_float32.tflite", "saved_model"):
        runtime = {"onnx": "onnx", "tflite": "tflite", "": "savedmodel"}[Path(name).suffix.lstrip(".")]
        assert np.abs(open_runner(runtime, exported / name).run(pixels) - reference).max() < 1e-4


@pytest.mark.parametrize("name", ["onnx-int8-dynamic", "onnx-int8-static", "web-onnx-quantized"])
def test_onnxruntime_int8_weights_use_seven_bits_so_no_x86_kernel_saturates(exported, name):
    """|w| <= 64: 255 x 64 x 2 fits the 16-bit pair sums of x86 CPUs without VNNI (255 x 127 x 2 does not)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(exported / FORMATS[name].filename))
    weights = [numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert weights and max(int(np.abs(w.astype(np.int16)).max()) for w in weights) == 64  # the 7-bit range, all of it


@pytest.mark.parametrize(
    "name",
    ["saved_model", "model_float32.tflite", "model_float16.tflite", "model_int8_dynamic.tflite", "model_int8.tflite"],
)
def test_tf_artifacts_take_any_batch_in_one_call(exported, tiny_model, name):
    """A free batch, not a per-image loop: batches of 1, 7 and 32 in one call each, same answers."""
    entry = next(a for a in read_manifest(exported)["artifacts"] if a["path"] == name)
    assert entry["input"]["shape"][0] == "batch" and "note" not in entry["input"]
    runner = open_runner(runtime_for(exported / name), exported / name)
    assert runner.dynamic_batch
    pixels = np.random.default_rng(1).normal(size=(32, 3, 32, 32)).astype(np.float32)
    one_by_one = np.concatenate([runner.run(pixels[i : i + 1]) for i in range(32)])
    reference = open_runner("torch", tiny_model).run(pixels)
    tolerance = {"fp32": 1e-4, "fp16": 0.05}.get(entry["precision"])  # int8 accuracy: validate's budgets
    for n in (1, 7, 32):
        batched = runner.run(pixels[:n])
        assert batched.shape == (n, 2)
        assert np.abs(batched - one_by_one[:n]).max() < 1e-5  # the batch changes nothing
        assert tolerance is None or np.abs(batched - reference[:n]).max() < tolerance


def test_exported_onnx_reads_no_shape(exported, tmp_path):
    """What lets onnx2tf keep the batch free; a graph with a Shape op gets the batch-1 fallback."""
    import onnx
    from onnx import TensorProto, helper

    from vitgender.exporters.tensorflow import batch_free

    assert batch_free(exported / "model.onnx")
    node = helper.make_node("Shape", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, [2])],
    )
    onnx.save(helper.make_model(graph), tmp_path / "shape.onnx")
    assert not batch_free(tmp_path / "shape.onnx")


def test_baked_preprocessing_takes_raw_pixels_end_to_end(exported, tiny_model, image_dir):
    """decoded image -> resize -> uint8 -> artifact  ==  decoded image -> ViTImageProcessor -> PyTorch."""
    from transformers import ViTImageProcessor

    from vitgender.preprocess import Preprocessor, decode_image

    baked = open_runner("onnx", exported / "model_uint8_nhwc.onnx")
    assert baked.info.raw_input
    images = [decode_image(p) for p in sorted(image_dir.iterdir())]
    raw = np.stack([Preprocessor(baked.info.preprocess).resize(i) for i in images])
    assert raw.dtype == np.uint8 and raw.shape[1:] == (32, 32, 3)
    processor = ViTImageProcessor.from_pretrained(tiny_model)
    reference = open_runner("torch", tiny_model).run(processor(images=images, return_tensors="np")["pixel_values"])
    assert np.abs(baked.run(raw) - reference).max() < 1e-4


def test_tflite_uses_builtin_ops_only(exported):
    from vitgender.runtimes.tflite_runner import inventory as tflite_inventory

    for name in ("model_float32", "model_float16", "model_int8_dynamic", "model_int8"):
        ops = tflite_inventory(exported / f"{name}.tflite")["op_counts"]
        assert not any("CUSTOM" in op or "FLEX" in op.upper() for op in ops), ops


def test_parse_formats_groups_and_errors():
    assert [s.name for s in parse_formats("onnx,tflite,onnx")] == ["onnx", "tflite"]
    assert [s.name for s in parse_formats("all")] == list(FORMATS)
    assert {s.name for s in parse_formats("web")} == {"web-onnx", "web-onnx-quantized", "web-onnx-fp16"}
    from vitgender.errors import UsageError

    with pytest.raises(UsageError, match="unknown format"):
        parse_formats("onnx,coreml")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--formats", "coreml"], "unknown format"),
        (["--formats", "onnx-int8-static", "--calibration", "EMPTY"], "contains no images"),
        (["--formats", "onnx", "--out", "/proc/forbidden/out"], "cannot write there"),
    ],
)
def test_bad_export_requests_exit_2_and_write_nothing(tiny_model, tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    args = [a.replace("EMPTY", str(tmp_path / "empty")) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    result = run_cli("export", str(tiny_model), *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_relative_out_dir_with_tf_formats(tiny_model, tmp_path):
    """The TF conversion runs in a child process with its own working directory."""
    result = subprocess.run(
        [*CLI, "export", str(tiny_model), "--out", "rel/out", "--formats", "tflite"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-1500:]
    assert (tmp_path / "rel" / "out" / "model_float32.tflite").is_file()


def test_missing_model_exit_2(tmp_path):
    result = run_cli("export", str(tmp_path / "nope"), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "no such directory" in result.stderr


def test_failed_step_leaves_nothing_and_names_the_step(tiny_model, tmp_path, monkeypatch):
    from vitgender.exporters import quantize

    def broken(*args, **kwargs):
        raise RuntimeError("simulated converter crash")

    monkeypatch.setattr(quantize, "to_int8_dynamic", broken)
    with pytest.raises(ExportError) as info:
        main_export(tiny_model, tmp_path / "out", "onnx,onnx-int8-dynamic")
    assert info.value.what == "onnx-int8-dynamic" and "simulated converter crash" in info.value.why
    assert list(tmp_path.iterdir()) == []


def test_classify_picks_the_runtime_from_the_artifact(exported, image_dir):
    """`vitgender classify --model model.tflite` needs no --runtime: the file type decides."""
    for name in ("model.onnx", "model_uint8_nhwc.onnx", "model_float32.tflite", "saved_model"):
        result = run_cli("classify", str(image_dir / "img0.jpg"), "--model", str(exported / name))
        assert result.returncode == 0, result.stderr[-1500:]
        assert result.stderr == ""  # no TensorFlow/LiteRT load chatter on the user's stderr
        assert {p["label"] for p in json.loads(result.stdout)["predictions"]} == {"female", "male"}

"""The calibrated int8 recipe for any model: scale migration, a float head, the reached figure, calibration checks."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TINY_TYPES, make_tiny, run_main

pytest.importorskip("onnxruntime", reason="quantization needs the onnx extra: pip install .[onnx]")

from vitgender.errors import VitgenderError  # noqa: E402
from vitgender.exporters.options import CALIBRATION_DIR  # noqa: E402
from vitgender.manifest import read_manifest  # noqa: E402


@pytest.mark.parametrize("variant", sorted(TINY_TYPES))
def test_scale_migration_leaves_the_float_model_the_same_function(variant, tmp_path):
    """Folded into the LayerNorms and the value projection: every model type answers as before, to float rounding."""
    import torch

    from vitgender.checkpoint import open_checkpoint
    from vitgender.exporters.smoothing import migrate_scales

    checkpoint = open_checkpoint(make_tiny(variant, tmp_path / variant))
    model = checkpoint.load_model().eval()
    pre = checkpoint.preprocess
    pixels = np.random.default_rng(0).normal(size=(6, 3, pre.height, pre.width)).astype(np.float32)
    with torch.no_grad():
        before = model(pixel_values=torch.from_numpy(pixels)).logits.numpy()
        norm = model.get_submodule(checkpoint.model.final_norm({})) if variant.startswith("vit") else None
        gamma = None if norm is None else norm.weight.clone()
        migration = migrate_scales(model, checkpoint.model, pixels)
        after = model(pixel_values=torch.from_numpy(pixels)).logits.numpy()
    # every block's two LayerNorm groups and its value -> output projection pair
    assert migration.groups == 3 * checkpoint.architecture.num_hidden_layers
    assert migration.largest_scale > 1.5 * migration.smallest_scale  # it did rescale something
    np.testing.assert_allclose(after, before, atol=2e-5 * max(1.0, float(np.abs(before).max())))
    if gamma is not None:  # the final LayerNorm feeds the head only: untouched
        assert torch.equal(norm.weight, gamma)


def _faces(destination: Path, count: int) -> Path:
    destination.mkdir(parents=True)
    for path in sorted(CALIBRATION_DIR.iterdir())[:count]:
        shutil.copyfile(path, destination / path.name)
    return destination


def test_export_states_what_each_int8_artifact_reached_and_exits_1_only_when_strict(
    tiny_model, tmp_path, monkeypatch, capsys
):
    calibration = _faces(tmp_path / "mine", 24)
    args = ["export", str(tiny_model), "--formats", "onnx-int8-static", "--calibration", str(calibration)]
    code, _, err = run_main(monkeypatch, capsys, *args, "-o", str(tmp_path / "a"), "--quant-target", "q90=1e-9")
    assert code == 0, err  # a missed target is reported, and the artifact written
    line = next(line for line in err.splitlines() if line.startswith("onnx-int8-static:"))
    assert "vs target q90=1e-09: MISSED" in line and "x fp32 onnxruntime" in line and "at batch 1" in line
    entry = read_manifest(tmp_path / "a")["artifacts"][0]
    check = entry["quantization"]["check"]
    assert check["reached"]["images"] == 24 and not check["met"]
    assert check["images_per_second"]["batch_32"] > 0 and entry["quantization"]["fp32_images_per_second"]["batch_1"] > 0
    assert entry["quantization"]["scale_migration"]["alpha"] == 0.5  # onnxruntime's recipe migrates
    assert entry["quantization"]["float_modules"] == ["classifier"]

    out = tmp_path / "b"
    code, _, err = run_main(monkeypatch, capsys, *args, "-o", str(out), "--quant-target", "q90=1e-9", "--quant-strict")
    assert code == 1 and (out / "model_int8_static.onnx").is_file()
    # a reachable target is met; agreement, not q90, which also asks for no flip at all: a random tiny model's
    # margins are so small that a CPU whose int8 kernels round differently (AVX2 without VNNI) flips one
    code, _, err = run_main(monkeypatch, capsys, *args, "-o", str(tmp_path / "c"), "--quant-target", "agreement=0.5")
    assert code == 0 and ": met;" in err


def test_the_old_recipe_is_one_option_away(tiny_model, tmp_path, monkeypatch, capsys):
    calibration = _faces(tmp_path / "mine", 16)
    code, _, err = run_main(
        monkeypatch,
        capsys,
        *("export", str(tiny_model), "--formats", "onnx-int8-static", "--calibration", str(calibration)),
        *("-o", str(tmp_path / "old"), "--smoothquant", "0", "--no-quant-float-head"),
    )
    assert code == 0, err
    quantization = read_manifest(tmp_path / "old")["artifacts"][0]["quantization"]
    assert quantization["scale_migration"] == "off" and quantization["float_modules"] == []
    assert quantization["always_float"] == []


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_histogram_calibration_takes_any_number_of_images_and_prints_nothing(
    method, tiny_model, tmp_path, monkeypatch, capsys
):
    """ORT's histogram calibrators failed on a short last batch (19 = 2 x 8 + 3) and print their progress."""
    import onnx
    from onnx import numpy_helper

    calibration = _faces(tmp_path / "mine", 19)
    args = ["export", str(tiny_model), "--formats", "onnx-int8-static", "--calibration", str(calibration)]
    code, out, err = run_main(monkeypatch, capsys, *args, "-o", str(tmp_path / method), "--calibration-method", method)
    assert code == 0, err
    assert out.splitlines()[-1] == f"wrote {tmp_path / method / 'manifest.json'}" and "tensor" not in out
    entry = read_manifest(tmp_path / method)["artifacts"][0]
    assert entry["calibration"]["method"] == method and entry["calibration"]["count"] == 19
    code, _, err = run_main(monkeypatch, capsys, *args, "-o", str(tmp_path / "minmax"))
    assert code == 0, err
    scales = {}
    for name in (method, "minmax"):  # the method changes the activation scales, not only the manifest
        graph = onnx.load(str(tmp_path / name / entry["path"])).graph
        scales[name] = sorted(
            float(numpy_helper.to_array(t)) for t in graph.initializer if t.name.endswith("_scale") and not t.dims
        )
    assert len(scales[method]) == len(scales["minmax"]) > 0 and scales[method] != scales["minmax"]


def test_a_calibration_folder_that_cannot_calibrate_is_refused_before_any_conversion(
    tiny_model, tmp_path, monkeypatch, capsys
):
    few = _faces(tmp_path / "few", 15)
    base = ["export", str(tiny_model), "--formats", "tflite-int8", "-o", str(tmp_path / "out")]
    code, out, err = run_main(monkeypatch, capsys, *base, "--calibration", str(few))
    assert code == 2 and "15 decodable calibration images, at least 16 needed" in err
    for i in range(5):  # 20 files, 15 of them images
        (few / f"broken{i}.jpg").write_bytes(b"")
    code, out, err = run_main(monkeypatch, capsys, *base, "--calibration", str(few))
    assert code == 2 and "first failure" in err and "broken0.jpg" in err
    assert "[export]" not in err and not (tmp_path / "out").exists()  # refused before any step ran
    code, out, err = run_main(monkeypatch, capsys, *base, "--calibration", str(few), "--smoothquant", "1.5")
    assert code == 2 and "SmoothQuant alpha" in err


def test_a_user_model_calibrated_on_the_bundled_faces_gets_one_warning(tiny_model, tmp_path, monkeypatch, capsys):
    code, _, err = run_main(
        monkeypatch, capsys, "export", str(tiny_model), "--formats", "onnx-int8-static", "-o", str(tmp_path / "o")
    )
    assert code == 0
    warnings = [line for line in err.splitlines() if "warning:" in line]
    assert len(warnings) == 1 and "--calibration" in warnings[0] and tiny_model.name in warnings[0]
    # the default model calibrates on its own training faces: no warning
    from vitgender.checkpoint import open_checkpoint
    from vitgender.exporters.main_export import calibration_warning
    from vitgender.exporters.options import ExportOptions

    assert calibration_warning(open_checkpoint(None), ExportOptions()) is None


def test_a_large_calibration_folder_is_sampled_across_its_class_folders(tmp_path):
    """Cut after the first names, a folder of class subfolders would calibrate on its first classes alone."""
    from vitgender.exporters.main_export import calibration_images

    for label in ("a", "b", "c", "d"):
        (tmp_path / label).mkdir()
        for k in range(30):
            (tmp_path / label / f"{k:02d}.jpg").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not an image")
    chosen, found = calibration_images(tmp_path, limit=20)
    assert found == 120 and len(chosen) == len(set(chosen)) == 20
    assert {p.parent.name: sum(q.parent == p.parent for q in chosen) for p in chosen} == dict.fromkeys("abcd", 5)
    assert chosen[0].name == "00.jpg" and chosen[-1] == tmp_path / "d" / "29.jpg"
    assert calibration_images(tmp_path, limit=200) == (sorted(tmp_path.rglob("*.jpg")), 120)


def test_calibration_limit_samples_a_larger_folder_and_says_so(tiny_model, tmp_path, monkeypatch, capsys):
    calibration = _faces(tmp_path / "mine", 19)
    args = ["export", str(tiny_model), "--formats", "onnx-int8-static", "--calibration", str(calibration)]
    code, _, err = run_main(monkeypatch, capsys, *args, "-o", str(tmp_path / "out"), "--calibration-limit", "16")
    assert code == 0, err
    provenance = read_manifest(tmp_path / "out")["artifacts"][0]["calibration"]
    assert provenance["count"] == len(provenance["images"]) == 16 and provenance["found"] == 19
    assert [line for line in err.splitlines() if "warning:" in line] == [
        f"vitgender: warning: calibrating on 16 of the 19 images in {calibration}, "
        "sampled evenly over their names (--calibration-limit)"
    ]
    code, _, err = run_main(monkeypatch, capsys, *args, "-o", str(tmp_path / "few"), "--calibration-limit", "8")
    assert code == 2 and "--calibration-limit 8" in err and "at least 16" in err
    assert not (tmp_path / "few").exists()


@pytest.mark.slow
def test_an_explicit_alpha_migrates_for_every_toolchain(tiny_model, tmp_path):
    """TFLite converts the migrated model separately; ExecuTorch reads the migrated checkpoint."""
    pytest.importorskip("tensorflow", reason="TFLite export needs the onnx extra")
    from vitgender.exporters import ExportOptions, main_export
    from vitgender.toolchains.side_env import executorch_python

    formats = "onnx-int8-static,tflite,tflite-int8"
    try:
        executorch_python()
        formats += ",executorch-int8"
    except VitgenderError:
        pass  # no ExecuTorch environment: the TFLite and ORT paths are still checked
    out = main_export(tiny_model, tmp_path / "all", formats, ExportOptions(smoothquant=0.5))
    entries = {e["name"]: e for e in read_manifest(out)["artifacts"]}
    for name, entry in entries.items():
        if name == "tflite":  # the float TFLite comes from the unmigrated conversion
            assert "quantization" not in entry
            continue
        assert entry["quantization"]["scale_migration"]["alpha"] == 0.5, name
        assert entry["quantization"]["check"]["reached"]["images"] == 64, name

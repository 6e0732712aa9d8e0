"""The parity gate is real: broken, mislabelled and tampered artifacts fail as they should."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="validators need the onnx extra: pip install .[onnx]")

from vitgender.exporters import main_export  # noqa: E402
from vitgender.manifest import artifact_sha256  # noqa: E402
from vitgender.validators.metrics import compare_logits  # noqa: E402

CLI = [sys.executable, "-m", "vitgender.cli"]
REPO = Path(__file__).resolve().parent.parent
TINY_BUDGET = "[int8]\nmax_abs_logit_diff = 100\ntop1_agreement = 0.0\nflips_far_from_boundary = 100\naccuracy_drop = 1.0\n"


@pytest.fixture(scope="module")
def export_dir(tiny_model, tmp_path_factory) -> Path:
    return main_export(tiny_model, tmp_path_factory.mktemp("gate") / "tiny", "onnx,onnx-fp16,onnx-int8-dynamic,tflite")


@pytest.fixture
def work(export_dir, tmp_path) -> Path:
    return Path(shutil.copytree(export_dir, tmp_path / "artifacts"))


def validate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "validate", *args], capture_output=True, text=True, timeout=600)


def _reseal(directory: Path, name: str) -> None:
    """Update the manifest checksum, as an exporter bug (not tampering) would produce."""
    manifest = json.loads((directory / "manifest.json").read_text())
    for entry in manifest["artifacts"]:
        if entry["name"] == name:
            entry["sha256"] = artifact_sha256(directory / entry["path"])
    (directory / "manifest.json").write_text(json.dumps(manifest))


def test_good_export_passes_with_reports_and_junit(work, tmp_path):
    junit = tmp_path / "junit.xml"
    result = validate(str(work), "--junit", str(junit))
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((work / "validation" / "report.json").read_text())
    assert report["schema"] == 2 and report["passed"] and report["images"]["count"] == 50
    fp32 = next(a for a in report["artifacts"] if a["name"] == "onnx")
    assert fp32["metrics"]["max_abs_logit_diff"] < 1e-4 and fp32["metrics"]["top1_agreement"] == 1.0
    assert fp32["group_deltas"] and fp32["accuracy"]["torch"]["n"] == 50
    int8 = next(a for a in report["artifacts"] if a["name"] == "onnx-int8-dynamic")
    assert int8["inventory"]["quantization_ops"]["MatMulInteger"] > 0
    suite = ET.parse(junit).getroot()
    assert int(suite.get("tests")) >= 4 * 5 and suite.get("failures") == "0"
    html = (work / "validation" / "report.html").read_text()
    assert html.count("<svg") >= 8 and "PASSED" in html
    assert "| onnx | fp32 | ✅ pass" in (work / "validation" / "report.md").read_text()
    # every JUnit case is a check that was performed
    cases = {(c.get("classname"), c.get("name")) for c in suite.iter("testcase")}
    assert ("vitgender.onnx-int8-dynamic", "quantization_proof") in cases
    assert not any(n == "sha256" for _, n in cases)
    # every artifact is checked for answering the same alone and inside batches of other images
    for artifact in report["artifacts"]:
        assert ("vitgender." + artifact["name"], "batch_max_abs_logit_diff") in cases
        assert artifact["metrics"]["batch_probes"] == 8 and artifact["metrics"]["batch_size"] == 32


def test_perturbed_weights_fail_with_exit_1(work):
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(work / "model.onnx"))
    biggest = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
    array = numpy_helper.to_array(biggest).copy()
    array += np.random.default_rng(0).normal(0, 0.5, array.shape).astype(array.dtype)
    biggest.CopyFrom(numpy_helper.from_array(array, biggest.name))
    onnx.save(model, str(work / "model.onnx"))
    _reseal(work, "onnx")
    result = validate(str(work), "--only", "onnx")
    assert result.returncode == 1
    report = json.loads((work / "validation" / "report.json").read_text())
    assert any(f.startswith("max_abs_logit_diff") for f in report["artifacts"][0]["failures"])


def test_normalisation_baked_wrong_into_the_graph_fails(work):
    """An exporter that folded a wrong rescale (x255) into the graph must not pass."""
    import onnx
    from onnx import helper

    model = onnx.load(str(work / "model.onnx"))
    graph = model.graph
    original = graph.input[0].name
    graph.node.insert(0, helper.make_node("Mul", [original, "wrong_scale"], ["rescaled"]))
    graph.initializer.append(onnx.numpy_helper.from_array(np.array(255.0, dtype=np.float32), "wrong_scale"))
    for node in list(graph.node)[1:]:
        for i, name in enumerate(node.input):
            if name == original:
                node.input[i] = "rescaled"
    onnx.save(model, str(work / "model.onnx"))
    _reseal(work, "onnx")
    assert validate(str(work), "--only", "onnx").returncode == 1


def test_int8_that_is_really_fp32_fails_quantization_proof(work):
    shutil.copy(work / "model.onnx", work / "model_int8_dynamic.onnx")
    _reseal(work, "onnx-int8-dynamic")
    result = validate(str(work), "--only", "onnx-int8-dynamic")
    assert result.returncode == 1
    report = json.loads((work / "validation" / "report.json").read_text())
    assert any("declared int8-dynamic" in f for f in report["artifacts"][0]["failures"])


def test_tampered_file_is_exit_2_before_inference(work):
    data = bytearray((work / "model_fp16.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (work / "model_fp16.onnx").write_bytes(bytes(data))
    result = validate(str(work))
    assert result.returncode == 2 and "sha256 mismatch" in result.stderr and "onnx-fp16" in result.stderr
    assert "[validate] torch" not in result.stderr  # nothing ran
    assert not (work / "validation").exists()


@pytest.mark.parametrize("case", ["missing-artifact", "empty-images", "unreadable-image", "no-manifest",
                                  "foreign-labels", "unknown-budget-section", "missing-baseline"])
def test_usage_errors_exit_2(work, tmp_path, case):
    args = [str(work)]
    if case == "missing-artifact":
        (work / "model_float32.tflite").unlink()
    elif case == "empty-images":
        (tmp_path / "empty").mkdir()
        args += ["--images", str(tmp_path / "empty")]
    elif case == "unreadable-image":
        (tmp_path / "imgs").mkdir()
        (tmp_path / "imgs" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
        args += ["--images", str(tmp_path / "imgs")]
    elif case == "foreign-labels":  # class folders the model cannot answer: accuracy would read 0%
        example = sorted((REPO / "examples").glob("*.jpg"))[0]
        for folder in ("man", "woman"):
            (tmp_path / "imgs" / folder).mkdir(parents=True)
            shutil.copy(example, tmp_path / "imgs" / folder / "a.jpg")
        args += ["--images", str(tmp_path / "imgs")]
    elif case == "unknown-budget-section":
        (tmp_path / "budget.toml").write_text("[fp33]\nq90_abs_logit_diff = 1\n")
        args += ["--budget", str(tmp_path / "budget.toml")]
    elif case == "missing-baseline":
        args += ["--baseline", str(tmp_path / "nope.json")]
    else:
        (work / "manifest.json").unlink()
    result = validate(*args)
    assert result.returncode == 2, result.stderr
    if case in ("foreign-labels", "unknown-budget-section", "missing-baseline"):
        assert "[validate]" not in result.stderr  # refused before anything ran
    assert result.stderr.strip().splitlines()[-1].startswith("vitgender: ") and "Traceback" not in result.stderr


def test_budget_file_and_baseline_regression(work, tmp_path):
    budget = tmp_path / "budget.toml"
    budget.write_text(TINY_BUDGET + "[onnx-fp16]\nmax_abs_logit_diff = 1e-9\n")
    assert validate(str(work), "--budget", str(budget), "--only", "onnx-fp16").returncode == 1
    baseline = tmp_path / "baseline.json"
    assert validate(str(work), "--write-baseline", str(baseline)).returncode == 0
    stored = json.loads(baseline.read_text())
    for artifact in stored["artifacts"]:
        artifact["metrics"]["max_abs_logit_diff"] /= 100  # pretend we used to be much closer
    baseline.write_text(json.dumps(stored))
    result = validate(str(work), "--baseline", str(baseline))
    assert result.returncode == 1 and "baseline regression" in result.stdout


def test_compare_logits_counts_flips_near_and_far():
    reference = np.array([[2.0, -2.0], [0.05, -0.05], [1.0, 0.0]], dtype=np.float32)
    candidate = np.array([[-2.0, 2.0], [-0.05, 0.05], [1.0, 0.0]], dtype=np.float32)
    metrics = compare_logits(reference, candidate, ("a", "b"), ["x", "y", "z"])
    assert metrics["top1_agreement"] == pytest.approx(1 / 3)
    assert (metrics["flips_far_from_boundary"], metrics["flips_near_boundary"]) == (1, 1)
    assert metrics["max_abs_logit_diff"] == pytest.approx(4.0)
    nan = compare_logits(reference, np.full_like(reference, np.nan), ("a", "b"), ["x", "y", "z"])
    assert not nan["finite"] and nan["nonfinite_count"] == 6


@pytest.mark.slow
def test_default_model_ci_gate_and_the_readme_ci_snippet(tmp_path):
    """The project's own CI gate (committed baseline), and the README's CI lines run as written,
    with `./model` left out as the README allows (the embedded default model)."""
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=1200, cwd=tmp_path)

    export = run("export", "--out", "build/artifacts", "--formats", "all")
    assert export.returncode == 0, export.stderr[-2000:]
    out = tmp_path / "build" / "artifacts"
    first = run("validate", "build/artifacts", "--write-baseline", "parity-baseline.json")
    assert first.returncode == 0 and (tmp_path / "parity-baseline.json").is_file(), first.stdout[-3000:]
    gate = run("validate", "build/artifacts", "--baseline", "parity-baseline.json", "--junit", "parity.xml")
    assert gate.returncode == 0 and (tmp_path / "parity.xml").is_file(), gate.stdout[-3000:]
    result = run("validate", "build/artifacts", "--baseline", str(REPO / "artifacts" / "baselines" / "vitgender-default.json"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    report = json.loads((out / "validation" / "report.json").read_text())
    by_name = {a["name"]: a for a in report["artifacts"]}
    assert len(by_name) == 15 and all(any(c["name"] == "baseline" for c in a["checks"]) for a in report["artifacts"])
    assert by_name["onnx-int8-dynamic"]["metrics"]["top1_agreement"] >= 0.99
    assert by_name["tflite-int8-dynamic"]["metrics"]["top1_agreement"] >= 0.99


def test_localize_names_the_block_a_fault_was_injected_into(tiny_model, tmp_path):
    """A fault in encoder block 1 of an exported ONNX: the report says divergence starts there."""
    import onnx
    from onnx import numpy_helper

    out = main_export(tiny_model, tmp_path / "art", "onnx")
    model = onnx.load(str(out / "model.onnx"))
    scope = "'model.vit.encoder.layer.1.intermediate'"  # the MLP of the second (last) block
    node = next(n for n in model.graph.node if n.op_type == "MatMul"
                and any(p.key == "pkg.torch.onnx.name_scopes" and scope in p.value for p in n.metadata_props))
    weight = next(i for i in model.graph.initializer if i.name == node.input[1])
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * np.float32(3.0), weight.name))
    onnx.save(model, str(out / "model.onnx"))
    _reseal(out, "onnx")
    result = validate(str(out), "--labels", "none")  # failing: localized without being asked
    assert result.returncode == 1, result.stdout[-2000:]
    report = json.loads((out / "validation" / "report.json").read_text())
    localization = report["artifacts"][0]["localization"]
    assert localization["divergence"]["stage"] == "block 1 mlp"
    by_stage = {row["stage"]: row["relative_l2"] for row in localization["stages"]}
    assert by_stage["block 0"] < 1e-4 < by_stage["block 1"]  # clean before the fault, broken after
    assert "divergence starts at **block 1 mlp**" in (out / "validation" / "report.md").read_text()


def test_localize_finds_a_faulty_block_in_onnx_and_tflite(tiny_model, tmp_path):
    """Artifacts exported from a checkpoint whose block 1 MLP is corrupted, judged against the clean model."""
    import torch
    from transformers import ViTForImageClassification

    from tests.conftest import make_tiny_vit

    faulty = make_tiny_vit(tmp_path / "faulty")
    model = ViTForImageClassification.from_pretrained(faulty)
    with torch.no_grad():
        model.vit.encoder.layer[1].intermediate.dense.weight.mul_(3.0)
    model.save_pretrained(faulty, safe_serialization=True)
    (faulty / "SHA256SUMS").unlink()
    out = main_export(faulty, tmp_path / "art", "onnx,tflite")
    result = validate(str(out), "--model", str(tiny_model), "--labels", "none", "--localize")
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads((out / "validation" / "report.json").read_text())
    stages = {a["name"]: a["localization"]["divergence"]["stage"] for a in report["artifacts"]}
    assert stages == {"onnx": "block 1 mlp", "tflite": "block 1"}

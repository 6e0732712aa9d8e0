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
TINY_BUDGET = (
    "[int8]\nmax_abs_logit_diff = 100\ntop1_agreement = 0.0\nflips_far_from_boundary = 100\naccuracy_drop = 1.0\n"
)


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
    assert report["schema"] == 3 and report["passed"] and report["images"]["count"] == 50
    assert (
        len(report["images"]["sha256"]) == 64 and report["machine"]["cpu"] and "torch" in report["machine"]["versions"]
    )
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
        assert ("vitgender." + artifact["name"], "batch_max_rel_logit_diff") in cases
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
    assert any(f.startswith("max_rel_logit_diff") for f in report["artifacts"][0]["failures"])


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


def test_an_artifact_its_runtime_cannot_run_is_exit_3_in_one_line(work, monkeypatch, capsys):
    """A converter bug that shows only at run time (a SavedModel that ran at batch 1 only, seen on an AVX2-only
    EPYC) ends validate with one line naming the artifact and the runtime's first line, exit 3."""
    from conftest import run_main

    from vitgender.runtimes.tflite_runner import TfliteRunner

    def fails(self, pixel_values):
        raise RuntimeError("In[0] and In[1] must have compatible batch dimensions\n[[node MatMul]]")

    monkeypatch.setattr(TfliteRunner, "run", fails)
    code, _, err = run_main(monkeypatch, capsys, "validate", str(work), "--only", "tflite")
    assert code == 3 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        "vitgender: tflite (tflite): the runtime failed on the validation images: "
        "In[0] and In[1] must have compatible batch dimensions"
    )


@pytest.mark.parametrize(
    "case",
    [
        "missing-artifact",
        "empty-images",
        "unreadable-image",
        "no-manifest",
        "foreign-labels",
        "unknown-budget-section",
        "missing-baseline",
    ],
)
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


def test_budget_file_and_baseline_written_only_for_a_passing_run(work, tmp_path):
    budget = tmp_path / "budget.toml"
    budget.write_text(TINY_BUDGET + "[onnx-fp16]\nmax_abs_logit_diff = 1e-9\n")
    baseline = tmp_path / "baseline.json"
    failing = validate(str(work), "--budget", str(budget), "--only", "onnx-fp16", "--write-baseline", str(baseline))
    assert failing.returncode == 1 and not baseline.exists()
    assert failing.stderr.strip().splitlines()[-1].startswith("vitgender: not writing baseline")
    forced = validate(
        str(work), "--budget", str(budget), "--only", "onnx-fp16", "--write-baseline", str(baseline), "--force-baseline"
    )
    assert forced.returncode == 1 and json.loads(baseline.read_text())["passed"] is False
    assert validate(str(work), "--write-baseline", str(baseline)).returncode == 0
    stored = json.loads(baseline.read_text())
    assert stored["passed"] and stored["images"]["sha256"] and stored["machine"]["isa"] is not None
    for artifact in stored[
        "artifacts"
    ]:  # the baseline recorded no flips: today's few (if any) are no supported regression
        artifact["metrics"]["flips"] = []
    again = validate(str(work), "--baseline", str(baseline))
    assert again.returncode == 0, again.stdout  # the same decisions as the baseline: nothing newly flipped


def _artifact(flips: int, images: int, name: str = "onnx-int8"):
    from vitgender.precision import Precision
    from vitgender.validators.checks import ArtifactResult

    metrics = {"images": images, "flips": [{"image": f"face{i}.jpg"} for i in range(flips)]}
    return ArtifactResult(name, "onnx", Precision.INT8, "m.onnx", "x", metrics, [], {})


def _baseline_verdict(new_flips: int, old_flips: int, images: int, same_images: bool = True) -> tuple[bool, list[str]]:
    from vitgender.validators.checks import ValidationResult
    from vitgender.validators.parity import compare_baseline

    result = ValidationResult(
        "a", {}, {"folder": "faces", "count": images, "sha256": "s"}, {}, [_artifact(new_flips, images)]
    )
    baseline = {
        "images": {"folder": "faces", "count": images, "sha256": "s" if same_images else "other"},
        "artifacts": [_artifact(old_flips, images).to_dict()],
    }
    compare_baseline(result, baseline)
    check = next(c for c in result.artifacts[0].checks if c.name == "baseline")
    return check.passed, result.notes


@pytest.mark.parametrize("images", [50, 5000])
def test_baseline_regression_is_statistical_not_one_image(images):
    """One face flipping on another CPU (AMX vs AVX-512 int8 kernels) passes; a real regression fails, on 50 or 5,000."""
    assert _baseline_verdict(1, 0, images)[0]  # one flip more than the baseline: p = 0.5
    assert _baseline_verdict(3, 1, images)[0]
    regression = max(8, images // 100)  # 8 of 50 (16%) or 50 of 5,000 (1%) newly flipped
    assert not _baseline_verdict(regression, 0, images)[0]
    assert _baseline_verdict(0, regression, images)[0]  # fewer flips than the baseline is not a regression


def test_baseline_on_other_images_says_so_and_compares_rates_only():
    passed, notes = _baseline_verdict(1, 0, 50, same_images=False)
    assert passed and any("other images" in n for n in notes)
    assert not _baseline_verdict(20, 0, 50, same_images=False)[0]


def test_a_budgeted_metric_the_comparison_does_not_produce_is_an_error():
    from vitgender.validators.budgets import check

    metrics = compare_logits(np.zeros((4, 2), np.float32), np.zeros((4, 2), np.float32), ("a", "b"), list("wxyz"))
    assert [c.name for c in check(metrics, {"q90_rel_logit_diff": 0.1})] == ["finite", "q90_rel_logit_diff"]
    with pytest.raises(KeyError, match="batch_max_rel_logit_diff"):
        check(metrics, {"batch_max_rel_logit_diff": 0.1})
    assert len(check(metrics, {"accuracy_worse_p": 0.01}, labelled=False)) == 1  # unlabelled: not measured, said so


def test_metrics_have_one_direction_each():
    from vitgender.validators.metrics import METRICS, Better

    assert METRICS["top1_agreement"].better is Better.HIGHER and METRICS["q90_rel_logit_diff"].better is Better.LOWER
    assert METRICS["accuracy_worse_p"].within(0.5, 0.01) and not METRICS["flip_rate_lower99"].within(0.2, 0.05)


def test_relative_logit_metrics_do_not_depend_on_the_logit_scale():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(64, 5)).astype(np.float32)
    noise = rng.normal(scale=1e-3, size=(64, 5)).astype(np.float32)
    small = compare_logits(reference, reference + noise, tuple("abcde"), [str(i) for i in range(64)])
    large = compare_logits(8 * reference, 8 * (reference + noise), tuple("abcde"), [str(i) for i in range(64)])
    assert large["q90_abs_logit_diff"] == pytest.approx(8 * small["q90_abs_logit_diff"], rel=1e-3)
    assert large["q90_rel_logit_diff"] == pytest.approx(small["q90_rel_logit_diff"], rel=1e-3)


def test_saved_outputs_reproduce_the_report_and_compare_artifact_against_artifact(work, tmp_path):
    saved = tmp_path / "outputs"
    first = validate(
        str(work), "--only", "onnx,tflite", "--save-outputs", str(saved), "--report-dir", str(tmp_path / "a")
    )
    assert first.returncode == 0, first.stderr[-2000:]
    assert (saved / "results.json").is_file() and (saved / "outputs.npz").is_file()
    again = validate(str(work), "--load-outputs", str(saved), "--report-dir", str(tmp_path / "b"))
    assert again.returncode == 0 and "[validate]" not in again.stderr  # nothing ran
    assert (tmp_path / "a" / "report.md").read_text() == (tmp_path / "b" / "report.md").read_text()
    assert (tmp_path / "a" / "report.json").read_text() == (tmp_path / "b" / "report.json").read_text()
    versus = validate(str(work), "--against", "onnx", "--only", "onnx,tflite", "--report-dir", str(tmp_path / "c"))
    assert versus.returncode == 0, versus.stdout[-2000:]
    report = json.loads((tmp_path / "c" / "report.json").read_text())
    assert report["torch"]["reference"] == "onnx" and [a["name"] for a in report["artifacts"]] == ["tflite"]
    assert "reference = artifact onnx" in (tmp_path / "c" / "report.md").read_text()


def test_report_shows_headroom_and_plain_greater_than(work, tmp_path):
    budget = tmp_path / "budget.toml"
    budget.write_text("[fp32]\nq90_rel_logit_diff = 1e-12\n")
    result = validate(str(work), "--only", "onnx", "--budget", str(budget), "--labels", "none")
    assert result.returncode == 1
    md = (work / "validation" / "report.md").read_text()
    assert "q90_rel_logit_diff" in md and "> budget" in md and "&gt;" not in md
    row = next(line for line in md.splitlines() if line.startswith("| onnx |"))
    assert "q90_rel_logit_diff" in row and "%" in row  # the tightest budget, as a share used, in the summary row


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
        # 30 min each: export + validate took 16 min here on a 2-core AVX2-only EPYC shared with another test
        return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=1800, cwd=tmp_path)

    export = run("export", "--out", "build/artifacts", "--formats", "all")
    assert export.returncode == 0, export.stderr[-2000:]
    out = tmp_path / "build" / "artifacts"
    first = run("validate", "build/artifacts", "--write-baseline", "parity-baseline.json", "--save-outputs", "outputs")
    assert first.returncode == 0 and (tmp_path / "parity-baseline.json").is_file(), first.stdout[-3000:]
    # the gate against the baseline just written, judged from the saved outputs (nothing runs twice)
    gate = run(
        "validate",
        "build/artifacts",
        "--load-outputs",
        "outputs",
        "--baseline",
        "parity-baseline.json",
        "--junit",
        "parity.xml",
    )
    assert gate.returncode == 0 and (tmp_path / "parity.xml").is_file(), gate.stdout[-3000:]
    # the committed baseline (the project's own gate), judged from the same saved outputs
    committed = str(REPO / "artifacts" / "baselines" / "vitgender-default.json")
    result = run("validate", "build/artifacts", "--load-outputs", "outputs", "--baseline", committed)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    report = json.loads((out / "validation" / "report.json").read_text())
    by_name = {a["name"]: a for a in report["artifacts"]}
    assert len(by_name) == 18 and all(any(c["name"] == "baseline" for c in a["checks"]) for a in report["artifacts"])
    assert by_name["onnx-int8-dynamic"]["metrics"]["top1_agreement"] >= 0.99
    assert by_name["tflite-int8-dynamic"]["metrics"]["top1_agreement"] >= 0.99


def test_localize_names_the_block_a_fault_was_injected_into(tiny_model, tmp_path):
    """A fault in encoder block 1 of an exported ONNX: the report says divergence starts there."""
    import onnx
    from onnx import numpy_helper

    out = main_export(tiny_model, tmp_path / "art", "onnx")
    model = onnx.load(str(out / "model.onnx"))
    scope = "'model.vit.encoder.layer.1.intermediate'"  # the MLP of the second (last) block
    node = next(
        n
        for n in model.graph.node
        if n.op_type == "MatMul"
        and any(p.key == "pkg.torch.onnx.name_scopes" and scope in p.value for p in n.metadata_props)
    )
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


RACE5 = ("White", "Black", "Asian", "Indian", "Other")


@pytest.fixture(scope="module")
def five_label_export(tmp_path_factory) -> Path:
    from tests.conftest import make_tiny_vit

    root = tmp_path_factory.mktemp("five")
    model = make_tiny_vit(root / "model", labels=RACE5)
    return main_export(model, root / "artifacts", "onnx")


def test_bundled_faces_are_labelled_by_the_field_that_gives_the_models_labels(five_label_export, tmp_path):
    """A race model is judged on the bundled faces labelled by their race field: no note, accuracy kept."""
    result = validate(str(five_label_export), "--report-dir", str(tmp_path / "r"))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert not [line for line in result.stderr.splitlines() if line.startswith("vitgender: note:")]
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["images"]["labelled"] == report["images"]["count"] == 50
    assert "accuracy_worse_p" in report["artifacts"][0]["metrics"]


def test_bundled_faces_judge_another_label_set_unlabelled_and_say_so(tmp_path):
    """Labels no UTKFace field gives: the bundled faces are judged unlabelled, and one line says so."""
    from tests.conftest import make_tiny_vit

    export = main_export(make_tiny_vit(tmp_path / "model", labels=("cat", "dog", "bird")), tmp_path / "a", "onnx")
    result = validate(str(export), "--report-dir", str(tmp_path / "r"))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    notes = [line for line in result.stderr.splitlines() if line.startswith("vitgender: note:")]
    assert len(notes) == 1 and "judged unlabelled (decision metrics only)" in notes[0]
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["images"]["labelled"] == 0 and "accuracy_worse_p" not in report["artifacts"][0]["metrics"]


def _class_folders(root: Path, per_class: dict[str, int]) -> Path:
    from tests.conftest import random_image

    seed = 0
    for label, count in per_class.items():
        (root / label).mkdir(parents=True)
        for _ in range(count):
            seed += 1
            random_image(seed, size=(40, 40)).save(root / label / f"{seed}.png")
    return root


@pytest.mark.parametrize("case", ["too-few", "one-class", "foreign-budget-file", "into-the-package"])
def test_fit_refuses_bad_input_with_one_line(five_label_export, tmp_path, case):
    args = [str(five_label_export), "--fit-budgets", str(tmp_path / "budgets.toml")]
    if case == "too-few":
        args += ["--images", str(_class_folders(tmp_path / "imgs", {"White": 10, "Black": 10}))]
    elif case == "one-class":
        args += ["--images", str(_class_folders(tmp_path / "imgs", {"Asian": 40}))]
    elif case == "into-the-package":
        args[2] = str(REPO / "vitgender" / "validators" / "mine.toml")
        args += ["--images", str(_class_folders(tmp_path / "imgs", {"White": 20, "Black": 20}))]
    else:
        (tmp_path / "other.toml").write_text('[model]\nlabels = ["female", "male"]\n[fp32]\nq90_rel_logit_diff = 1\n')
        args = [str(five_label_export), "--budget", str(tmp_path / "other.toml")]
    result = validate(*args)
    assert result.returncode == 2, result.stdout[-1000:] + result.stderr[-1000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vitgender: ") and "[validate]" not in result.stderr
    assert not (tmp_path / "budgets.toml").exists() and not (REPO / "vitgender" / "validators" / "mine.toml").exists()


def _recipe_lines() -> list[str]:
    text = (REPO / "docs" / "gate.md").read_text()
    block = text.split("<!-- gate-recipe")[1].split("```bash\n")[1].split("```")[0]
    return [line for line in block.splitlines() if line.startswith("vitgender ")]


@pytest.mark.slow
def test_docs_gate_recipe_runs_as_written_on_a_five_label_model(tmp_path):
    """docs/gate.md's "Gating your own model in CI" lines, run as written from a project folder
    holding ./model (a 5-label model) and my-images/{calibration,fit,ci} in class folders."""
    from tests.conftest import make_tiny_vit

    make_tiny_vit(tmp_path / "model", labels=RACE5)
    per_class = {label: 12 for label in RACE5}
    _class_folders(tmp_path / "my-images" / "fit", per_class)
    for name in ("calibration", "ci"):
        shutil.copytree(tmp_path / "my-images" / "fit", tmp_path / "my-images" / name)
    lines = _recipe_lines()
    assert len(lines) == 4 and "--fit-budgets" in lines[1] and "--baseline" in lines[3]
    for line in lines:
        args = line.split()[1:]
        if args[0] == "export":  # the fast formats: the recipe's lines are what is under test, not every converter
            args[args.index("--formats") + 1] = "onnx,onnx-fp16,onnx-int8-static,tflite"
        result = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=1200, cwd=tmp_path)
        assert result.returncode == 0, f"{line}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    fitted = (tmp_path / "parity" / "budgets.toml").read_text()
    assert 'labels = ["White", "Black", "Asian", "Indian", "Other"]' in fitted and "[int8]" in fitted
    quality = json.loads((tmp_path / "parity" / "budgets.gate-quality.json").read_text())
    assert quality["images"]["labelled"] and set(quality["broken"]) >= {
        "broken: RGB->BGR",
        "broken: label order swapped",
    }
    assert (
        quality["broken"]["broken: label order swapped"][
            "64" if "64" in quality["broken"]["broken: label order swapped"] else "16"
        ]["fail_rate"]
        == 1.0
    )
    baseline = json.loads((tmp_path / "parity" / "baseline.json").read_text())
    assert baseline["passed"] and baseline["images"]["count"] == 60 and (tmp_path / "parity.xml").is_file()


def test_fit_on_synthetic_runs_separates_correct_from_broken(tmp_path):
    """The fit/judge machinery on known logits: noise at float rounding passes, a scaled model fails."""
    from vitgender.validators import gate_fit
    from vitgender.validators.results import ImageSet, RunResult, RunResults

    rng = np.random.default_rng(0)
    names = [f"{i}.bin" for i in range(200)]
    for i, name in enumerate(names):
        (tmp_path / name).write_bytes(i.to_bytes(4, "little"))
    ref = (8 * rng.normal(size=(200, 5))).astype(np.float32)  # logits of a 5-class model, spread ~8

    def run(name, logits, precision="fp32", labels=RACE5):
        return RunResult(
            name,
            "onnx",
            precision,
            labels,
            logits.astype(np.float32),
            1.0,
            batch={"batch_max_abs_logit_diff": 1e-6, "batch_flips": 0, "batch_probes": 8, "batch_size": 32},
        )

    runs = [
        run("onnx", ref + rng.normal(scale=1e-5, size=ref.shape)),
        run("onnx-fp16", ref + rng.normal(scale=5e-3, size=ref.shape), "fp16"),
        run("broken: weight x1.05", ref * 1.05),
        run("broken: label order swapped", ref, labels=RACE5[::-1]),
    ]
    results = RunResults(
        {"labels": list(RACE5), "source": "synthetic"}, ImageSet(str(tmp_path), names, "h"), run("torch", ref), runs
    )
    report = gate_fit.fit(
        results,
        {"broken: weight x1.05": "x1.05", "broken: label order swapped": "swap"},
        resamples=200,
        judge_resamples=200,
    )
    assert report["images"]["fit"] + report["images"]["judge"] == 200 and not report["images"]["labelled"]
    assert set(report["budgets"]) == {"fp32", "fp16"} and "accuracy_worse_p" not in report["budgets"]["fp32"]
    assert report["correct"]["onnx"]["64"]["fail_rate"] == 0 and report["correct"]["onnx-fp16"]["64"]["fail_rate"] == 0
    assert report["broken"]["broken: weight x1.05"]["64"]["fail_rate"] == 1.0
    assert report["broken"]["broken: label order swapped"]["16"]["checks"]["labels"] == 200
    assert report["verdict"]["false_alarms_ok"] and report["verdict"]["detection_ok"]
    toml = gate_fit.budget_toml(report["budgets"], RACE5, {"images": 200})
    import tomllib

    assert tomllib.loads(toml)["model"]["labels"] == list(RACE5)
    from vitgender.reporting import gate_quality

    assert "| **broken:** weight x1.05 |" in gate_quality.markdown(report)


@pytest.mark.slow
def test_readme_own_model_walkthrough_runs_as_written_on_a_five_label_model(tmp_path):
    """README's "Your own model in five minutes" lines, as written, from a folder holding ./my-vit (a
    5-label model) and my-faces/ in class folders: verify, export, fit, gate."""
    from tests.conftest import make_tiny_vit

    make_tiny_vit(tmp_path / "my-vit", labels=RACE5)
    _class_folders(tmp_path / "my-faces", {label: 12 for label in RACE5})
    text = (REPO / "README.md").read_text()
    block = text.split("## Your own model in five minutes")[1].split("```bash\n")[1].split("```")[0]
    lines = [line.split("#")[0].strip() for line in block.splitlines() if line.startswith("vitgender ")]
    assert [line.split()[1] for line in lines] == ["verify", "export", "validate", "validate"]
    for line in lines:
        result = subprocess.run([*CLI, *line.split()[1:]], capture_output=True, text=True, timeout=1200, cwd=tmp_path)
        assert result.returncode == 0, f"{line}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert 'labels = ["White", "Black", "Asian", "Indian", "Other"]' in (tmp_path / "budgets.toml").read_text()
    assert (tmp_path / "parity.xml").is_file()
    report = json.loads((tmp_path / "build" / "artifacts" / "validation" / "report.json").read_text())
    assert report["passed"] and {a["name"] for a in report["artifacts"]} == {"onnx", "onnx-int8-static", "tflite"}

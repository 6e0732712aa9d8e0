"""OpenVINO as a peer runtime on the exported .onnx files: classify, validate, bench rows, bf16 refusal."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="the ONNX artifacts need the onnx extra: pip install .[onnx]")
pytest.importorskip("openvino", reason="the openvino runtime needs the peer extra: pip install .[peer]")

from conftest import run_main  # noqa: E402

from vitgender.errors import UsageError  # noqa: E402
from vitgender.exporters import main_export  # noqa: E402
from vitgender.machine import has_bf16_arithmetic  # noqa: E402
from vitgender.precision import Precision  # noqa: E402
from vitgender.runtimes import open_runner, parse_runtime, peer_runtimes, runtime_for  # noqa: E402

REFERENCE = Path(__file__).resolve().parent.parent / "vitgender" / "reference" / "utkface-val-50"
needs_bf16 = pytest.mark.skipif(not has_bf16_arithmetic(), reason="this CPU has no avx512_bf16 / amx_bf16")


@pytest.fixture(scope="module")
def export_dir(tiny_model, tmp_path_factory) -> Path:
    return main_export(tiny_model, tmp_path_factory.mktemp("openvino") / "tiny", "onnx,onnx-int8-static")


@pytest.fixture
def no_bf16(monkeypatch):
    """A CPU whose flags lack avx512_bf16 and amx_bf16 (as on AVX2-only machines)."""
    import vitgender.machine

    fake = {"cpu": "fake", "cores": 1, "isa": ["avx2", "fma", "avx512f", "avx512_vnni"], "mhz": None}
    monkeypatch.setattr(vitgender.machine, "machine", lambda: fake)


def test_openvino_matches_onnxruntime_on_the_same_file(export_dir):
    pixels = np.random.default_rng(0).normal(size=(3, 3, 32, 32)).astype(np.float32)
    with (
        open_runner("onnx", export_dir / "model.onnx") as ort,
        open_runner("openvino", export_dir / "model.onnx", threads=1) as ov,
    ):
        assert ov.info.runtime == "openvino" and ov.info.labels == ort.info.labels
        assert ov.info.computes_in is Precision.FP32
        np.testing.assert_allclose(ov.run(pixels), ort.run(pixels), atol=1e-4)
    # a peer is chosen by name, never by file type: .onnx stays ONNX Runtime's
    assert runtime_for(export_dir / "model.onnx") == "onnx"
    assert runtime_for(export_dir / "model.onnx", "openvino") == "openvino"


def classify(export_dir: Path, runtime: str, monkeypatch, capsys) -> tuple[int, str, str]:
    model = str(export_dir / "model.onnx")
    return run_main(monkeypatch, capsys, "classify", str(REFERENCE), "--model", model, "--runtime", runtime)


def test_classify_with_the_openvino_runtime(export_dir, monkeypatch, capsys):
    code, out, err = classify(export_dir, "openvino", monkeypatch, capsys)
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == 50 and {p["label"] for p in records[0]["predictions"]} == {"female", "male"}


def test_validate_with_the_openvino_runtime_judges_fp32_and_int8(export_dir, tmp_path, monkeypatch, capsys):
    reports = tmp_path / "reports"
    code, out, err = run_main(
        monkeypatch, capsys, "validate", str(export_dir), "--runtime", "openvino", "--report-dir", str(reports)
    )
    assert code == 0, out + err
    artifacts = {a["name"]: a for a in json.loads((reports / "report.json").read_text())["artifacts"]}
    assert {a["format"] for a in artifacts.values()} == {"openvino"}  # the runtime that ran it
    assert artifacts["onnx"]["precision"] == "fp32" and artifacts["onnx-int8-static"]["precision"] == "int8"


@needs_bf16
def test_a_bf16_run_is_judged_by_the_bf16_budget(export_dir, tmp_path, monkeypatch, capsys):
    reports = tmp_path / "reports"
    only_fp32 = ["--only", "onnx", "--runtime", "openvino:precision=bf16"]
    code, out, err = run_main(
        monkeypatch, capsys, "validate", str(export_dir), *only_fp32, "--report-dir", str(reports)
    )
    assert code == 0, out + err
    (artifact,) = json.loads((reports / "report.json").read_text())["artifacts"]
    assert artifact["precision"] == "bf16" and artifact["format"] == "openvino:precision=bf16"  # as it ran
    from vitgender.validators.budgets import DEFAULT_BUDGETS

    bf16, fp32 = DEFAULT_BUDGETS["bf16"], DEFAULT_BUDGETS["fp32"]
    assert bf16["q90_rel_logit_diff"] > fp32["q90_rel_logit_diff"]  # bf16 keeps 8 mantissa bits, fp32 23
    assert artifact["budget"]["q90_rel_logit_diff"] == bf16["q90_rel_logit_diff"]


def test_bf16_is_refused_in_one_line_on_a_cpu_without_bf16(export_dir, no_bf16, monkeypatch, capsys):
    code, out, err = classify(export_dir, "openvino:precision=bf16", monkeypatch, capsys)
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0 and "avx512_bf16" in err and "precision=f32" in err and "Traceback" not in err
    # and bench offers no bf16 row there
    assert peer_runtimes(export_dir / "model.onnx", Precision.FP32) == ["openvino"]


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("openvino:precision=fp64", "precision=f32 or bf16"),
        ("openvino:allow_pickle=1", "does not take allow_pickle"),
        ("openvino:threads=zero", "positive integer"),
        ("openvino:precision", "NAME:KEY=VALUE"),
        ("onnx:precision=bf16", "does not take precision"),
    ],
)
def test_runtime_settings_are_checked(export_dir, spec, says):
    with pytest.raises(UsageError, match=says):
        open_runner(spec, export_dir / "model.onnx")


def test_validate_refuses_a_runtime_that_opens_none_of_the_artifacts(export_dir, monkeypatch, capsys):
    code, out, err = run_main(monkeypatch, capsys, "validate", str(export_dir), "--runtime", "tflite")
    assert code == 2 and "opens none of the artifacts" in err


def test_runtime_settings_parse():
    assert parse_runtime("openvino") == ("openvino", {})
    assert parse_runtime("openvino:precision=bf16,threads=2") == ("openvino", {"precision": "bf16", "threads": 2})


def test_peer_rows_cover_fp32_and_static_int8_files(export_dir):
    fp32 = peer_runtimes(export_dir / "model.onnx", Precision.FP32)
    assert fp32 == (["openvino", "openvino:precision=bf16"] if has_bf16_arithmetic() else ["openvino"])
    assert peer_runtimes(export_dir / "model_int8_static.onnx", Precision.INT8) == ["openvino"]
    assert peer_runtimes(export_dir / "model.onnx", Precision.INT8_DYNAMIC) == []
    assert peer_runtimes(export_dir / "model.onnx.json", Precision.FP32) == []  # not a file it reads


def test_serve_answers_on_the_openvino_runtime(export_dir):
    import time

    from fastapi.testclient import TestClient

    from vitgender.serving.app import ServeSettings, create_app

    settings = ServeSettings(model=str(export_dir / "model.onnx"), runtime="openvino:precision=f32", threads=1)
    with TestClient(create_app(settings)) as client:
        deadline = time.time() + 60
        while client.get("/health/ready").status_code != 200 and time.time() < deadline:
            time.sleep(0.1)
        image = next(REFERENCE.iterdir()).read_bytes()
        answer = client.post("/", content=image)
        assert answer.status_code == 200, answer.text
        assert {p["label"] for p in answer.json()} == {"female", "male"}


def test_the_quantization_proof_of_a_bf16_run_accepts_float_files_only():
    from vitgender.validators.inventory import check_precision

    def share(**by_dtype):
        return {"weight_share_by_dtype": by_dtype}

    assert check_precision(share(float32=1.0), Precision.BF16).passed
    assert check_precision(share(float16=0.9, float32=0.1), Precision.BF16).passed  # fp16 file, bf16 hint
    assert not check_precision(share(int8=0.8, float32=0.2), Precision.BF16).passed

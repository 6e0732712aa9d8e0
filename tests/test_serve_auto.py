"""`serve --model auto`: the fastest artifact the saved evidence proves faithful and batch-invariant."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime", reason="the ONNX artifacts need the onnx extra: pip install .[onnx]")

from conftest import run_main  # noqa: E402

from vitgender.errors import UsageError  # noqa: E402
from vitgender.exporters import main_export  # noqa: E402
from vitgender.serving.auto import choose  # noqa: E402

BF16 = "openvino:precision=bf16"


@pytest.fixture(scope="module")
def exported(tiny_model, tmp_path_factory) -> Path:
    return main_export(tiny_model, tmp_path_factory.mktemp("auto") / "tiny", "onnx,onnx-fp16")


@pytest.fixture
def export(exported, tmp_path) -> Path:
    """The export's files linked into a fresh folder with nothing measured yet: each test writes its evidence."""
    for file in exported.iterdir():
        (tmp_path / file.name).symlink_to(file)
    return tmp_path


def _sha(export: Path, name: str) -> str:
    return next(
        e["sha256"] for e in json.loads((export / "manifest.json").read_text())["artifacts"] if e["name"] == name
    )


def write_report(export: Path, folder: str, runtime: str, **artifacts: dict) -> None:
    """A validation report: per artifact, `passed`, `precision`, `batch_flips` and `sha256` as given or correct."""
    rows = [
        {
            "name": name,
            "format": runtime,
            "precision": a.get("precision", "fp32"),
            "passed": a.get("passed", True),
            "sha256": a.get("sha256", _sha(export, name)),
            "metrics": {"batch_flips": a.get("batch_flips", 0)}
            | ({"batch_max_rel_logit_diff": a["batch_diff"]} if "batch_diff" in a else {}),
        }
        for name, a in artifacts.items()
    ]
    (export / folder).mkdir()
    (export / folder / "report.json").write_text(json.dumps({"artifacts": rows}))


def write_bench(export: Path, rows: list[tuple[str, str, int, float]]) -> None:
    """bench.json rows (name, runtime, batch size, images/s), on the manifest's files."""
    results = [
        {"name": n, "runtime": r, "batch_size": b, "images_per_s": s, "sha256": _sha(export, n.partition("@")[0])}
        for n, r, b, s in rows
    ]
    (export / "bench.json").write_text(json.dumps({"machine": {"isa": ["avx2"]}, "results": results}))


def test_the_fastest_faithful_artifact_wins(export):
    write_report(export, "validation", "onnx", **{"onnx": {}, "onnx-fp16": {"precision": "fp16"}})
    write_bench(export, [("onnx", "onnx", 8, 100.0), ("onnx-fp16", "onnx", 8, 150.0)])
    choice = choose(export, 16)
    assert (choice.name, choice.runtime, choice.path) == ("onnx-fp16", "onnx", export / "model_fp16.onnx")
    assert choice.images_per_s == 150.0 and choice.report == export / "validation" / "report.json"


@pytest.mark.parametrize(
    "fp16",
    [
        {"precision": "fp16", "passed": False},  # failed the gate
        {"precision": "fp16", "batch_flips": 1},  # answers depend on the batch
        {"precision": "int8-dynamic"},  # dynamic int8 without a measured batch probe
        {"precision": "int8-dynamic", "batch_diff": 0.02},  # activation scales from the whole batch (ORT)
        {"precision": "fp16", "sha256": "0" * 64},  # validated another file
    ],
)
def test_a_faster_artifact_without_the_evidence_is_passed_over(export, fp16):
    write_report(export, "validation", "onnx", **{"onnx": {}, "onnx-fp16": fp16})
    write_bench(export, [("onnx", "onnx", 8, 100.0), ("onnx-fp16", "onnx", 8, 150.0)])
    assert choose(export, 16).name == "onnx"


def test_a_dynamic_int8_artifact_measured_batch_invariant_qualifies(export):
    """XNNPACK's dynamic int8 (LiteRT, ExecuTorch) scales each row: exactly invariant, measured."""
    write_report(
        export, "validation", "onnx", **{"onnx": {}, "onnx-fp16": {"precision": "int8-dynamic", "batch_diff": 0}}
    )
    write_bench(export, [("onnx", "onnx", 8, 100.0), ("onnx-fp16", "onnx", 8, 150.0)])
    assert choose(export, 16).name == "onnx-fp16"


def test_a_peer_row_wins_only_with_a_report_for_that_runtime(export):
    write_report(export, "validation", "onnx", onnx={})
    write_bench(export, [("onnx", "onnx", 8, 100.0), (f"onnx@{BF16}", BF16, 8, 300.0)])
    assert choose(export, 16).runtime == "onnx"
    write_report(export, "validation-bf16", BF16, onnx={"precision": "bf16"})
    choice = choose(export, 16)
    assert (choice.name, choice.runtime, choice.path) == (f"onnx@{BF16}", BF16, export / "model.onnx")


def test_speed_is_compared_at_the_largest_measured_batch_the_server_sends(export):
    write_report(export, "validation", "onnx", **{"onnx": {}, "onnx-fp16": {"precision": "fp16"}})
    onnx = [("onnx", "onnx", 1, 90.0), ("onnx", "onnx", 32, 100.0)]
    write_bench(export, [*onnx, ("onnx-fp16", "onnx", 1, 80.0), ("onnx-fp16", "onnx", 32, 150.0)])
    assert (choose(export, 16).name, choose(export, 16).batch_size) == ("onnx", 1)
    assert (choose(export, 32).name, choose(export, 32).batch_size) == ("onnx-fp16", 32)


def test_missing_evidence_is_a_usage_error_that_says_what_to_run(export):
    with pytest.raises(UsageError, match="vitgender validate"):
        choose(export, 16)
    write_report(export, "validation", "onnx", onnx={})
    with pytest.raises(UsageError, match="vitgender bench --artifacts"):
        choose(export, 16)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--model", "auto"], "give --artifacts DIR"),
        (["--artifacts", "x"], "only with --model auto"),
        (["--model", "auto", "--artifacts", "x", "--runtime", "onnx"], "chooses the runtime too"),
    ],
)
def test_serve_auto_usage_errors(args, says, monkeypatch, capsys):
    code, _, err = run_main(monkeypatch, capsys, "serve", *args)
    assert code == 2 and says in err

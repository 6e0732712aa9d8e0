"""Batch classification: CLI output formats, bad inputs, Python API, pipeline parity."""

from __future__ import annotations

import base64
import csv
import io
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import vitgender
from vitgender.classify import Classifier, auto_batch_size
from vitgender.runtimes import open_runner

CLI = [sys.executable, "-m", "vitgender.cli"]
REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"vitgender {vitgender.__version__}"


def test_jsonl_streams_one_record_per_input(tiny_model, image_dir):
    result = run_cli("classify", str(image_dir), "--model", str(tiny_model), "--batch-size", "4")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [Path(r["image"]).name for r in records] == ["alpha.png", *[f"img{i}.jpg" for i in range(5)]]
    for record in records:
        scores = [p["score"] for p in record["predictions"]]
        assert scores == sorted(scores, reverse=True)
        assert {p["label"] for p in record["predictions"]} == {"female", "male"}
        assert abs(sum(scores) - 1) < 1e-5


def test_bad_inputs_get_error_records_and_exit_2(tiny_model, image_dir, tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    (tmp_path / "nothing_here").mkdir()
    good = image_dir / "img0.jpg"
    args = [
        str(tmp_path / "empty.jpg"),
        str(good),
        str(tmp_path / "text.jpg"),
        str(tmp_path / "missing.jpg"),
        str(tmp_path / "nothing_here"),
        str(image_dir / "img1.jpg"),
    ]
    result = run_cli("classify", *args, "--model", str(tiny_model))
    assert result.returncode == 2
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["image"] for r in records] == args
    assert records[0]["error"] == "not an image (0 bytes)"
    assert "predictions" in records[1] and "predictions" in records[5]
    assert "not an image" in records[2]["error"]
    assert records[3]["error"] == "no such file or directory"
    assert records[4]["error"] == "directory contains no images"
    assert f"vitgender: {tmp_path / 'empty.jpg'}: not an image (0 bytes)" in result.stderr
    assert "Traceback" not in result.stderr


def test_csv_and_json_formats_and_atomic_output(tiny_model, image_dir, tmp_path):
    out = tmp_path / "out.csv"
    result = run_cli(
        "classify", str(image_dir / "img*.jpg"), "-m", str(tiny_model), "-f", "csv", "-o", str(out), "-k", "1"
    )
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(rows) == 5 and all(r["rank"] == "1" for r in rows)
    assert not list(tmp_path.glob(".*partial"))
    result = run_cli("classify", str(image_dir), "-m", str(tiny_model), "-f", "json")
    assert len(json.loads(result.stdout)) == 6


def test_bad_model_is_one_line_exit_2(tmp_path, image_dir):
    result = run_cli("classify", str(image_dir), "--model", str(tmp_path / "nope"))
    assert result.returncode == 2
    assert result.stderr.startswith("vitgender: ") and result.stderr.count("\n") == 1


def test_python_api_matches_pipeline(tiny_model, image_dir):
    from transformers import pipeline

    images = sorted(str(p) for p in image_dir.glob("img*.jpg"))
    ours = vitgender.load_classifier(tiny_model).classify(images, batch_size=2)
    theirs = pipeline("image-classification", model=str(tiny_model), device="cpu")(images, top_k=2)
    for a, b in zip(ours, theirs, strict=False):
        assert [p["label"] for p in a] == [p["label"] for p in b]
        assert np.allclose([p["score"] for p in a], [p["score"] for p in b], atol=1e-5)


def test_pipeline_on_the_default_model_computes_in_fp32_and_matches():
    """The real default model stores fp16 weights: the standard transformers API must still get fp32."""
    from transformers import pipeline

    faces = sorted(str(p) for p in (REPO / "vitgender" / "reference" / "utkface-val-50").glob("*.jpg"))
    theirs = pipeline("image-classification", model=str(REPO / "vitgender" / "default_model"), device="cpu")
    assert theirs.model.dtype == torch.float32
    ours = vitgender.load_classifier().classify(faces, batch_size=16)
    for a, b in zip(ours, theirs(faces, top_k=2), strict=False):
        assert [p["label"] for p in a] == [p["label"] for p in b]
        assert np.abs(np.array([p["score"] for p in a]) - [p["score"] for p in b]).max() <= 1e-5


def test_uncertain_answers_have_one_form_in_api_cli_and_server(tiny_model, image_dir):
    image = str(image_dir / "img0.jpg")
    api = vitgender.load_classifier(tiny_model).classify(image, min_confidence=1.0)[0]
    assert api[0]["label"] == "uncertain" and api[0]["score"] == api[1]["score"]
    assert [p["label"] for p in api[1:]] == [
        p["label"] for p in vitgender.load_classifier(tiny_model).classify(image)[0]
    ]
    cli = subprocess.run(
        [*CLI, "classify", image, "--model", str(tiny_model), "--min-confidence", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert [p["label"] for p in json.loads(cli.stdout)["predictions"]] == [p["label"] for p in api]
    pytest.importorskip("fastapi", reason="the server needs the serve extra")
    from fastapi.testclient import TestClient

    from vitgender.serving.app import ServeSettings, create_app

    with TestClient(create_app(ServeSettings(model=str(tiny_model)))) as client:
        while client.get("/health/ready").status_code != 200:
            pass
        payload = {"inputs": base64.b64encode(Path(image).read_bytes()).decode(), "parameters": {"min_confidence": 1.0}}
        served = client.post("/", json=payload).json()
    assert [p["label"] for p in served] == [p["label"] for p in api]
    assert np.allclose([p["score"] for p in served], [p["score"] for p in api], atol=1e-6)


def test_reader_that_stops_early_is_not_an_error(tiny_model):
    """`vitgender classify DIR | head -1` exits 0 without a message, like any Unix tool."""
    faces = REPO / "vitgender" / "reference" / "utkface-val-50"
    proc = subprocess.Popen(
        [*CLI, "classify", str(faces), "--model", str(tiny_model), "--batch-size", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert json.loads(proc.stdout.readline())["predictions"]
    proc.stdout.close()  # like head: read one line, then go away
    assert proc.wait(timeout=120) == 0
    assert proc.stderr.read() == ""


def test_top_k_and_functions(tiny_model, image_dir):
    clf = vitgender.load_classifier(tiny_model)
    image = str(image_dir / "img0.jpg")
    assert len(clf.classify(image, top_k=1)[0]) == 1
    raw = clf.classify(image, function_to_apply="none")[0]
    sig = clf.classify(image, function_to_apply="sigmoid")[0]
    assert [p["label"] for p in raw] == [p["label"] for p in sig]
    assert all(0 < p["score"] < 1 for p in sig)


def test_auto_batch_size_follows_the_architecture_and_memory(tiny_model):
    runner = open_runner("torch", tiny_model)
    arch = runner.info.architecture
    assert arch.tokens(32, 32) == 17  # (32/8)^2 patches + [CLS], from the tiny ViT's own config
    per_image = arch.activation_bytes(32, 32)
    assert auto_batch_size(runner, memory=4 * 5 * per_image) == 4  # 5 fit in a quarter: largest power of two is 4
    assert auto_batch_size(runner, memory=4 * per_image - 1) == 1
    assert auto_batch_size(runner, ceiling=16, memory=2**40) == 16
    bigger = replace(arch, patch_size=4)  # 4x the tokens: attention grows 16x, so fewer images fit
    assert bigger.activation_bytes(32, 32) > 4 * per_image


def test_stream_keeps_memory_bounded_per_batch(tiny_model, image_dir):
    """The stream pulls inputs lazily: it never asks for more than one batch ahead."""
    clf = Classifier(open_runner("torch", tiny_model))
    pulled = []

    def lazy():
        for i in range(10):
            pulled.append(i)
            yield str(image_dir / f"img{i % 5}.jpg")

    stream = clf.stream(lazy(), batch_size=3)
    next(stream)
    assert len(pulled) == 3


@pytest.mark.slow
def test_default_model_classifies_examples():
    result = run_cli("classify", "examples/", cwd=Path(__file__).parent.parent)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    truth = {"0": "male", "1": "female"}
    correct = sum(r["predictions"][0]["label"] == truth[Path(r["image"]).name.split("_")[1]] for r in records)
    assert len(records) == 6 and correct >= 5

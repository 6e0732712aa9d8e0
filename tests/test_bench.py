"""`vitgender bench`: every candidate measured, ratios against PyTorch, schema 1 (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("onnxruntime", reason="benchmarking artifacts needs the export extra")

from vitgender.bench import vit_flops  # noqa: E402
from vitgender.exporters import main_export  # noqa: E402


def test_vit_flops_matches_a_hand_count():
    config = {"patch_size": 14, "hidden_size": 384, "intermediate_size": 1536, "num_hidden_layers": 12,
              "num_channels": 3, "id2label": {"0": "female", "1": "male"}}
    tokens, h, m = 101, 384, 1536
    per_layer = 2 * tokens * h * 3 * h + 4 * tokens * tokens * h + 2 * tokens * h * h + 4 * tokens * h * m
    expected = 2 * 100 * 588 * h + 12 * per_layer + 2 * h * 2
    assert vit_flops(config, 140, 140) == expected
    assert round(expected / 1e9, 2) == 4.52  # the figure the README quotes


def test_bench_reports_every_candidate(tiny_model, tmp_path):
    export = main_export(tiny_model, tmp_path / "art", "onnx,onnx-int8-dynamic,onnx-uint8-nhwc")
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, "-m", "vitgender.cli", "bench", "--model", str(tiny_model),
                             "--artifacts", str(export), "--batch-sizes", "1,2", "--seconds", "0.1",
                             "--json", str(out), "--plot", str(tmp_path / "bench.svg")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["schema"] == 1 and report["machine"]["cores"] >= 1 and report["threads"] >= 1
    names = {r["name"] for r in report["results"]}
    assert names == {"torch-eager", "transformers-pipeline", "onnx", "onnx-int8-dynamic", "onnx-uint8-nhwc"}
    for row in report["results"]:
        assert row["images_per_s"] > 0 and row["p90_ms"] >= row["p50_ms"] > 0 and row["bytes"] > 0
        assert {"ratio_vs_torch", "pct_of_peak", "peak_rss_mb", "load_seconds"} <= set(row)
    assert all(r["ratio_vs_torch"] == 1.0 for r in report["results"] if r["name"] == "torch-eager")
    assert (tmp_path / "bench.svg").read_text().startswith("<svg")
    assert "| onnx-int8-dynamic |" in result.stdout

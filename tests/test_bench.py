"""`vitgender bench`: every candidate measured, ratios against PyTorch, schema 1 (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("onnxruntime", reason="benchmarking artifacts needs the export extra")

from vitgender.exporters import main_export  # noqa: E402


def test_flop_count_matches_torch_flop_counter(tiny_model):
    """The config-derived FLOPs equal what PyTorch's own FLOP counter counts in a real forward pass."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from vitgender.checkpoint import open_checkpoint

    for checkpoint_dir, size in ((tiny_model, 32), (None, 140)):  # the tiny ViT and the default ViT-S/14
        ckpt = open_checkpoint(checkpoint_dir)
        model = ckpt.load_model()
        model.config._attn_implementation = "eager"
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            model(pixel_values=torch.zeros(1, 3, size, size))
        assert ckpt.architecture.flops(size, size) == counter.get_total_flops()


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
    precisions = {r["name"]: r["precision"] for r in report["results"]}  # what each really computes in
    assert precisions["transformers-pipeline"] == "fp32" and precisions["onnx-int8-dynamic"] == "int8-dynamic"
    # agreement comes only from a validate report (none here): never filled in, for PyTorch neither
    assert all(r["top1_agreement"] is None for r in report["results"])
    assert (tmp_path / "bench.svg").read_text().startswith("<svg")
    assert "| onnx-int8-dynamic |" in result.stdout

"""`vitgender bench`: every candidate measured, ratios against PyTorch and the measured roofs, schema 3.

No timing is asserted; what is asserted is that every number is measured in the run."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.util import find_spec

import pytest

pytest.importorskip("onnxruntime", reason="benchmarking artifacts needs the export extra")

from vitgender.exporters import main_export  # noqa: E402
from vitgender.machine import has_bf16_arithmetic  # noqa: E402


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
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vitgender.cli",
            "bench",
            "--model",
            str(tiny_model),
            "--artifacts",
            str(export),
            "--batch-sizes",
            "1,2",
            "--seconds",
            "0.1",
            "--roof-seconds",
            "0.05",
            "--json",
            str(out),
            "--plot",
            str(tmp_path / "bench.svg"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["schema"] == 3 and report["machine"]["cores"] >= 1 and report["threads"] >= 1
    roofs = report["roofs"]
    bf16 = has_bf16_arithmetic()
    assert set(roofs["roofs"]) == {"fp32", "fp16", "int8", *(["bf16"] if bf16 else [])}
    assert all(r["gops"] > 0 for r in roofs["roofs"].values())
    # the ViT-shaped GEMM is the tiny model's own MLP at the largest batch: batch x tokens, hidden, intermediate
    assert roofs["measured"]["vit_mlp"]["shape"] == [2 * 17, 32, 64]
    assert {"torch", "onnxruntime"} <= set(roofs["measured"]["square"]["int8"])
    # measured on worst-case operands, and what the flags predict: x86 without VNNI or AMX sums u8 x s8
    # pairs into saturating 16-bit lanes, and the header says so
    isa = set(report["machine"]["isa"])
    without_vnni = "avx2" in isa and not isa & {"avx512_vnni", "avx_vnni", "amx_int8"}
    assert roofs["int8_saturates"] is without_vnni
    assert ("saturates on this CPU" in result.stdout) is without_vnni
    names = {r["name"] for r in report["results"]}
    peers = set()
    if find_spec("openvino") is not None:  # the same files on the peer engine, fp32 also with the bf16 hint
        peers = {"onnx@openvino", "onnx-uint8-nhwc@openvino"}
        peers |= {"onnx@openvino:precision=bf16", "onnx-uint8-nhwc@openvino:precision=bf16"} if bf16 else set()
    assert names == {"torch-eager", "transformers-pipeline", "onnx", "onnx-int8-dynamic", "onnx-uint8-nhwc", *peers}
    assert {r["name"] for r in report["results"] if r["peer"]} == peers
    for row in report["results"]:
        assert row["images_per_s"] > 0 and row["p90_ms"] >= row["p50_ms"] > 0 and row["bytes"] > 0
        assert {"ratio_vs_torch", "peak_rss_mb", "load_seconds"} <= set(row)
        roof = report["roofs"]["roofs"][row["arithmetic"]]["gops"]
        assert row["pct_of_roof"] == pytest.approx(100 * row["gflops"] / roof, abs=0.1)
        assert 0 <= row["top1_agreement"] <= 1
        # where the time goes: the matrix products at the roof plus the rest is the timed ms per image
        split = row["breakdown"]
        assert split["ms_per_image"] == pytest.approx(1000 / row["images_per_s"], rel=1e-3, abs=1e-4)
        assert split["matmul_ms_at_roof"] + split["outside_roof_ms"] == pytest.approx(split["ms_per_image"], abs=2e-3)
        assert split["matmul_ms_at_roof"] == pytest.approx(
            split["ms_per_image"] * row["pct_of_roof"] / 100, rel=0.02, abs=0.01
        )
        profiled = row["batch_size"] == 2 and row["runtime"] != "pipeline"  # every runner here has a profiler
        assert (split["profiler"] is not None) == profiled and ("kinds_ms" in split) == profiled
        if profiled:  # the engine's own profile, scaled to the timed ms: its kinds add up to them
            assert split["profiler"] == row["runtime"].split(":")[0]
            assert sum(split["kinds_ms"].values()) == pytest.approx(split["ms_per_image"], rel=0.01)
            assert split["kinds_ms"]["matrix products"] > 0
    by_name = {r["name"]: r for r in report["results"]}  # what each really computes in
    assert by_name["transformers-pipeline"]["precision"] == "fp32"
    assert by_name["onnx-int8-dynamic"]["precision"] == "int8-dynamic"
    assert by_name["onnx-int8-dynamic"]["arithmetic"] == "int8" and by_name["onnx"]["arithmetic"] == "fp32"
    # agreement is computed in this run on the reference faces, PyTorch's own too
    assert by_name["torch-eager"]["top1_agreement"] == 1.0 and by_name["onnx"]["top1_agreement"] == 1.0
    assert report["reference"]["images"] == 50
    assert (tmp_path / "bench.svg").read_text().startswith("<svg")
    assert "| onnx-int8-dynamic |" in result.stdout and "measured roofs: fp32" in result.stdout
    assert "Where the time goes at batch 2" in result.stdout and "| onnx | fp32 |" in result.stdout
    if "onnx@openvino:precision=bf16" in peers:
        assert by_name["onnx@openvino:precision=bf16"]["arithmetic"] == "bf16"
        assert "| onnx@openvino:precision=bf16 (peer) |" in result.stdout


def test_arithmetic_is_what_the_candidate_computes_in():
    from vitgender.bench import arithmetic

    assert arithmetic("onnx", "int8") == arithmetic("tflite", "int8-dynamic") == "int8"
    assert arithmetic("pipeline", "fp16") == "fp16"  # PyTorch runs a float16 checkpoint in float16
    assert arithmetic("onnx", "fp16") == arithmetic("tflite", "fp16") == "fp32"  # upcast on x86
    assert arithmetic("openvino:precision=bf16", "bf16") == "bf16"


def test_tta_adds_a_flip_row_per_runner_but_not_for_the_pipeline(tiny_model, tmp_path):
    from vitgender.bench import candidates

    export = main_export(tiny_model, tmp_path / "art", "onnx")
    plain = candidates(tiny_model, export)
    flipped = candidates(tiny_model, export, tta="flip")
    extra = flipped[len(plain) :]
    assert flipped[: len(plain)] == plain
    assert [c["name"] for c in extra] == ["torch-eager+flip", "onnx+flip"] and all(c["tta"] == "flip" for c in extra)
    assert candidates(tiny_model, export, tta="none") == plain

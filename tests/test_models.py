"""The model family: one config per model type, tried on a tiny checkpoint of every claimed type."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import IMAGENET, TINY_TYPES, make_tiny, random_image

from vitgender.models import supported_model_types

REPO = Path(__file__).resolve().parent.parent
CLAIMED = ("vit", "deit", "dinov2", "dinov2_with_registers", "beit", "data2vec-vision", "vit_msn")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """variant -> checkpoint, built once per module (ImageNet normalisation for half of them)."""
    root = tmp_path_factory.mktemp("family")
    return {
        v: make_tiny(v, root / v, **({"mean": IMAGENET[0], "std": IMAGENET[1]} if i % 2 else {}))
        for i, v in enumerate(TINY_TYPES)
    }


def test_every_claimed_type_is_registered():
    assert set(CLAIMED) <= set(supported_model_types())


@pytest.mark.parametrize("variant", list(TINY_TYPES))
def test_loads_in_its_own_class_with_its_token_layout(tiny, variant):
    from vitgender.checkpoint import open_checkpoint

    ckpt = open_checkpoint(tiny[variant])
    model = ckpt.load_model()
    assert type(model).__name__ == TINY_TYPES[variant][1]  # a distilled DeiT is not loaded as the plain class
    extra = {"deit": 1, "deit-distilled": 1, "dinov2_with_registers": 2}.get(variant, 0)
    assert ckpt.architecture.prefix_tokens == 1 + extra
    assert ckpt.architecture.tokens(32, 32) == 16 + 1 + extra


@pytest.mark.parametrize("variant", list(TINY_TYPES))
def test_batch_free_rewrite_is_the_same_function(tiny, variant):
    """The export-time embedding rewrite changes the graph, not the numbers, and is undone afterwards;
    for DINOv2 it bakes positions interpolated from a 48 px table to the 32 px export."""
    import torch

    from vitgender.checkpoint import open_checkpoint

    ckpt = open_checkpoint(tiny[variant])
    model = ckpt.load_model()
    embeddings = getattr(model, model.base_model_prefix).embeddings
    pixels = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        expected = model(pixel_values=pixels).logits
        with ckpt.model.batch_free_embeddings(model, 32, 32) as applied:
            rewritten = model(pixel_values=pixels).logits
            one = model(pixel_values=pixels[:1]).logits
            assert "forward" in vars(embeddings)
    assert applied and "forward" not in vars(embeddings)
    assert torch.equal(rewritten, expected)  # the same additions in the same order: bit-exact
    assert torch.allclose(one, expected[:1], atol=1e-6)


@pytest.mark.parametrize("variant", list(TINY_TYPES))
def test_onnx_reads_no_shape_and_matches_pytorch(tiny, variant, tmp_path):
    """No Shape op left (so onnx2tf keeps the TF artifacts' batch free) and ONNX Runtime agrees with HF."""
    import onnxruntime as ort
    import torch

    from vitgender.checkpoint import open_checkpoint
    from vitgender.exporters.config import config_for
    from vitgender.exporters.onnx_export import export_onnx
    from vitgender.exporters.tensorflow import batch_free

    ckpt = open_checkpoint(tiny[variant])
    model = ckpt.load_model()
    path = export_onnx(model, config_for(ckpt.model_type), 32, 32, tmp_path / "model.onnx", 20)
    assert batch_free(path)
    pixels = np.random.default_rng(0).standard_normal((5, 3, 32, 32)).astype(np.float32)
    (logits,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"pixel_values": pixels})
    with torch.no_grad():
        expected = model(pixel_values=torch.from_numpy(pixels)).logits.numpy()
    assert np.abs(logits - expected).max() < 1e-4


@pytest.mark.parametrize("variant", list(TINY_TYPES))
def test_stage_paths_exist_and_torch_runner_exposes_them(tiny, variant):
    from vitgender.runtimes import can_localize, open_runner

    with open_runner("torch", tiny[variant]) as runner:
        assert can_localize(runner)
        stages = runner.stage_activations(np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32))
    assert next(iter(stages)) == "embeddings" and list(stages)[-1] == "logits"
    assert {"block 1 attention", "block 1 mlp", "block 1", "final layernorm"} <= set(stages)
    assert stages["logits"].shape == (2, 3)


@pytest.mark.parametrize("variant", list(TINY_TYPES))
def test_explain_reads_the_tokens_the_head_reads(tiny, variant):
    from vitgender.checkpoint import open_checkpoint
    from vitgender.explain.maps import _readout

    model = open_checkpoint(tiny[variant]).load_model()
    prefix = 1 + {"deit": 1, "deit-distilled": 1, "dinov2_with_registers": 2}.get(variant, 0)
    weights = _readout(model, 16 + prefix, 16).numpy()
    assert weights.sum() == pytest.approx(1.0)
    assert np.all(weights[1:prefix] == (0.5 if variant == "deit-distilled" else 0))  # registers are not read


def test_an_architecture_outside_the_family_is_refused_up_front(tmp_path):
    """One line naming the supported types, exit 2, before any model is loaded or anything written."""
    model = make_tiny("vit", tmp_path / "swin")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "model_type": "swin"}))
    (model / "SHA256SUMS").unlink()
    for argv in (
        ["export", str(model), "--formats", "all", "--out", str(tmp_path / "out")],
        ["classify", str(tmp_path), "--model", str(model)],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "vitgender.cli", *argv],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            timeout=300,
        )
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "'swin' is not supported" in lines[0], done.stderr
        assert all(t in lines[0] for t in CLAIMED)
    assert not (tmp_path / "out").exists()


FULL_EXPORT = ("dinov2_with_registers",)  # registers + positions baked at the export size: the most special type
# Two types per test, run side by side: every command here runs single-threaded (OMP_NUM_THREADS=1), so
# one chain left a 2-core CI machine half idle (about 4 min per type on an AVX2-only EPYC).
PAIRS = [tuple(list(TINY_TYPES)[i : i + 2]) for i in range(0, len(TINY_TYPES), 2)]


@pytest.mark.slow
@pytest.mark.parametrize("variants", PAIRS, ids="+".join)
def test_every_command_on_every_type(tiny, variants, tmp_path):
    """export (from another working directory, with a relative model path) -> validate --localize on a
    deliberately broken artifact -> classify -> explain, no traceback anywhere.

    What differs between model types is the ONNX graph (embedding rewrite), its TF conversion and the
    ExecuTorch program (model class, rewrite), so every type exports onnx, savedmodel, tflite and
    executorch; the quantized variants reuse those paths unchanged, so `--formats all` runs for
    FULL_EXPORT only (it costs ~4x the time: the int8 conversions dominate on a 2-core CI machine)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(variants)) as pool:
        runs = [pool.submit(_every_command, tiny[v], v, tmp_path / v) for v in variants]
        for run in runs:
            run.result()  # an assertion failed in either chain is raised here


def _every_command(checkpoint: Path, variant: str, tmp_path: Path) -> None:
    tmp_path.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        random_image(i).save(images / f"img{i}.jpg")
    work = tmp_path / "elsewhere"
    work.mkdir()
    os.symlink(checkpoint, work / "model")

    def cli(*argv, cwd=tmp_path):
        done = subprocess.run(
            [sys.executable, "-m", "vitgender.cli", *argv],
            capture_output=True,
            text=True,
            env=env,
            cwd=cwd,
            timeout=1200,
        )
        assert "Traceback" not in done.stderr, done.stderr
        return done

    out = tmp_path / "out"
    formats = "all" if variant in FULL_EXPORT else "onnx,savedmodel,tflite,executorch"
    done = cli("export", "./model", "--formats", formats, "--out", str(out), cwd=work)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert {"executorch", "savedmodel", "tflite"} <= {a["runtime"] for a in manifest["artifacts"]}
    for artifact in manifest["artifacts"]:
        if artifact["runtime"] in ("savedmodel", "tflite"):
            assert artifact["input"]["shape"][0] == "batch", artifact  # the TF artifacts take any batch

    from vitgender.runtimes import file_inventory

    for name, runtime in (("saved_model", "savedmodel"), ("model.pte", "executorch")):  # every runtime reads weights
        assert file_inventory(runtime, out / name)["weight_share_by_dtype"].get("float32", 0) > 0.9

    import onnx
    from onnx import numpy_helper

    broken = onnx.load(str(out / "model.onnx"))  # break the last block's MLP: localisation must find it
    fc1 = [init for init in broken.graph.initializer if list(init.dims) == [32, 64]][-1]  # hidden -> MLP width
    fc1.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(fc1) * 3, fc1.name))
    onnx.save(broken, str(out / "model.onnx"))
    from vitgender.manifest import artifact_sha256

    for entry in manifest["artifacts"]:  # resealed, as an exporter bug would leave it: parity must catch it
        entry["sha256"] = artifact_sha256(out / entry["path"])
    (out / "manifest.json").write_text(json.dumps(manifest))
    done = cli("validate", str(out), "--images", str(images), "--labels", "none", "--localize", "--only", "onnx,tflite")
    assert done.returncode == 1, done.stderr  # the broken one fails the gate; nothing crashes
    report = json.loads((out / "validation" / "report.json").read_text())
    found = {a["name"]: (a.get("localization") or {}).get("divergence") for a in report["artifacts"]}
    assert found["onnx"]["stage"].startswith("block 1"), found  # where the weights were broken
    for model in (str(checkpoint), str(out / "model.pte"), str(out / "saved_model")):
        done = cli("classify", str(images), "--model", model)
        assert done.returncode == 0, done.stderr
        assert len(done.stdout.strip().splitlines()) >= 4
    done = cli("explain", str(images), "--model", str(checkpoint), "--out", str(tmp_path / "explained"))
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("variant", list(TINY_TYPES))
def test_int8_plan_units_cover_every_matrix_product_but_the_head(tiny, variant):
    """ExecuTorch's `auto` plan keeps units float by module path: every type's linears and patch
    convolution belong to exactly one unit (embeddings, a block's attention or MLP), the head to none."""
    import torch

    from vitgender.checkpoint import open_checkpoint
    from vitgender.toolchains.executorch_worker import _units

    ckpt = open_checkpoint(tiny[variant])
    model = ckpt.load_model()
    units = _units(model)
    layers = model.config.num_hidden_layers
    expected = {"embeddings"} | {f"block {k} {part}" for k in range(layers) for part in ("attention", "mlp")}
    assert set(units) == expected, units
    heads = ckpt.model.heads(ckpt.hf_class)
    products = {
        name
        for name, layer in model.named_modules()
        if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)) and not name.startswith(heads)
    }
    assigned = [name for names in units.values() for name in names]
    assert sorted(assigned) == sorted(products)


@pytest.mark.slow
@pytest.mark.parametrize("variant", [v for v in TINY_TYPES if v != "vit"])  # vit: tests/test_quantize.py
def test_tflite_int8_plan_cuts_every_type_at_its_layernorms(tiny, variant, tmp_path):
    """Full-integer TFLite's `auto` plan finds its units in the converted graph by onnx2tf's LayerNorm
    names, not by module path: each type's embeddings (distillation token, registers, BEiT's relative
    positions) must still leave exactly embeddings + one attention and one MLP per block."""
    pytest.importorskip("tensorflow", reason="TFLite export needs the onnx extra")
    from vitgender.exporters import ExportOptions, main_export
    from vitgender.manifest import read_manifest

    options = ExportOptions(quant_preset="auto", quant_target="q90=0.000001", quant_max_float=1)
    out = main_export(tiny[variant], tmp_path / "out", "tflite-int8", options)
    plan = read_manifest(out)["artifacts"][0]["quantization"]
    assert "unplanned" not in plan, plan
    sensitivity = plan["sensitivity_q90_abs_logit_diff_alone"]
    assert set(sensitivity) == {"embeddings"} | {f"block {k} {p}" for k in (0, 1) for p in ("attention", "mlp")}
    assert plan["kept_float"] == [max(sensitivity, key=sensitivity.get)] and plan["fit"]["met"] is False


@pytest.mark.slow
@pytest.mark.parametrize("variant", [v for v in TINY_TYPES if v != "vit"])  # vit: tests/test_inductor.py
def test_pt2_int8_builds_and_runs_on_every_type(tiny, variant, tmp_path):
    """The PT2E program for Inductor goes through torch.export and the x86 quantizer with each type's
    embedding rewrite (distillation token, registers, BEiT's relative positions), and compiles here."""
    from vitgender.runtimes import file_inventory, inductor_runner, open_runner
    from vitgender.toolchains.side_env import executorch_python

    executorch_python()  # CI has the side environment: a missing one fails here with its reason
    if inductor_runner._compiler() is None:
        pytest.skip("no C++ compiler: torch.compile cannot run here")
    from vitgender.exporters import main_export
    from vitgender.manifest import read_manifest

    out = main_export(tiny[variant], tmp_path / "out", "pt2-int8")
    (entry,) = read_manifest(out)["artifacts"]
    assert entry["quantization"]["check"]["reached"]["images"] == 64  # measured at export, through the runner
    assert file_inventory("inductor", out / "model_int8.pt2")["weight_share_by_dtype"]["int8"] >= 0.5
    size = json.loads((out / "model_int8.pt2.json").read_text())["input"]["shape"][2:]
    pixels = np.random.default_rng(0).uniform(-1, 1, (3, 3, *size)).astype(np.float32)
    with open_runner("inductor", out / "model_int8.pt2") as runner:
        logits = runner.run(pixels)
    labels = json.loads((out / "model_int8.pt2.json").read_text())["labels"]
    assert logits.shape == (3, len(labels)) and np.isfinite(logits).all()


@pytest.mark.parametrize("masked", [False, True])
def test_export_attention_is_hf_eager_attention_as_3d_bmm(masked):
    """ExecuTorch programs export with `models.attention` (no expand copies outside XNNPACK): same arithmetic."""
    import torch
    from transformers.models.vit.modeling_vit import eager_attention_forward

    from vitgender.models.attention import bmm_attention, matmul_attention

    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(3, 4, 7, 8, generator=generator) for _ in range(3))
    mask = torch.rand(1, 4, 1, 1, generator=generator) if masked else None
    layer = torch.nn.Module().eval()
    expected = eager_attention_forward(layer, query, key, value, mask, scaling=8**-0.5)
    got = bmm_attention(layer, query, key, value, mask, scaling=8**-0.5)
    for a, b in zip(got, expected, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b)
    # pt2-int8's --int8-attention form: the same output, no probabilities (they would stop torchao's fusion)
    output, probabilities = matmul_attention(layer, query, key, value, mask, scaling=8**-0.5)
    torch.testing.assert_close(output, expected[0])
    assert probabilities is None

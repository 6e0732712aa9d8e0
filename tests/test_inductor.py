"""pt2-int8 and pt2-int8-dynamic: PT2E int8 programs (.pt2) built in the ExecuTorch environment, compiled on
load by Inductor."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="exporters need the onnx extra: pip install .[onnx]")

from vitgender.bench import candidates  # noqa: E402
from vitgender.errors import ToolchainError, UsageError  # noqa: E402
from vitgender.exporters import main_export  # noqa: E402
from vitgender.machine import has_bf16_arithmetic  # noqa: E402
from vitgender.manifest import read_manifest  # noqa: E402
from vitgender.precision import Precision  # noqa: E402
from vitgender.runtimes import (  # noqa: E402
    file_inventory,
    inductor_runner,
    open_runner,
    runtime_for,
    setting_runtimes,
)
from vitgender.toolchains.side_env import executorch_python  # noqa: E402
from vitgender.validators.parity import run_all  # noqa: E402

CLI = [sys.executable, "-m", "vitgender.cli"]


@pytest.fixture(scope="module")
def pt2(tiny_model, tmp_path_factory) -> Path:
    try:
        executorch_python()
    except ToolchainError as exc:
        pytest.skip(f"no ExecuTorch environment, where torchao's PT2E quantizer lives ({exc})")
    if inductor_runner._compiler() is None:
        pytest.skip("no C++ compiler: torch.compile cannot run here")
    return main_export(tiny_model, tmp_path_factory.mktemp("pt2") / "pt2", "pt2-int8,pt2-int8-dynamic")


def test_pt2_int8_is_an_int8_program_with_the_static_recipe(pt2):
    entry = {e["name"]: e for e in read_manifest(pt2)["artifacts"]}["pt2-int8"]
    assert entry["path"] == "model_int8.pt2" and entry["runtime"] == "inductor" and entry["precision"] == "int8"
    quantization = entry["quantization"]
    assert "X86InductorQuantizer" in quantization["scheme"]
    assert quantization["scale_migration"]["alpha"] == 0.5  # ORT static's recipe: same arithmetic
    assert quantization["float_modules"] == ["classifier"]
    assert (
        quantization["check"]["reached"]["images"] == 64
    )  # measured against PyTorch at export, like every calibrated int8
    assert runtime_for(pt2 / "model_int8.pt2") == "inductor"
    inventory = file_inventory("inductor", pt2 / "model_int8.pt2")
    # int8 weights only: the float weights convert_pt2e leaves behind are not saved
    assert inventory["weight_share_by_dtype"]["int8"] >= 0.6, inventory["weight_bytes_by_dtype"]
    assert inventory["quantization_ops"]["quantized_decomposed.quantize_per_tensor.default"] >= 1


def test_pt2_int8_dynamic_measures_ranges_per_call_and_says_its_answers_depend_on_the_batch(pt2, tiny_model):
    entry = {e["name"]: e for e in read_manifest(pt2)["artifacts"]}["pt2-int8-dynamic"]
    assert entry["path"] == "model_int8_dynamic.pt2" and entry["precision"] == "int8-dynamic"
    assert "dynamic" in entry["quantization"]["scheme"] and entry["quantization"]["scale_migration"]["alpha"] == 0.5
    ops = file_inventory("inductor", pt2 / "model_int8_dynamic.pt2")["quantization_ops"]
    assert ops["quantized_decomposed.choose_qparams.tensor"] >= 1  # the range is computed in the graph
    pixels = np.random.default_rng(1).uniform(-1, 1, (8, 3, 32, 32)).astype(np.float32)
    with (
        open_runner("inductor", pt2 / "model_int8_dynamic.pt2") as runner,
        open_runner("torch", tiny_model) as torch_runner,
    ):
        # one range per call over the whole batch tensor, as onnxruntime's dynamic int8: serve warns
        assert runner.info.batch_invariant is False
        logits, reference = runner.run(pixels), torch_runner.run(pixels)
    assert np.abs(logits - reference).max() < 0.5 and np.abs(logits - reference).max() > 0
    assert np.ptp(logits, axis=0).min() > 1e-3  # answers differ per image (weights quantized with their own scales)


def test_runner_answers_any_batch_size_the_same_as_alone(pt2, tiny_model):
    """Batches are padded to a few compiled sizes and split above 32: an image's answer must not depend
    on which (the padding rows never mix with it)."""
    rng = np.random.default_rng(0)
    pixels = rng.uniform(-1, 1, (40, 3, 32, 32)).astype(np.float32)
    with open_runner("inductor", pt2 / "model_int8.pt2") as runner, open_runner("torch", tiny_model) as torch_runner:
        together = runner.run(pixels)
        alone = np.concatenate([runner.run(pixels[i : i + 1]) for i in range(5)])
        reference = torch_runner.run(pixels)
    assert together.shape == (40, 2) and np.isfinite(together).all()
    np.testing.assert_allclose(together[:5], alone, atol=1e-4)
    # int8 arithmetic: close to PyTorch, not equal (a broken program would be off by whole logits)
    assert np.abs(together - reference).max() < 0.5
    assert np.abs(together - reference).max() > 0


def test_warm_up_compiles_every_size_a_batch_can_take_before_any_request(pt2):
    from torch._dynamo.utils import counters

    with open_runner("inductor", pt2 / "model_int8.pt2") as runner:
        before = counters["stats"]["unique_graphs"]
        runner.warm_up(3)  # batches of 1-3 images use the compiled sizes 1, 2 and 4
        warmed = counters["stats"]["unique_graphs"]
        for batch in (1, 2, 3):
            runner.run(np.zeros((batch, 3, 32, 32), np.float32))
        assert warmed - before == 3 and counters["stats"]["unique_graphs"] == warmed


def test_validate_gates_pt2_with_a_quantization_proof(pt2):
    result = subprocess.run([*CLI, "validate", str(pt2)], capture_output=True, text=True, timeout=900)
    assert result.returncode in (0, 1), result.stdout[-3000:] + result.stderr[-2000:]
    report = json.loads((pt2 / "validation" / "report.json").read_text())
    assert {a["name"] for a in report["artifacts"]} == {"pt2-int8", "pt2-int8-dynamic"}
    for artifact in report["artifacts"]:
        assert {c["name"]: c["passed"] for c in artifact["checks"]}["quantization_proof"], artifact["name"]


def test_a_file_that_is_not_a_program_is_refused_in_one_line(tmp_path):
    fake = tmp_path / "model.pt2"
    fake.write_text("not a zip")
    with pytest.raises(UsageError, match="not a torch.export program"):
        open_runner("inductor", fake)
    done = subprocess.run([*CLI, "classify", str(tmp_path), "--model", str(fake)], capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr


def test_no_cpp_compiler_is_a_toolchain_error(pt2, monkeypatch):
    monkeypatch.setattr(inductor_runner, "_compiler", lambda: None)
    with pytest.raises(ToolchainError, match="C\\+\\+ compiler"):
        open_runner("inductor", pt2 / "model_int8.pt2")


def test_serve_compiles_before_it_says_ready(pt2):
    """Every batch size the batcher can form is compiled while /health/ready says not ready; then requests
    compile nothing."""
    pytest.importorskip("fastapi", reason="the server needs the serve extra")
    import base64

    from fastapi.testclient import TestClient
    from torch._dynamo.utils import counters

    from vitgender.serving.app import ServeSettings, create_app

    before = counters["stats"]["unique_graphs"]
    face = next((Path(__file__).parent.parent / "vitgender" / "reference" / "utkface-val-50").glob("*.jpg"))
    settings = ServeSettings(model=str(pt2 / "model_int8.pt2"), runtime="inductor", max_batch_size=3)
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 300
        while (ready := client.get("/health/ready")).status_code == 503 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ready.status_code == 200, ready.text
        warmed = counters["stats"]["unique_graphs"]
        served = client.post("/", json={"inputs": base64.b64encode(face.read_bytes()).decode()}).json()
    assert warmed - before == 3  # sizes 1, 2 and 4 (3 images padded to 4)
    assert counters["stats"]["unique_graphs"] == warmed
    assert {p["label"] for p in served} == {"female", "male"}


@pytest.mark.skipif(not has_bf16_arithmetic(), reason="this CPU has no avx512_bf16 / amx_bf16")
def test_bf16_setting_runs_the_float_parts_in_bf16_and_stays_an_int8_artifact(pt2, tiny_model):
    """`inductor:precision=bf16` (int8-mixed-bf16): the linears stay int8, so the info (and the gate's
    budget) is the int8 artifact's; the float parts in bf16 change the answers by bf16 rounding only."""
    pixels = np.random.default_rng(2).uniform(-1, 1, (6, 3, 32, 32)).astype(np.float32)
    with (
        open_runner("inductor:precision=bf16", pt2 / "model_int8.pt2") as bf16,
        open_runner("inductor", pt2 / "model_int8.pt2") as f32,
        open_runner("torch", tiny_model) as torch_runner,
    ):
        assert bf16.info.precision is Precision.INT8 and bf16.info.computes_in is Precision.INT8
        logits, plain, reference = bf16.run(pixels), f32.run(pixels), torch_runner.run(pixels)
    assert logits.dtype == np.float32 and np.isfinite(logits).all()
    assert not np.array_equal(logits, plain)  # really compiled in bf16, not the f32 program again
    assert np.abs(logits - reference).max() < 0.5
    assert setting_runtimes(pt2 / "model_int8.pt2", Precision.INT8) == ["inductor:precision=bf16"]
    names = [c["name"] for c in candidates(tiny_model, pt2, peers=False)]
    assert "pt2-int8@inductor:precision=bf16" in names and "pt2-int8-dynamic@inductor:precision=bf16" in names


def test_bf16_setting_is_refused_in_one_line_where_the_cpu_has_no_bf16(pt2, tiny_model, monkeypatch):
    import vitgender.machine

    fake = {"cpu": "fake", "cores": 1, "isa": ["avx2", "fma", "avx512f", "avx512_vnni"], "mhz": None}
    monkeypatch.setattr(vitgender.machine, "machine", lambda: fake)
    with pytest.raises(UsageError, match="no bf16 arithmetic"):
        open_runner("inductor:precision=bf16", pt2 / "model_int8.pt2")
    with pytest.raises(UsageError, match="takes precision=f32 or bf16"):
        open_runner("inductor:precision=fp16", pt2 / "model_int8.pt2")
    assert setting_runtimes(pt2 / "model_int8.pt2", Precision.INT8) == []  # bench offers no bf16 row here
    assert all("@" not in c["name"] for c in candidates(tiny_model, pt2, peers=False))
    # validate refuses it before the reference pass over the images, not after
    seen: list[str] = []
    with pytest.raises(UsageError, match="no bf16 arithmetic"):
        run_all(pt2, model=str(tiny_model), runtime="inductor:precision=bf16", on_artifact=seen.append)
    with pytest.raises(UsageError, match="does not take speed"):
        run_all(pt2, model=str(tiny_model), runtime="inductor:speed=max", on_artifact=seen.append)
    assert seen == []


def test_bench_breakdown_sees_onednn_kernels_and_the_compiled_loops(pt2):
    from vitgender.runtimes.profiling import kind_shares

    pixels = np.random.default_rng(3).uniform(-1, 1, (4, 3, 32, 32)).astype(np.float32)
    with open_runner("inductor", pt2 / "model_int8.pt2") as runner:
        shares = kind_shares(runner.op_times(pixels, 2))
    assert shares["matrix products"] > 0 and shares["compiled loops"] > 0, shares
    assert sum(shares.values()) == pytest.approx(1.0)


@pytest.fixture(scope="module")
def pt2_int8_attention(pt2, tiny_model) -> tuple[Path, list[str]]:
    from vitgender.exporters import ExportOptions

    warnings: list[str] = []
    options = ExportOptions(int8_attention=True)
    return main_export(tiny_model, pt2.parent / "attention", "pt2-int8", options, on_warning=warnings.append), warnings


def test_int8_attention_runs_as_one_fused_kernel_per_block_close_to_pytorch(pt2_int8_attention, pt2, tiny_model):
    """`export --int8-attention`: the attention's products are quantized in the program, and where torchao
    has a kernel for this CPU Inductor runs each block's attention as it (runtimes/int8_attention.py);
    elsewhere the export says the attention runs unfused here (torchao 0.18 on an AVX2-only CPU)."""
    from torch._dynamo.utils import counters

    from vitgender.runtimes import int8_attention

    pt2_int8_attention, warnings = pt2_int8_attention
    unfused = [w for w in warnings if w.startswith("--int8-attention:")]
    assert len(unfused) == (0 if int8_attention.available() else 1), warnings
    entry = read_manifest(pt2_int8_attention)["artifacts"][0]
    assert entry["quantization"]["attention"].startswith("int8")
    assert read_manifest(pt2)["artifacts"][0]["quantization"]["attention"] == "float"  # the default
    ops = file_inventory("inductor", pt2_int8_attention / "model_int8.pt2")["quantization_ops"]
    plain = file_inventory("inductor", pt2 / "model_int8.pt2")["quantization_ops"]
    quantize = "quantized_decomposed.quantize_per_tensor.default"
    blocks = json.loads((tiny_model / "config.json").read_text())["num_hidden_layers"]
    assert ops[quantize] - plain[quantize] == 4 * blocks  # q, k, v and the probabilities of every block
    pixels = np.random.default_rng(4).uniform(-1, 1, (5, 3, 32, 32)).astype(np.float32)
    counters.clear()
    with (
        open_runner("inductor", pt2_int8_attention / "model_int8.pt2") as runner,
        open_runner("torch", tiny_model) as torch_runner,
    ):
        logits, reference = runner.run(pixels), torch_runner.run(pixels)
        alone = runner.run(pixels[:1])
    if int8_attention.available():
        assert counters["inductor"]["qsdpa_fuse_attention"] == 2 * blocks  # two compiled sizes (8 and 1)
    assert np.abs(logits - reference).max() < 0.5 and np.abs(logits - reference).max() > 0
    np.testing.assert_allclose(logits[:1], alone, atol=1e-4)  # still batch-invariant: static ranges


def test_int8_attention_is_refused_without_pt2_int8(tmp_path):
    done = subprocess.run(
        [*CLI, "export", "--formats", "onnx", "--int8-attention", "-o", str(tmp_path / "x")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "--int8-attention: only with pt2-int8" in done.stderr, done.stderr

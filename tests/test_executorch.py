"""ExecuTorch: .pte export (fp32 and PT2E int8) and its runner, across the environment boundary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="exporters need the onnx extra: pip install .[onnx]")

from vitgender.errors import ExitCode, ToolchainError  # noqa: E402
from vitgender.exporters import main_export  # noqa: E402
from vitgender.manifest import read_manifest  # noqa: E402
from vitgender.runtimes import open_runner, runtime_for  # noqa: E402
from vitgender.toolchains.side_env import EXECUTORCH_ENV, executorch_python  # noqa: E402

CLI = [sys.executable, "-m", "vitgender.cli"]


@pytest.fixture(scope="module")
def pte(tiny_model, tmp_path_factory) -> Path:
    try:
        executorch_python()
    except ToolchainError as exc:  # what executorch_python raises when the side environment is missing
        pytest.skip(f"no ExecuTorch environment ({exc}); scripts/setup.sh creates it")
    return main_export(
        tiny_model, tmp_path_factory.mktemp("et") / "et", "executorch,executorch-int8-dynamic,executorch-int8"
    )


def test_pte_has_a_dynamic_batch_and_matches_torch(pte, tiny_model):
    entries = {e["name"]: e for e in read_manifest(pte)["artifacts"]}
    assert entries["executorch"]["path"] == "model.pte" and entries["executorch-int8"]["precision"] == "int8"
    assert entries["executorch-int8"]["quantization"]["delegates"] >= 1
    # ExecuTorch's measured recipe: the head left to float kernels, no scale migration
    assert entries["executorch-int8"]["quantization"]["float_modules"] == ["classifier"]
    assert entries["executorch-int8"]["quantization"]["scale_migration"] == "off"
    # the dynamic program's recipe: migrated scales (alpha 0.5) and the float head
    dynamic = entries["executorch-int8-dynamic"]
    assert dynamic["precision"] == "int8-dynamic" and dynamic["path"] == "model_int8_dynamic.pte"
    assert dynamic["quantization"]["scale_migration"]["alpha"] == 0.5
    assert dynamic["quantization"]["float_modules"] == ["classifier"]
    assert "dynamic per-row" in dynamic["quantization"]["scheme"]
    assert runtime_for(pte / "model.pte") == "executorch"
    torch_runner = open_runner("torch", tiny_model)
    runner = open_runner("executorch", pte / "model.pte")
    rng = np.random.default_rng(0)
    for batch in (1, 7, 32, 40):  # 40 > the exported maximum: split into 32 + 8
        pixels = rng.uniform(-1, 1, (batch, 3, 32, 32)).astype(np.float32)
        logits = runner.run(pixels)
        assert logits.shape == (batch, 2) and np.abs(logits - torch_runner.run(pixels)).max() < 1e-4


def test_validate_judges_pte_with_a_quantization_proof(pte):
    result = subprocess.run([*CLI, "validate", str(pte)], capture_output=True, text=True, timeout=600)
    # The tiny random model's int8 program may fail its budgets (on 400 faces it agrees with PyTorch on
    # ~91%: damaged, which the gate should say); what is under test here is the proof read from the .pte.
    assert result.returncode in (0, 1), result.stdout[-3000:] + result.stderr[-2000:]
    report = json.loads((pte / "validation" / "report.json").read_text())
    by_name = {a["name"]: a for a in report["artifacts"]}
    assert by_name["executorch"]["passed"], by_name["executorch"]["failures"]
    int8 = by_name["executorch-int8"]
    assert {c["name"]: c["passed"] for c in int8["checks"]}["quantization_proof"]
    # weights read from the XNNPACK graphs inside the .pte: mostly 8-bit for int8, float32 for fp32
    assert int8["inventory"]["weight_share_by_dtype"].get("int8", 0) >= 0.5
    assert by_name["executorch"]["inventory"]["weight_share_by_dtype"].get("float32", 0) >= 0.9
    assert by_name["executorch-int8-dynamic"]["inventory"]["weight_share_by_dtype"].get("int8", 0) >= 0.5
    # delegation coverage: the XNNPACK graphs, and what the program runs itself between them
    for name in ("executorch", "executorch-int8-dynamic", "executorch-int8"):
        inventory = by_name[name]["inventory"]
        assert inventory["delegates"] >= 1
        assert all(isinstance(op, str) and n >= 1 for op, n in inventory["outside_delegates"].items())
        # attention exported as 3-D bmm (vitgender.models.attention): no portable expand copies between graphs
        assert "aten::expand_copy" not in inventory["outside_delegates"], inventory["outside_delegates"]
    # ExecuTorch 1.4's XNNPACK partitioner takes no LayerNorm: each runs outside, splitting the graph
    assert int8["inventory"]["outside_delegates"].get("aten::native_layer_norm", 0) >= 1
    assert {c["name"] for c in int8["checks"]} >= {"quantization_proof", "batch_max_rel_logit_diff"}


def test_dynamic_int8_program_answers_each_row_alike_in_any_batch(pte):
    """XNNPACK quantizes each row of a linear's input on its own, so an image's logits do not
    depend on what else is in its batch (unlike ORT's per-tensor dynamic int8)."""
    rng = np.random.default_rng(1)
    pixels = rng.uniform(-1, 1, (12, 3, 32, 32)).astype(np.float32)
    pixels[5:] *= 3  # rows of another range in the same batch: a per-tensor scale would change rows 0-4
    with open_runner("executorch", pte / "model_int8_dynamic.pte") as runner:
        together = runner.run(pixels)
        alone = np.concatenate([runner.run(pixels[i : i + 1]) for i in range(len(pixels))])
    assert np.abs(together - alone).max() < 1e-5


def test_classify_runs_a_pte(pte, image_dir):
    result = subprocess.run(
        [*CLI, "classify", str(image_dir), "--model", str(pte / "model.pte")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 6 and all(line["predictions"][0]["label"] in ("female", "male") for line in lines)


def test_missing_executorch_environment_is_a_toolchain_error(tiny_model, tmp_path):
    env = {**__import__("os").environ, EXECUTORCH_ENV: str(tmp_path / "nowhere" / "python")}
    result = subprocess.run(
        [*CLI, "export", str(tiny_model), "--out", str(tmp_path / "x"), "--formats", "executorch"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == ExitCode.TOOLCHAIN
    assert "no ExecuTorch environment" in result.stderr and "scripts/setup.sh" in result.stderr
    assert not (tmp_path / "x").exists()


def test_a_file_that_is_not_a_program_is_a_usage_error(tmp_path):
    from vitgender.errors import UsageError

    fake = tmp_path / "model.pte"
    fake.write_bytes(b"\0" * 64)
    with pytest.raises(UsageError, match="not an ExecuTorch program"):
        open_runner("executorch", fake)


@pytest.mark.parametrize(
    ("artifact", "file", "method"),
    [
        ("executorch-int8-dynamic", "model_int8_dynamic.pte", "simulated"),
        ("executorch-int8", "model_int8.pte", "PT2E graph run in PyTorch"),
    ],
)
def test_auto_plans_each_int8_program_and_keeps_its_units_float(pte, tiny_model, tmp_path, artifact, file, method):
    """`--quant-preset auto` ranks each int8 program's units on the calibration images (the dynamic
    one by simulating its arithmetic, the static one by running its calibrated PT2E graph) and keeps
    the most sensitive float in the real program: fewer int8 weight bytes than the unplanned one."""
    from vitgender.exporters import ExportOptions
    from vitgender.runtimes import file_inventory

    options = ExportOptions(quant_preset="auto", quant_target="q90=0.000001", quant_max_float=2)  # unreachable
    out = main_export(tiny_model, tmp_path / "auto", artifact, options)
    entry = read_manifest(out)["artifacts"][0]
    plan = entry["quantization"]["plan"]
    sensitivity = plan["sensitivity_q90_abs_logit_diff_alone"]
    assert set(sensitivity) == {"embeddings", "block 0 attention", "block 0 mlp", "block 1 attention", "block 1 mlp"}
    assert plan["kept_float"] == sorted(sensitivity, key=sensitivity.get, reverse=True)[:2]
    assert plan["fit"]["met"] is False and plan["fit"]["max_float"] == 2
    assert plan["fit"]["method"].startswith(method)
    assert entry["quantization"]["check"]["met"] is False  # the real program, measured at export, says so too

    def int8_share(path: Path) -> float:
        return file_inventory("executorch", path)["weight_share_by_dtype"].get("int8", 0)

    assert int8_share(out / file) < int8_share(pte / file) - 0.05

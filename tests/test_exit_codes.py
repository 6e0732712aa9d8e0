"""One test per documented exit code: 0 ok, 1 gate failed, 2 usage/input error, 3 tool chain failed.

Each runs the real `vitgender` entry point and checks the single stderr line (no traceback).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vitgender.errors import ExitCode

CLI = [sys.executable, "-m", "vitgender.cli"]
EXAMPLE = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.jpg"))[0]


def run_cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=600, **kwargs)


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """The entry point in this process, so a test can break one step with monkeypatch."""
    from vitgender.cli import main

    monkeypatch.setattr(sys, "argv", ["vitgender", *args])
    with pytest.raises(SystemExit) as info:
        main()
    return info.value.code, capsys.readouterr().err


def test_exit_0_success(tiny_model):
    result = run_cli("classify", str(EXAMPLE), "--model", str(tiny_model))
    assert result.returncode == ExitCode.OK and result.stderr == ""
    assert json.loads(result.stdout)["image"] == str(EXAMPLE)


def test_exit_1_only_for_a_failed_gate(tiny_model, tmp_path):
    pytest.importorskip("onnxruntime", reason="validate needs the export extra")
    from vitgender.exporters import main_export

    export = main_export(tiny_model, tmp_path / "art", "onnx")
    budget = tmp_path / "budget.toml"
    budget.write_text("[fp32]\nmax_abs_logit_diff = 1e-30\n")  # no real conversion is this exact
    result = run_cli("validate", str(export), "--budget", str(budget), "--labels", "none")
    assert result.returncode == ExitCode.GATE_FAILED, result.stderr[-1000:]
    assert "max_abs_logit_diff" in result.stdout and "Traceback" not in result.stderr
    assert run_cli("validate", str(export), "--labels", "none").returncode == ExitCode.OK


@pytest.mark.parametrize(
    "args",
    [
        ["classify", "missing.jpg"],  # an unreadable input
        ["export", "no/such/model"],  # a missing checkpoint
        ["classify", str(EXAMPLE), "--batch-size", "zero"],  # a bad flag (click's own usage error)
        ["validate", "."],  # not an export directory
        ["bench", "--batch-sizes", "a,b"],
    ],
)
def test_exit_2_usage_or_input(args, tiny_model):
    result = run_cli(*args, "--model", str(tiny_model)) if args[0] == "classify" else run_cli(*args)
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert "Traceback" not in result.stderr


def test_exit_3_when_a_converter_crashes(tiny_model, tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnxruntime", reason="export needs the export extra")
    from vitgender.exporters import quantize

    def crash(*args, **kwargs):
        raise RuntimeError("simulated converter crash")

    monkeypatch.setattr(quantize, "to_int8_dynamic", crash)
    code, err = run_main(
        monkeypatch, capsys, "export", str(tiny_model), "--formats", "onnx-int8-dynamic", "--out", str(tmp_path / "out")
    )
    assert code == ExitCode.TOOLCHAIN
    errors = [line for line in err.splitlines() if not line.startswith("[export]")]  # progress lines aside
    assert errors == ["vitgender: onnx-int8-dynamic: step failed: RuntimeError: simulated converter crash"]
    assert not (tmp_path / "out").exists()


def test_bench_worker_crash_is_exit_3_and_a_refused_artifact_exit_2(tiny_model, tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnxruntime", reason="bench of artifacts needs the export extra")
    from vitgender.exporters import main_export
    from vitgender.manifest import artifact_sha256

    export = main_export(tiny_model, tmp_path / "art", "onnx")
    (export / "model.onnx").write_bytes(b"not a model")  # resealed: an exporter bug, not tampering
    manifest = json.loads((export / "manifest.json").read_text())
    manifest["artifacts"][0]["sha256"] = artifact_sha256(export / "model.onnx")
    (export / "manifest.json").write_text(json.dumps(manifest))
    code, err = run_main(
        monkeypatch,
        capsys,
        "bench",
        "--model",
        str(tiny_model),
        "--artifacts",
        str(export),
        "--batch-sizes",
        "1",
        "--seconds",
        "0.1",
    )
    assert code == ExitCode.USAGE and "onnxruntime cannot load it" in err

    from vitgender.toolchains import processes

    segfaulting = tmp_path / "python"  # a worker that dies of SIGSEGV, as a broken native runtime would
    segfaulting.write_text("#!/bin/sh\nkill -SEGV $$\n")
    segfaulting.chmod(0o755)
    monkeypatch.setattr(processes.sys, "executable", str(segfaulting))
    code, err = run_main(
        monkeypatch, capsys, "bench", "--model", str(tiny_model), "--batch-sizes", "1", "--seconds", "0.1"
    )
    assert code == ExitCode.TOOLCHAIN and "benchmark worker failed" in err


def test_help_works_without_linux_only_apis():
    """`--help` must not touch os.sched_getaffinity (absent on macOS) at import time."""
    code = (
        "import os; del os.sched_getaffinity; import sys; sys.argv = ['vitgender', 'bench', '--help']; "
        "from vitgender.cli import main; main()"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--threads" in result.stdout, result.stderr

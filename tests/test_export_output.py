"""What an export leaves on disk: merges instead of silent deletes, nothing after a kill or a full disk."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime", reason="exporters need the onnx extra: pip install .[onnx]")

from vitgender.errors import ExitCode  # noqa: E402

CLI = [sys.executable, "-m", "vitgender.cli"]


def export(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "export", *args], capture_output=True, text=True, timeout=600, **kwargs)


def names(folder: Path) -> list[str]:
    return [a["name"] for a in json.loads((folder / "manifest.json").read_text())["artifacts"]]


def test_second_export_merges_and_other_content_is_refused(tiny_model, tmp_path):
    out = tmp_path / "out"
    assert export(str(tiny_model), "--out", str(out), "--formats", "onnx-int8-dynamic").returncode == 0
    (out / "validation").mkdir()
    (out / "validation" / "report.md").write_text("kept")
    second = export(str(tiny_model), "--out", str(out), "--formats", "web-onnx,onnx-int8-dynamic")
    assert second.returncode == 0, second.stderr
    assert names(out) == ["onnx-int8-dynamic", "web-onnx"]  # merged, in registry order
    assert (out / "model_int8_dynamic.onnx").is_file() and (out / "web" / "onnx" / "model.onnx").is_file()
    assert (out / "validation" / "report.md").read_text() == "kept"
    assert oct(out.stat().st_mode & 0o777) == oct(0o777 & ~_umask())  # the user's umask, not mkdtemp's 0700

    other = tmp_path / "other-model"
    subprocess.run(["cp", "-r", str(tiny_model), str(other)], check=True)
    refused = export(str(other), "--out", str(out), "--formats", "onnx")
    assert refused.returncode == ExitCode.USAGE and "--overwrite" in refused.stderr
    assert names(out) == ["onnx-int8-dynamic", "web-onnx"]
    replaced = export(str(other), "--out", str(out), "--formats", "onnx", "--overwrite")
    assert replaced.returncode == 0 and names(out) == ["onnx"] and not (out / "validation").exists()

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not an export")
    assert export(str(tiny_model), "--out", str(tmp_path / "mine")).returncode == ExitCode.USAGE
    forced = export(str(tiny_model), "--out", str(tmp_path / "mine"), "--overwrite")  # never deletes a user's folder
    assert forced.returncode == ExitCode.USAGE and "not empty" in forced.stderr
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name or ".old-" in p.name]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _children(pid: int) -> list[int]:
    result = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in result.stdout.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] if Path(f"/proc/{pid}").exists() else "X"
    return state != "Z"


def test_killed_export_takes_its_converter_with_it_and_the_next_export_sweeps(tiny_model, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [*CLI, "export", str(tiny_model), "--out", str(out), "--formats", "tflite"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline, children = time.time() + 180, []
    while not children and time.time() < deadline and proc.poll() is None:
        children = [
            c
            for c in _children(proc.pid)
            if "vitgender.exporters.tensorflow" in Path(f"/proc/{c}/cmdline").read_text(errors="replace")
        ]
        time.sleep(0.2)
    assert children, "the TensorFlow converter child never started"
    os.kill(proc.pid, signal.SIGKILL)  # while the child is still importing TensorFlow (seconds of work left)
    proc.wait()
    deadline = time.time() + 2  # the kernel kills it at once; without that it would run on for seconds
    while any(_alive(c) for c in children) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(_alive(c) for c in children), "the converter outlived the killed export"
    stale = list(tmp_path.glob(".out.partial-*"))
    assert stale and not out.exists()  # nothing published; the scratch folder is what a kill leaves

    elsewhere = export(str(tiny_model), "--out", str(tmp_path / "another"), "--formats", "onnx")  # same parent
    assert elsewhere.returncode == 0, elsewhere.stderr
    assert "left by a vitgender run that was killed" in elsewhere.stderr and not any(p.exists() for p in stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["another"]


def test_disk_full_is_a_clear_error_and_leaves_nothing(tiny_model, tmp_path):
    def small_disk() -> None:  # every file this process writes is capped at 16 KiB: the ONNX write fails
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, 16 * 1024))

    out = tmp_path / "out"
    result = subprocess.run(
        [*CLI, "export", str(tiny_model), "--out", str(out), "--formats", "onnx"],
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=small_disk,
    )
    assert result.returncode == ExitCode.TOOLCHAIN, result.stderr[-2000:]
    assert "out of disk space" in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []

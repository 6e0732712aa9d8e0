"""One policy for output folders and one protocol for child processes, checked without a model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vitgender.errors import ExitCode, ToolchainError, UsageError
from vitgender.output_folders import MARKER, OWNER, atomic_dir, atomic_file, sweep_stale, written_by
from vitgender.toolchains.processes import child_env, run_job


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _stale_scratch(parent: Path, name: str) -> Path:
    """What a killed run leaves: a scratch folder whose owner is gone."""
    scratch = parent / f".{name}.partial-abc123"
    scratch.mkdir(parents=True)
    (scratch / "half.bin").write_bytes(b"x")
    (scratch / OWNER).write_text(json.dumps({"pid": _dead_pid(), "started": None}))
    return scratch


def test_a_new_folder_is_written_whole_and_marked(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out, "explain") as scratch:
        (scratch / "index.html").write_text("page")
        assert not out.exists() and scratch.name.startswith(".out.partial-")
    assert (out / "index.html").read_text() == "page" and written_by(out) == "explain"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_with_user_files_is_refused_even_with_overwrite(tmp_path, overwrite):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    ran = []
    with pytest.raises(UsageError, match="not empty") as info, atomic_dir(out, "train", overwrite=overwrite):
        ran.append(True)  # never reached: the check comes before any work
    assert info.value.exit_code == ExitCode.USAGE and ran == []
    assert (out / "notes.txt").read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["notes"]


def test_own_output_needs_overwrite_unless_the_command_updates_it(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out, "explain") as scratch:
        (scratch / "a.png").write_bytes(b"1")
    with pytest.raises(UsageError, match="--overwrite replaces it"), atomic_dir(out, "explain"):
        pass
    with pytest.raises(UsageError, match="not an earlier 'vitgender train'"), atomic_dir(out, "train", updates=True):
        pass  # another command's output is not this command's to replace
    with atomic_dir(out, "explain", overwrite=True) as scratch:
        (scratch / "b.png").write_bytes(b"2")
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "b.png"]
    legacy = tmp_path / "legacy"  # written before the marker existed: the command's recogniser decides
    legacy.mkdir()
    (legacy / "config.json").write_text("{}")
    with atomic_dir(legacy, "train", recognise=lambda p: (p / "config.json").is_file(), updates=True) as scratch:
        (scratch / "config.json").write_text('{"new": 1}')
    assert json.loads((legacy / "config.json").read_text()) == {"new": 1}


def test_a_failure_midway_leaves_the_old_folder_and_no_scratch(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out, "explain") as scratch:
        (scratch / "old.png").write_bytes(b"1")
    with pytest.raises(RuntimeError), atomic_dir(out, "explain", overwrite=True) as scratch:
        (scratch / "new.png").write_bytes(b"2")
        raise RuntimeError("crash")
    with pytest.raises(UsageError, match="cannot write"), atomic_dir(out, "explain", overwrite=True):
        raise OSError(28, "No space left on device")
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "old.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_symlink_or_a_file_is_not_a_folder_to_write(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "file").write_text("x")
    for target in ("link", "file"):
        with pytest.raises(UsageError, match="not a folder"), atomic_dir(tmp_path / target, "export"):
            pass


def test_killed_runs_scratch_folders_are_swept_from_the_whole_parent(tmp_path):
    stale = [_stale_scratch(tmp_path, "other-export"), _stale_scratch(tmp_path, "explained")]
    live = tmp_path / ".busy.partial-xyz"  # a run still writing (this process) is left alone
    live.mkdir()
    (live / OWNER).write_text(json.dumps({"pid": os.getpid(), "started": None}))
    unknown = tmp_path / ".someone.partial-else"  # no owner record: not ours to judge
    unknown.mkdir()
    with pytest.warns(UserWarning, match="killed") as warned, atomic_dir(tmp_path / "new", "explain") as scratch:
        (scratch / "x").write_text("x")
    assert len(warned) == 2 and not any(p.exists() for p in stale)
    assert live.is_dir() and unknown.is_dir() and (tmp_path / "new" / "x").is_file()
    assert sweep_stale(tmp_path) == []


def test_atomic_file_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "report.html"
    with atomic_file(target) as handle:
        handle.write("one")
    with pytest.raises(RuntimeError), atomic_file(target) as handle:
        handle.write("half")
        raise RuntimeError
    assert target.read_text() == "one" and sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]
    with pytest.raises(UsageError, match="does not exist"), atomic_file(tmp_path / "no" / "r.html"):
        pass


def test_train_refuses_a_folder_with_user_files_before_any_work(tmp_path):
    """`vitgender train --out <folder with notes.txt>` once deleted notes.txt; now: exit 2 first thing."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("the user's notes")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vitgender.cli",
            "train",
            "--data",
            str(tmp_path / "no-such-data"),
            "--out",
            str(out),
            "--epochs",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert "not empty" in result.stderr and "no-such-data" not in result.stderr  # refused before reading the data
    assert (out / "notes.txt").read_text() == "the user's notes"
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no scratch, no OUT.run


# --- run_job: one protocol for every child process ---------------------------------------------------------------

CHILD = """
import os, sys
from pathlib import Path
from vitgender.errors import UsageError
from vitgender.toolchains.processes import job_main

def work(job):
    if job["mode"] == "refuse":
        raise UsageError(job["path"], "not a model")
    if job["mode"] == "crash":
        raise RuntimeError("converter exploded\\nsecond line")
    if job["mode"] == "die":
        print("[noise.cpp:1] chatter", file=sys.stderr)
        print("real reason", file=sys.stderr)
        os._exit(139)
    print("tools print freely on stdout")
    return {"path": job["path"], "exists": Path(job["path"]).is_file(), "cwd": os.getcwd()}

job_main(work)
"""


@pytest.fixture
def child_module(tmp_path):
    folder = tmp_path / "mods"
    folder.mkdir()
    (folder / "fake_child.py").write_text(textwrap.dedent(CHILD))
    root = str(Path(__file__).resolve().parent.parent)
    return child_env(PYTHONPATH=os.pathsep.join([str(folder), root]))


def test_run_job_returns_the_result_with_paths_made_absolute(tmp_path, child_module, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("model.onnx").write_bytes(b"x")
    work = tmp_path / "work"
    result = run_job(
        "fake_child", {"mode": "ok", "path": Path("model.onnx")}, what="fake", env=child_module, workdir=work
    )
    assert result == {"path": str(tmp_path / "model.onnx"), "exists": True, "cwd": str(work)}


def test_run_job_maps_exit_codes_and_keeps_the_reason(tmp_path, child_module):
    with pytest.raises(UsageError, match="not a model") as refused:
        run_job("fake_child", {"mode": "refuse", "path": "x.onnx"}, what="step", env=child_module)
    assert refused.value.exit_code == ExitCode.USAGE and refused.value.what == "step"
    with pytest.raises(ToolchainError, match="RuntimeError: converter exploded$"):
        run_job("fake_child", {"mode": "crash", "path": "x"}, what="step", env=child_module)
    with pytest.raises(ToolchainError, match=r"step: real reason$"):
        run_job("fake_child", {"mode": "die", "path": "x"}, what="step", env=child_module, noise=("[",))


def test_the_side_environment_sees_only_the_package(tmp_path):
    from vitgender.toolchains.side_env import package_only_path

    folder = Path(package_only_path())
    assert [p.name for p in folder.iterdir()] == ["vitgender"]
    assert (folder / "vitgender").resolve() == Path(__file__).resolve().parent.parent / "vitgender"


def test_the_executorch_worker_imports_in_the_side_environment_with_its_own_numpy(tmp_path):
    """The worker is standalone (no PIL there) and our site-packages' numpy 1.26 must not shadow its numpy 2."""
    from vitgender.toolchains.side_env import executorch_env, executorch_python

    try:
        python = executorch_python()
    except ToolchainError as exc:
        pytest.skip(f"no ExecuTorch environment ({exc})")
    probe = "import sys, numpy, vitgender.toolchains.executorch_worker; print(numpy.__version__, 'PIL' in sys.modules)"
    result = subprocess.run(
        [python, "-c", probe], env=executorch_env(), cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    version, pil = result.stdout.split()
    assert int(version.split(".")[0]) >= 2 and pil == "False"


# --- the manifest: schema 2 names the runtime; schema 1 is still read ------------------------------------------


def test_a_schema_1_manifest_is_read_with_its_runtime_field_renamed(tmp_path):
    from vitgender.manifest import SCHEMA, artifact_sha256, read_manifest, verify_artifact

    (tmp_path / "model.onnx").write_bytes(b"onnx bytes")
    old = {
        "schema": 1,
        "model": {"source": "m", "labels": ["a", "b"]},
        "created_by": {},
        "artifacts": [
            {
                "name": "onnx",
                "format": "onnx",
                "precision": "fp32",
                "path": "model.onnx",
                "sha256": artifact_sha256(tmp_path / "model.onnx"),
                "bytes": 10,
                "input": {},
            }
        ],
    }
    (tmp_path / "manifest.json").write_text(json.dumps(old))
    data = read_manifest(tmp_path)
    assert SCHEMA == 2 and data["schema"] == 2
    assert data["artifacts"][0]["runtime"] == "onnx" and "format" not in data["artifacts"][0]
    assert verify_artifact(tmp_path, data["artifacts"][0]) == tmp_path / "model.onnx"
    assert json.loads((tmp_path / "manifest.json").read_text()) == old  # the file is left as it was
    (tmp_path / "manifest.json").write_text(json.dumps({**old, "schema": 3}))
    with pytest.raises(UsageError, match="schema 3"):
        read_manifest(tmp_path)


def test_evaluate_refuses_an_unwritable_report_before_any_work(tmp_path):
    argv = ["evaluate", "--data", str(tmp_path / "no-such-data"), "--html", str(tmp_path / "missing" / "report.html")]
    result = subprocess.run([sys.executable, "-m", "vitgender.cli", *argv], capture_output=True, text=True, timeout=300)
    assert result.returncode == ExitCode.USAGE
    assert "report.html: output folder does not exist" in result.stderr and "no-such-data" not in result.stderr
    assert list(tmp_path.iterdir()) == []

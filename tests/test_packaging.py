"""vitgender as users install it: the wheel carries every file the code reads, and `pip install`
into an environment that already holds older supported libraries keeps them and works.

The two slow tests share one fresh virtual environment built from requirements/oldest.txt (the
lower bounds of pyproject.toml). pip's cache makes the downloads cheap after scripts/setup.sh.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent

# Package files the code never reads at run time (scripts/model_card.py reads this from the checkout).
NOT_SHIPPED = {"vitgender/training/default_model_train_log.json"}


def _tracked_package_files() -> set[str]:
    listed = subprocess.run(["git", "ls-files", "vitgender"], cwd=REPO, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("needs a git checkout to know which files are the package's")
    return {line for line in listed.stdout.splitlines() if (REPO / line).is_file()}


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the tracked sources (no stray build/ in the checkout)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    for relative in _tracked_package_files():
        (source / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / relative, source / relative)
    out = tmp_path_factory.mktemp("dist")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr
    (path,) = out.glob("vitgender-*.whl")
    return path


@pytest.mark.slow
def test_wheel_ships_every_file_the_code_reads(wheel):
    from vitgender.checkpoint import DEFAULT_MODEL_DIR
    from vitgender.exporters.options import CALIBRATION_DIR
    from vitgender.validators import budgets
    from vitgender.validators.parity import REFERENCE_ROOT

    names = set(zipfile.ZipFile(wheel).namelist())
    package = REPO / "vitgender"
    read_at_run_time = [
        *DEFAULT_MODEL_DIR.iterdir(),
        *CALIBRATION_DIR.iterdir(),
        *REFERENCE_ROOT.rglob("*.jpg"),
        Path(budgets.__file__).with_name("default_budgets.json"),
        package / "serving" / "demo.html",
        *(package / "serving" / "static").iterdir(),
    ]
    wanted = {str(p.relative_to(REPO)) for p in read_at_run_time}
    assert len(wanted) > 100 and not wanted - names, sorted(wanted - names)
    # Anything else tracked under vitgender/ ships too, unless it is listed as checkout-only.
    missing = {p for p in _tracked_package_files() - NOT_SHIPPED if not p.endswith(".pyc")} - names
    assert not missing, sorted(missing)
    assert not {n for n in names if "__pycache__" in n or n.startswith("tests/")}


@pytest.mark.slow
def test_wheel_metadata_declares_ranges_and_extras(wheel):
    """The wheel's requirements are ranges (so pip leaves a user's newer libraries alone)."""
    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read(next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    requires = [line.split(": ", 1)[1] for line in metadata.splitlines() if line.startswith("Requires-Dist: ")]
    core = [r for r in requires if "extra ==" not in r]
    assert {re.split(r"[<>=!~;\[ ]", r)[0] for r in core} >= {"torch", "transformers", "numpy", "safetensors"}
    assert not [r for r in core if "==" in r], core
    extras = {line.split(": ", 1)[1] for line in metadata.splitlines() if line.startswith("Provides-Extra: ")}
    assert {"onnx", "tflite", "serve", "ray", "faces", "peer", "test", "docs", "all"} <= extras
    onnx = [r for r in requires if 'extra == "onnx"' in r]
    assert not [r for r in onnx if "tensorflow" in r or "onnx2tf" in r or "numpy" in r], onnx


def _lock() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements" / "lock.txt").read_text().splitlines():
        if line and not line.startswith((" ", "#", "-")):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    return pins


def test_lock_satisfies_every_declared_range():
    """requirements/lock.txt is regenerated when pyproject.toml changes (scripts/lock.sh): every
    requirement of the core and of each extra accepts its locked version."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    locked = _lock()
    declared = [Requirement(r) for r in project["dependencies"]]
    declared += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    for requirement in declared:
        if requirement.name == "vitgender":
            continue
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{name} is not in requirements/lock.txt: run scripts/lock.sh"
        assert requirement.specifier.contains(locked[name], prereleases=True), (str(requirement), locked[name])


def test_running_environment_is_the_locked_set():
    """The environment the suite runs in holds the locked versions (what scripts/setup.sh installs).

    Read from the environment's own site-packages only: packages put vendored copies on sys.path at
    run time (setuptools appends setuptools/_vendor with an older packaging, wheel and platformdirs;
    Ray prepends ray/thirdparty_files with its own psutil), and those are not what pip installed."""
    import sysconfig
    from importlib.metadata import distributions

    locked = _lock()
    site = list(dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]))
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in distributions(path=site)}
    assert "numpy" in installed, f"no distributions read from {site}"
    drift = {
        name: (installed[name], version)
        for name, version in locked.items()
        if name in installed and installed[name] != version
    }
    assert not drift, f"installed vs lock: {drift}"


# --- a user's environment with the oldest supported libraries --------------------------------


def _in_venv(
    python: Path, program: str, *args: str, cwd: Path | None = None, timeout: int = 1800
) -> subprocess.CompletedProcess:
    """Run the venv's `python` (or another script of its bin/) away from the checkout: no PYTHONPATH,
    and a working directory outside the repository, whose vitgender.egg-info would look installed to pip."""
    return subprocess.run(
        [str(python.parent / program), *args],
        capture_output=True,
        text=True,
        cwd=cwd or python.parent,
        timeout=timeout,
        env=_without_checkout(),
    )


def _pip_versions(python: Path) -> dict[str, str]:
    listed = _in_venv(python, "python", "-m", "pip", "list", "--format", "json")
    return {p["name"].lower().replace("_", "-"): p["version"] for p in json.loads(listed.stdout)}


def _requirement_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


@pytest.fixture(scope="module")
def user_env(tmp_path_factory) -> Path:
    """A fresh venv holding requirements/oldest.txt, as a user's own training environment would."""
    venv = tmp_path_factory.mktemp("user-env") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    done = _in_venv(python, "python", "-m", "pip", "install", "-q", "-r", str(REPO / "requirements" / "oldest.txt"))
    assert done.returncode == 0, done.stderr[-3000:]
    return python


def _install_keeping_oldest(python: Path, *target: str) -> None:
    before = _pip_versions(python)
    done = _in_venv(python, "python", "-m", "pip", "install", "-q", *target)
    assert done.returncode == 0, done.stderr[-3000:]
    after = _pip_versions(python)
    for name, version in _requirement_pins(REPO / "requirements" / "oldest.txt").items():
        assert after[name] == before[name] and after[name].split("+")[0] == version, (name, before[name], after[name])
    assert "tensorflow" not in after and "onnx2tf" not in after  # .[onnx] stays lean
    consistent = _in_venv(python, "python", "-m", "pip", "check")
    assert consistent.returncode == 0, consistent.stdout


def _without_checkout() -> dict[str, str]:
    """The environment minus PYTHONPATH, so the venv imports its installed vitgender, not the checkout."""
    return {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "OMP_NUM_THREADS": "1"}


def _cli(python: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`vitgender ARGS` from the venv's console script, outside the checkout."""
    return _in_venv(python, "vitgender", *args, cwd=cwd, timeout=900)


def _export_validate_classify(python: Path, model: Path, work: Path) -> None:
    shutil.copytree(model, work / "my-vit")
    exported = _cli(python, "export", "my-vit", "--out", "artifacts", "--formats", "onnx", cwd=work)
    assert exported.returncode == 0, exported.stderr[-3000:]
    gate = _cli(python, "validate", "artifacts", cwd=work)
    assert gate.returncode == 0, gate.stdout[-2000:] + gate.stderr[-2000:]
    assert json.loads((work / "artifacts" / "validation" / "report.json").read_text())["passed"]
    shutil.copytree(REPO / "examples", work / "examples")
    classified = _cli(python, "classify", "examples/", "--model", "artifacts/model.onnx", cwd=work)
    assert classified.returncode == 0, classified.stderr[-3000:]
    assert len(classified.stdout.strip().splitlines()) == len(list((work / "examples").glob("*.jpg")))


@pytest.mark.slow
def test_onnx_extra_keeps_older_torch_and_transformers(user_env, tiny_model, tmp_path):
    """`pip install -e .[onnx]` into the oldest supported set changes none of it, and the ONNX flow runs."""
    _install_keeping_oldest(user_env, "-e", f"{REPO}[onnx]")
    _export_validate_classify(user_env, tiny_model, tmp_path)


@pytest.mark.slow
def test_wheel_installs_and_runs(user_env, wheel, tiny_model, tmp_path):
    """The built wheel (not editable): classify with the embedded model, verify it, gate an ONNX export."""
    # Same version as an editable install the other test may have left: pip would keep that one.
    assert _in_venv(user_env, "python", "-m", "pip", "uninstall", "-q", "-y", "vitgender").returncode == 0
    _install_keeping_oldest(user_env, f"vitgender[onnx] @ {wheel.as_uri()}")
    where = _in_venv(
        user_env, "python", "-c", "import vitgender.checkpoint as c; print(c.DEFAULT_MODEL_DIR)"
    ).stdout.strip()
    assert "site-packages" in where and not where.startswith(str(REPO)), where
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    classified = _cli(user_env, "classify", "examples/", cwd=tmp_path)
    assert classified.returncode == 0, classified.stderr[-3000:]
    labels = {json.loads(line)["predictions"][0]["label"] for line in classified.stdout.splitlines()}
    assert labels and labels <= {"female", "male"}
    verified = _cli(user_env, "verify", where, cwd=tmp_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    (tmp_path / "flow").mkdir()
    _export_validate_classify(user_env, tiny_model, tmp_path / "flow")


def test_setup_script_names_the_missing_python():
    """setup.sh wants python3.11 (requires-python); without it, one line and exit 2, nothing created."""
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "setup.sh")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHON": "python3.11-that-is-not-installed"},
    )
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "requires-python" in done.stderr and done.stdout == ""

"""Runtimes declare what they can do; adding one is one module + one registration (the toy below)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import random_image

from vitgender.runtimes import (
    Closing,
    RunnerInfo,
    Runtime,
    get_runtime,
    open_runner,
    register_runtime,
    runtime_help,
    runtime_names,
)
from vitgender.runtimes.weights import weight_inventory


# --- the toy runtime: a linear classifier over pixel_values, stored as .npz with the usual sidecar ---------
class NpzLinearRunner(Closing):
    def __init__(self, weights: np.ndarray, bias: np.ndarray, info: RunnerInfo) -> None:
        self.weights, self.bias, self.info = weights, bias, info
        self.closed = False

    @classmethod
    def open(cls, source, *, threads: int | None = None) -> NpzLinearRunner:
        from vitgender.runtimes.sidecar import read_sidecar

        data, sidecar = np.load(source), read_sidecar(Path(source))
        return cls(
            data["weights"],
            data["bias"],
            RunnerInfo(
                "npz",
                sidecar.labels,
                sidecar.preprocess,
                str(source),
                sidecar.precision,
                architecture=sidecar.architecture,
            ),
        )

    def run(self, pixel_values: np.ndarray) -> np.ndarray:
        return (pixel_values.reshape(len(pixel_values), -1) @ self.weights.T + self.bias).astype(np.float32)

    def close(self) -> None:
        self.closed = True


def npz_inventory(path: Path) -> dict:
    data = np.load(path)
    return weight_inventory({str(data[k].dtype): data[k].nbytes for k in data.files}, {"MatMul": 1})


@pytest.fixture(scope="module")
def toy_runtime():
    register_runtime(
        Runtime(
            "npz",
            lambda: NpzLinearRunner.open,
            lambda p: p.suffix == ".npz",
            ".npz linear models (a test's toy)",
            inventory=npz_inventory,
        )
    )
    yield "npz"
    from vitgender.runtimes import base

    del base._REGISTRY["npz"]


@pytest.fixture
def toy_artifact(tiny_model, tmp_path) -> Path:
    """An export folder holding one toy artifact, with the sidecar and manifest entry every artifact has."""
    from vitgender.checkpoint import open_checkpoint
    from vitgender.manifest import describe, write_manifest
    from vitgender.precision import Precision
    from vitgender.runtimes.sidecar import Sidecar, write_sidecar

    ckpt = open_checkpoint(tiny_model)
    rng = np.random.default_rng(0)
    path = tmp_path / "export" / "model.npz"
    path.parent.mkdir()
    np.savez(path, weights=rng.standard_normal((2, 3 * 32 * 32)).astype(np.float32) / 100, bias=np.zeros(2, np.float32))
    spec = {"name": "pixel_values", "dtype": "float32", "shape": ["batch", 3, 32, 32]}
    write_sidecar(path, Sidecar(ckpt.labels, ckpt.preprocess, Precision.FP32, ckpt.architecture), spec)
    write_manifest(
        path.parent,
        {"source": str(tiny_model), "labels": list(ckpt.labels)},
        [describe(path.parent, "npz-linear", "npz", "fp32", path, spec)],
    )
    return path


def test_a_toy_runtime_is_accepted_by_classify_validate_and_bench(toy_runtime, toy_artifact, tmp_path):
    from vitgender.bench import arithmetic
    from vitgender.classify import load_classifier
    from vitgender.runtimes import runtime_for
    from vitgender.validators import parity

    assert runtime_for(toy_artifact) == "npz"
    for i in range(3):
        random_image(i).save(tmp_path / f"img{i}.jpg")
    classifier = load_classifier(toy_artifact, runtime="npz")
    results = list(classifier.classify([tmp_path / f"img{i}.jpg" for i in range(3)]))
    assert [ranked[0]["label"] in ("female", "male") for ranked in results] == [True] * 3

    result = parity.validate(toy_artifact.parent, images=tmp_path, labels="none")
    (checked,) = result.artifacts
    assert checked.inventory["weight_share_by_dtype"] == {"float32": 1.0}
    assert any(c.name == "quantization_proof" and c.passed for c in checked.checks)
    assert arithmetic("npz", "fp32") == "fp32" and arithmetic("npz", "int8") == "int8"
    assert "npz" in runtime_help()


def test_runtime_help_names_every_registered_runtime(toy_runtime):
    """Generated from the registry: a runtime registered later (this module's toy) is named by a fresh
    call; the CLI's help, built at import, names every built-in one (executorch was once forgotten)."""
    from vitgender.cli.common import RUNTIME_HELP
    from vitgender.runtimes import runtime_help

    assert toy_runtime in runtime_names() and all(name in runtime_help() for name in runtime_names())
    assert all(name in RUNTIME_HELP for name in ("torch", "onnx", "tflite", "savedmodel", "executorch"))


def test_options_are_declared_per_runtime(tiny_model, tmp_path):
    """allow_pickle is a torch option: set for another runtime it is refused (exit 2), never ignored."""
    from vitgender.errors import UsageError

    assert get_runtime("torch").options == {"threads", "allow_pickle"}
    assert get_runtime("onnx").options == {"threads"}
    with pytest.raises(UsageError, match="does not take allow_pickle"):
        open_runner("onnx", tmp_path / "model.onnx", allow_pickle=True)
    with open_runner("torch", tiny_model, allow_pickle=False, threads=None) as runner:  # defaults pass through
        assert runner.run(np.zeros((1, 3, 32, 32), np.float32)).shape == (1, 2)


def test_runners_close_as_context_managers(toy_runtime, toy_artifact):
    with open_runner("npz", toy_artifact) as runner:
        assert not runner.closed
    assert runner.closed
    with open_runner("npz", toy_artifact, tta="flip") as flipped:
        inner = flipped.inner
    assert inner.closed  # the test-time-averaging wrapper closes what it wraps


def test_capabilities_are_declared_not_probed():
    from vitgender.runtimes import can_localize

    builtin = ("torch", "onnx", "tflite", "savedmodel", "executorch")
    assert {n for n in builtin if get_runtime(n).stages} == {"torch", "onnx", "tflite"}
    assert {n for n in builtin if get_runtime(n).inventory} == {"onnx", "tflite", "savedmodel", "executorch"}

    class Probe(Closing):
        info = RunnerInfo("savedmodel", ("a",), None, "x")

        def stage_activations(self, inputs):  # present, but the savedmodel runtime does not declare stages
            return {}

    assert not can_localize(Probe())


def test_ray_reads_labels_from_metadata_without_opening_a_runner(tiny_model, toy_runtime, toy_artifact, monkeypatch):
    from vitgender.runtimes import base, read_metadata

    monkeypatch.setattr(base, "open_runner", lambda *a, **k: pytest.fail("a runner was opened"))
    labels, pre = read_metadata("torch", tiny_model)
    assert labels == ("female", "male") and pre.height == 32
    assert read_metadata("npz", toy_artifact)[0] == ("female", "male")


def test_docs_runtime_table_matches_the_registry():
    table = (Path(__file__).resolve().parent.parent / "docs" / "models.md").read_text().split("runtimes-table")[1]
    rows = {
        line.split("|")[1].strip(" `"): [c.strip() for c in line.split("|")[2:6]]
        for line in table.splitlines()
        if line.startswith("| `")
    }
    builtin = {n for n in runtime_names() if n != "npz"}
    assert set(rows) == builtin
    for name, (files, options, stages, inventory) in rows.items():
        spec = get_runtime(name)
        assert files == spec.files and options == ", ".join(sorted(spec.options))
        assert (stages == "yes") == spec.stages and (inventory == "yes") == (spec.inventory is not None)

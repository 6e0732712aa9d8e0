"""Flip test-time averaging: one wrapper for every runner, mirrored along the right axis."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tests.test_exit_codes import EXAMPLE, run_cli
from vitgender.errors import ExitCode, UsageError
from vitgender.runtimes import open_runner
from vitgender.runtimes.tta import FlipAveragedRunner


class LeftHalfRunner:
    """Logits that depend on where the brightness is: [mean of left half, mean of right half]."""

    def __init__(self, info, raw_input: bool) -> None:
        self.info = replace(info, raw_input=raw_input)
        self.calls: list[int] = []

    def run(self, x: np.ndarray) -> np.ndarray:
        self.calls.append(len(x))
        width_axis = 2 if self.info.raw_input else 3
        left, right = np.split(x.astype(np.float32), 2, axis=width_axis)
        return np.stack([left.mean(axis=(1, 2, 3)), right.mean(axis=(1, 2, 3))], 1)


@pytest.mark.parametrize("raw_input", [False, True])
def test_flip_averages_each_image_with_its_mirror_in_one_call(tiny_model, raw_input):
    inner = LeftHalfRunner(open_runner("torch", tiny_model).info, raw_input)
    runner = FlipAveragedRunner(inner)
    rng = np.random.default_rng(0)
    if raw_input:
        x = rng.random((3, 32, 4, 3)).astype(np.float32)  # NHWC, width 4
    else:
        x = rng.random((3, 3, 32, 4)).astype(np.float32)  # NCHW, width 4
    plain = inner.run(x)
    averaged = runner.run(x)
    assert inner.calls[-1] == 6  # the images and their mirrors go through together
    # mirroring swaps the halves, so both logits become the mean of the two halves
    np.testing.assert_allclose(averaged[:, 0], plain.mean(1), rtol=1e-6)
    np.testing.assert_allclose(averaged[:, 1], plain.mean(1), rtol=1e-6)
    assert runner.info.source.endswith("(flip-averaged)") and runner.info.labels == inner.info.labels


def test_flip_on_a_real_model_equals_the_mean_of_two_runs(tiny_model):
    plain = open_runner("torch", tiny_model)
    flipped = open_runner("torch", tiny_model, tta="flip")
    x = np.random.default_rng(1).standard_normal((5, 3, 32, 32)).astype(np.float32)
    expected = (plain.run(x) + plain.run(np.ascontiguousarray(x[..., ::-1]))) / 2
    np.testing.assert_allclose(flipped.run(x), expected, atol=1e-5)
    assert not np.allclose(flipped.run(x), plain.run(x), atol=1e-4)  # it does change the answer


def test_unknown_mode_is_a_usage_error_before_loading(tiny_model):
    with pytest.raises(UsageError, match="test-time augmentation"):
        open_runner("torch", Path("/no/such/model"), tta="rotate")


def test_cli_classify_with_flip(tiny_model):
    result = run_cli("classify", str(EXAMPLE), "--model", str(tiny_model), "--tta", "flip")
    assert result.returncode == ExitCode.OK, result.stderr
    plain = run_cli("classify", str(EXAMPLE), "--model", str(tiny_model))
    scores = [json.loads(r.stdout)["predictions"][0]["score"] for r in (result, plain)]
    assert scores[0] != pytest.approx(scores[1], abs=1e-6)  # the flag reached the runner
    bad = run_cli("classify", str(EXAMPLE), "--model", str(tiny_model), "--tta", "rotate")
    assert bad.returncode == ExitCode.USAGE and "Traceback" not in bad.stderr

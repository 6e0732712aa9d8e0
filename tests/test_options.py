"""Options mean what they say: an option a mode ignores is refused (exit 2, one line), never dropped silently."""

from __future__ import annotations

import pytest

from tests.conftest import run_main
from vitgender.errors import ExitCode

REFERENCE_IMAGE = "vitgender/reference/utkface-val-50"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["classify", REFERENCE_IMAGE, "--resume"], "--resume: only with --ray"),
        (["classify", REFERENCE_IMAGE, "--rows-per-shard", "10"], "--rows-per-shard: only with --ray"),
        (["classify", REFERENCE_IMAGE, "--detector", "blazeface"], "--detector: only with --faces"),
        (
            ["classify", REFERENCE_IMAGE, "--faces", "--batch-size", "4"],
            "--batch-size: only with whole images or --ray",
        ),
        (
            ["classify", REFERENCE_IMAGE, "--ray", "-o", "out", "--batch-size", "auto"],
            "--batch-size: only with one machine",
        ),
        (["classify", REFERENCE_IMAGE, "--runtime", "onnx", "--allow-pickle"], "--allow-pickle: only with PyTorch"),
        (["explain", REFERENCE_IMAGE, "-o", "out", "--max-faces", "3"], "--max-faces: only with --faces"),
        (
            ["evaluate", "--data", REFERENCE_IMAGE, "--explain", "1", "--tta", "flip"],
            "--tta: only with the model as it is",
        ),
        (
            ["evaluate", "--data", REFERENCE_IMAGE, "--explain-method", "rollout"],
            "--explain-method: only with --explain",
        ),
        (["export", "--quant-target", "agreement=0.99"], "--quant-target: only with an int8 format that calibrates"),
        (
            ["export", "--formats", "onnx-int8-static", "--quant-max-float", "2"],
            "--quant-max-float: only with --quant-preset auto",
        ),
        (
            ["export", "--formats", "onnx", "--calibration", "x"],
            "--calibration: only with an int8 format that calibrates",
        ),
        (
            ["export", "--formats", "onnx", "--calibration-limit", "1024"],
            "--calibration-limit: only with an int8 format that calibrates",
        ),
        (
            ["export", "--formats", "executorch-int8-dynamic", "--quant-preset", "full"],
            "--quant-preset: only with onnx-int8-static, or 'auto' with",
        ),
        (
            ["export", "--formats", "tflite-int8", "--quant-preset", "safe"],
            "--quant-preset: only with onnx-int8-static",
        ),
        (
            ["export", "--formats", "onnx-int8-dynamic", "--quant-preset", "auto"],
            "--quant-preset: only with onnx-int8-static",
        ),
        (["export", "--formats", "onnx-int8-static", "--tflite-int8-io"], "--tflite-int8-io: only with tflite-int8"),
        (["verify", ".", "--write", "--allow-pickle"], "--allow-pickle: only with checking"),
    ],
)
def test_ignored_options_are_refused(args, words, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(monkeypatch, capsys, *(a if a != REFERENCE_IMAGE else _reference() for a in args))
    assert code == ExitCode.USAGE and words in err and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


def _reference() -> str:
    from pathlib import Path

    return str(Path(__file__).resolve().parent.parent / REFERENCE_IMAGE)

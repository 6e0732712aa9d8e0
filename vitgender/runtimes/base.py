"""The Runner protocol and the registry that opens a runner by runtime name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from vitgender.errors import UsageError
from vitgender.preprocess import PreprocessConfig


@dataclass(frozen=True)
class RunnerInfo:
    """What callers need to feed a runner and to read its output."""

    runtime: str
    labels: tuple[str, ...]
    preprocess: PreprocessConfig
    source: str
    precision: str = "fp32"
    raw_input: bool = False


class Runner(Protocol):
    """`info.raw_input` runners (preprocessing baked into the graph) take the uint8 (N, H, W, 3)
    resized images instead of pixel_values; callers pick the input with `runner_input`."""

    info: RunnerInfo

    def run(self, pixel_values: np.ndarray) -> np.ndarray:
        """float32 (N, 3, H, W) -> float32 logits (N, num_labels)."""


def runner_input(runner: Runner, resized_uint8: np.ndarray) -> np.ndarray:
    """What `runner.run` takes for these resized uint8 NHWC images: themselves, or pixel_values."""
    if runner.info.raw_input:
        return resized_uint8
    from vitgender.preprocess import Preprocessor

    return Preprocessor(runner.info.preprocess).normalize(resized_uint8)


Opener = Callable[..., Runner]
_REGISTRY: dict[str, Callable[[], Opener]] = {}


def register_runtime(name: str, loader: Callable[[], Opener]) -> None:
    """Register `loader`, which imports the runtime lazily (heavy deps load only when used)."""
    _REGISTRY[name] = loader


def runtime_names() -> list[str]:
    return sorted(_REGISTRY)


def open_runner(runtime: str, source: str | Path | None, **options) -> Runner:
    if runtime not in _REGISTRY:
        raise UsageError(runtime, f"unknown runtime (choose from {', '.join(runtime_names())})")
    return _REGISTRY[runtime]()(source, **options)


def _torch_opener() -> Opener:
    from vitgender.runtimes.torch_runner import TorchRunner

    return TorchRunner.open


def _onnx_opener() -> Opener:
    from vitgender.runtimes.onnx_runner import OnnxRunner

    return OnnxRunner.open


def _tflite_opener() -> Opener:
    from vitgender.runtimes.tflite_runner import TfliteRunner

    return TfliteRunner.open


def _savedmodel_opener() -> Opener:
    from vitgender.runtimes.savedmodel_runner import SavedModelRunner

    return SavedModelRunner.open


register_runtime("torch", _torch_opener)
register_runtime("onnx", _onnx_opener)
register_runtime("tflite", _tflite_opener)
register_runtime("savedmodel", _savedmodel_opener)


def runtime_for(path: str | Path | None) -> str:
    """Pick the runtime from what `path` is: a .onnx/.tflite file, a SavedModel, or a checkpoint."""
    if path is None:
        return "torch"
    path = Path(path)
    if path.suffix == ".onnx":
        return "onnx"
    if path.suffix == ".tflite":
        return "tflite"
    if (path / "saved_model.pb").is_file():
        return "savedmodel"
    return "torch"

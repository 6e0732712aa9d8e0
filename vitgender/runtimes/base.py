"""The Runner protocol and the registry that opens a runner by runtime name or by file type."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from vitgender.architecture import ViTArchitecture
from vitgender.errors import UsageError
from vitgender.precision import Precision
from vitgender.preprocess import PreprocessConfig


@dataclass(frozen=True)
class RunnerInfo:
    """What callers need to feed a runner and to read its output."""

    runtime: str
    labels: tuple[str, ...]
    preprocess: PreprocessConfig
    source: str
    precision: Precision = Precision.FP32
    raw_input: bool = False
    # Sizes of the network (token count, FLOPs, activation memory); None for artifacts exported
    # before sidecars recorded it.
    architecture: ViTArchitecture | None = None
    # False where an image's answer depends on the other images in its batch (ORT dynamic int8
    # derives activation scales from the whole batch tensor); `validate` measures it for every runner.
    batch_invariant: bool = True


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


@dataclass(frozen=True)
class Runtime:
    """A registered runtime: how to recognise its files and how to open a Runner on one.

    `load` imports the runtime lazily, so heavy dependencies (TensorFlow, onnxruntime) load only
    when a file of theirs is opened.
    """

    name: str
    load: Callable[[], Opener]
    recognises: Callable[[Path], bool]


_REGISTRY: dict[str, Runtime] = {}


def register_runtime(runtime: Runtime) -> None:
    _REGISTRY[runtime.name] = runtime


def runtime_names() -> list[str]:
    return sorted(_REGISTRY)


def open_runner(runtime: str, source: str | Path | None, *, tta: str | None = None, alpha: str | None = None,
                **options) -> Runner:
    """A Runner on `source`; `tta="flip"` wraps it in horizontal-flip test-time averaging, and `alpha`
    replaces the alpha policy the model or artifact records (see `vitgender.preprocess`)."""
    if runtime not in _REGISTRY:
        raise UsageError(runtime, f"unknown runtime (choose from {', '.join(runtime_names())})")
    from vitgender.preprocess import check_alpha
    from vitgender.runtimes.tta import check_tta, with_tta

    check_tta(tta)
    if alpha is not None:
        try:
            check_alpha(alpha)
        except ValueError as exc:
            raise UsageError(f"--alpha {alpha}", str(exc)) from None
    runner = _REGISTRY[runtime].load()(source, **options)
    if alpha is not None:
        runner.info = replace(runner.info, preprocess=replace(runner.info.preprocess, alpha=alpha))
    return with_tta(runner, tta)


def runtime_for(path: str | Path | None) -> str:
    """The runtime whose files `path` is (an exported artifact); a checkpoint (or None) is torch."""
    if path is None:
        return "torch"
    for runtime in _REGISTRY.values():
        if runtime.recognises(Path(path)):
            return runtime.name
    return "torch"


def _opener(module: str, cls: str) -> Callable[[], Opener]:
    def load() -> Opener:
        from importlib import import_module

        return getattr(import_module(module), cls).open

    return load


register_runtime(Runtime("onnx", _opener("vitgender.runtimes.onnx_runner", "OnnxRunner"),
                         lambda p: p.suffix == ".onnx"))
register_runtime(Runtime("tflite", _opener("vitgender.runtimes.tflite_runner", "TfliteRunner"),
                         lambda p: p.suffix == ".tflite"))
register_runtime(Runtime("savedmodel", _opener("vitgender.runtimes.savedmodel_runner", "SavedModelRunner"),
                         lambda p: (p / "saved_model.pb").is_file()))
register_runtime(Runtime("executorch", _opener("vitgender.runtimes.executorch_runner", "ExecuTorchRunner"),
                         lambda p: p.suffix == ".pte"))
register_runtime(Runtime("torch", _opener("vitgender.runtimes.torch_runner", "TorchRunner"),
                         lambda p: (p / "config.json").is_file()))

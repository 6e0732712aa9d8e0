"""The Runner protocol and the registry of runtimes: what each opens, what it can do, what it accepts.

A Runtime declares its capabilities instead of callers probing for them: `stages` (per-stage
activations for `validate --localize`), `inventory` (weight dtypes and bytes read from a file
without running it), `options` (which of `threads`, `allow_pickle`, `precision` it takes) and the arithmetic
an fp16 artifact really computes in (for `bench`). Validators, bench and the CLI ask the
registry; adding a runtime is one module and one `register_runtime` call (tests/test_runtimes.py
registers a toy one).

Wherever a runtime is named (`--runtime`), settings may follow it: `openvino:precision=bf16,threads=2`
passes `precision` and `threads` to the runtime's opener, refused unless the runtime declares them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from vitgender.errors import UsageError
from vitgender.models import ViTArchitecture
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
    # What the runner computes in where a runtime setting lowers it below the file's `precision`
    # (OpenVINO's bf16 hint on an fp32 file): the gate judges it, and bench its roof, by this.
    arithmetic: Precision | None = None

    @property
    def computes_in(self) -> Precision:
        return self.arithmetic or self.precision


class Runner(Protocol):
    """`info.raw_input` runners (preprocessing baked into the graph) take the uint8 (N, H, W, 3)
    resized images instead of pixel_values; callers pick the input with `runner_input`.

    Lifecycle: `open_runner` opens, `run` any number of times, `close` releases what the runner
    holds (a worker process, an interpreter); `with open_runner(...) as runner:` closes it.
    Runners of a runtime that declares `stages` also have `stage_activations(inputs)`.
    """

    info: RunnerInfo

    def run(self, pixel_values: np.ndarray) -> np.ndarray:
        """float32 (N, 3, H, W) -> float32 logits (N, num_labels)."""

    def close(self) -> None: ...

    def __enter__(self) -> Runner: ...

    def __exit__(self, *exc) -> None: ...


def runner_input(runner: Runner, resized_uint8: np.ndarray) -> np.ndarray:
    """What `runner.run` takes for these resized uint8 NHWC images: themselves, or pixel_values."""
    if runner.info.raw_input:
        return resized_uint8
    from vitgender.preprocess import Preprocessor

    return Preprocessor(runner.info.preprocess).normalize(resized_uint8)


Opener = Callable[..., Runner]
Inventory = Callable[[Path], dict]


def default_threads() -> int:
    """One thread policy for every runner: all cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _sidecar_metadata(source: str | Path | None) -> tuple[tuple[str, ...], PreprocessConfig]:
    from vitgender.runtimes.sidecar import read_sidecar

    if source is None:
        raise UsageError("--model", "an exported artifact is needed for this runtime")
    sidecar = read_sidecar(Path(source))
    return sidecar.labels, sidecar.preprocess


def sidecar_info(runtime: str, artifact: Path, *, raw_input: bool = False) -> RunnerInfo:
    """What a runner of `runtime` on `artifact` reports, all of it read from the artifact's sidecar.
    Dynamic int8 that measures one activation range per call over the whole batch tensor (onnxruntime's
    and Inductor's) is not batch-invariant; runtimes that quantize each row alone override it."""
    from vitgender.runtimes.sidecar import read_sidecar

    sidecar = read_sidecar(artifact)
    return RunnerInfo(
        runtime,
        sidecar.labels,
        sidecar.preprocess,
        str(artifact),
        sidecar.precision,
        raw_input=raw_input,
        architecture=sidecar.architecture,
        batch_invariant=sidecar.precision is not Precision.INT8_DYNAMIC,
    )


@dataclass(frozen=True)
class Runtime:
    """A registered runtime: how to recognise its files, how to open a Runner on one, what it can do.

    `load` (and `inventory`) import the runtime lazily, so heavy dependencies (TensorFlow,
    onnxruntime) load only when a file of theirs is opened.
    """

    name: str
    load: Callable[[], Opener]
    recognises: Callable[[Path], bool]
    files: str  # what `--runtime` help says it opens
    options: frozenset[str] = field(default_factory=lambda: frozenset({"threads"}))
    stages: bool = False  # its runners have stage_activations()
    inventory: Inventory | None = None  # weight dtypes/bytes of a file, read without running it
    fp16_arithmetic: bool = False  # runs an fp16 model in fp16 (others upcast fp16 weights to fp32 GEMMs)
    # (labels, preprocessing) of a file without opening a runner on it: the sidecar beside an artifact
    metadata: Callable[[str | Path | None], tuple[tuple[str, ...], PreprocessConfig]] = _sidecar_metadata
    by_file_type: bool = True  # `runtime_for` picks it for the files it recognises (False: a peer, named only)
    # Settings worth benchmarking on a file of this precision, as runtime specs such as
    # "openvino:precision=bf16": a peer's rows (`by_file_type=False`), or extra rows of a runtime on its
    # own files ("inductor:precision=bf16"); empty where not installed or not useful on this CPU.
    bench_settings: Callable[[Precision], list[str]] | None = None


_REGISTRY: dict[str, Runtime] = {}


def register_runtime(runtime: Runtime) -> None:
    _REGISTRY[runtime.name] = runtime


def runtime_names() -> list[str]:
    return sorted(_REGISTRY)


def parse_runtime(spec: str) -> tuple[str, dict[str, str | int]]:
    """`NAME[:KEY=VALUE,...]` -> (NAME, settings): a runtime and the options it is opened with."""
    name, _, rest = spec.partition(":")
    settings = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise UsageError(spec, "runtime settings are NAME:KEY=VALUE[,KEY=VALUE] (e.g. openvino:precision=bf16)")
        settings[key.strip()] = value.strip()
    if "threads" in settings:
        if not settings["threads"].isdigit() or int(settings["threads"]) < 1:
            raise UsageError(spec, "threads takes a positive integer")
        settings["threads"] = int(settings["threads"])
    return name, settings


def _refuse_options(runtime: Runtime, options: dict, *, subject: str) -> None:
    refused = sorted(k for k, v in options.items() if k not in runtime.options and v not in (None, False))
    if refused:
        raise UsageError(
            subject,
            f"the {runtime.name} runtime does not take {', '.join(refused)} "
            f"(it takes: {', '.join(sorted(runtime.options)) or 'no options'})",
        )


def check_runtime_spec(spec: str) -> None:
    """Refuse a `--runtime NAME:SETTINGS` that cannot open here before any slow work runs (the
    reference pass over thousands of images): an unknown runtime, a setting it does not take, a
    precision this CPU does not compute. Opening the runner checks the same again."""
    name, settings = parse_runtime(spec)
    runtime = get_runtime(name)
    _refuse_options(runtime, settings, subject=spec)
    if "precision" in settings:
        check_float_precision(name, str(settings["precision"]))


def get_runtime(name: str) -> Runtime:
    name = parse_runtime(name)[0]
    if name not in _REGISTRY:
        raise UsageError(name, f"unknown runtime (choose from {', '.join(runtime_names())})")
    return _REGISTRY[name]


def runtime_help() -> str:
    """`--runtime` help, generated from the registry so it names every runtime."""
    return (
        "; ".join(f"{r.name} ({r.files})" for r in sorted(_REGISTRY.values(), key=lambda r: r.name))
        + ". Default: by --model's file type."
    )


def open_runner(
    runtime: str, source: str | Path | None, *, tta: str | None = None, alpha: str | None = None, **options
) -> Runner:
    """A Runner on `source`; `tta="flip"` wraps it in horizontal-flip test-time averaging, and `alpha`
    replaces the alpha policy the model or artifact records (see `vitgender.preprocess`).

    `options` are the runtime's declared ones (`Runtime.options`), given here or after its name
    (`openvino:precision=bf16`; these win); one it does not take is refused when set
    (`allow_pickle=True` for an ONNX file), ignored when left at its default. `threads` defaults to
    `default_threads()` for every runtime.
    """
    runtime, settings = parse_runtime(runtime)
    options = {**options, **settings}
    spec = get_runtime(runtime)
    _refuse_options(spec, options, subject=str(source))
    taken = {k: v for k, v in options.items() if k in spec.options}
    if "threads" in spec.options and not taken.get("threads"):
        taken["threads"] = default_threads()
    from vitgender.preprocess import check_alpha
    from vitgender.runtimes.tta import check_tta, with_tta

    check_tta(tta)
    if alpha is not None:
        try:
            check_alpha(alpha)
        except ValueError as exc:
            raise UsageError(f"--alpha {alpha}", str(exc)) from None
    runner = spec.load()(source, **taken)
    if alpha is not None:
        runner.info = replace(runner.info, preprocess=replace(runner.info.preprocess, alpha=alpha))
    return with_tta(runner, tta)


def read_metadata(
    runtime: str, source: str | Path | None, *, allow_pickle: bool = False
) -> tuple[tuple[str, ...], PreprocessConfig]:
    """A model's labels and preprocessing, read from its metadata (no weights loaded, no runner opened).

    `allow_pickle` reaches the checkpoint reader (torch only, as in `open_runner`)."""
    if allow_pickle:
        return _checkpoint_metadata(source, allow_pickle=True)
    return get_runtime(runtime).metadata(source)


def _checkpoint_metadata(
    source: str | Path | None, allow_pickle: bool = False
) -> tuple[tuple[str, ...], PreprocessConfig]:
    from vitgender.checkpoint import open_checkpoint

    checkpoint = open_checkpoint(source, allow_pickle=allow_pickle)  # config and headers; pickle refused unless allowed
    return checkpoint.labels, checkpoint.preprocess


def _bench_specs(path: str | Path, precision: Precision, *, peers: bool) -> list[str]:
    return [
        spec
        for runtime in _REGISTRY.values()
        if runtime.by_file_type is not peers and runtime.bench_settings is not None and runtime.recognises(Path(path))
        for spec in runtime.bench_settings(precision)
    ]


def peer_runtimes(path: str | Path, precision: Precision) -> list[str]:
    """Runtime specs of the peer engines (`by_file_type=False`) that read `path`, for `bench`'s peer rows."""
    return _bench_specs(path, precision, peers=True)


def setting_runtimes(path: str | Path, precision: Precision) -> list[str]:
    """Runtime specs of `path`'s own runtime in other settings (Inductor's bf16 float parts), for
    `bench` rows of the artifact itself: the same file and engine, not a peer."""
    return _bench_specs(path, precision, peers=False)


FLOAT_PRECISIONS = ("f32", "bf16")


def check_float_precision(runtime: str, precision: str) -> str:
    """A runtime's `precision` setting (what its float parts compute in); bf16 only where the CPU
    computes it natively, since elsewhere it is emulated and slower than f32."""
    from vitgender.machine import BF16_FLAGS, has_bf16_arithmetic

    if precision not in FLOAT_PRECISIONS:
        raise UsageError(
            f"precision={precision}", f"the {runtime} runtime takes precision={' or '.join(FLOAT_PRECISIONS)}"
        )
    if precision == "bf16" and not has_bf16_arithmetic():
        raise UsageError(
            "precision=bf16",
            f"this CPU has no bf16 arithmetic (none of {', '.join(BF16_FLAGS)} in its flags); use precision=f32",
        )
    return precision


def can_localize(runner: Runner) -> bool:
    """Whether `runner` exposes stage activations: declared by its runtime (a TTA wrapper exposes none)."""
    return _REGISTRY[runner.info.runtime].stages and callable(getattr(type(runner), "stage_activations", None))


def file_inventory(runtime: str, path: Path) -> dict | None:
    """What the file holds, for the runtimes that declare an `inventory` reader; else None."""
    reader = get_runtime(runtime).inventory
    return reader(Path(path)) if reader is not None else None


def runtime_for(path: str | Path | None, chosen: str | None = None) -> str:
    """The runtime whose files `path` is (an exported artifact); a checkpoint (or None) is torch.

    `chosen` (a `--runtime`, settings included) wins for the files it opens."""
    if chosen is not None and path is not None and get_runtime(chosen).recognises(Path(path)):
        return chosen
    if path is None:
        return "torch"
    for runtime in _REGISTRY.values():
        if runtime.by_file_type and runtime.recognises(Path(path)):
            return runtime.name
    return "torch"


def _lazy(module: str, name: str) -> Callable[[], object]:
    def load():
        from importlib import import_module

        return getattr(import_module(module), name)

    return load


def _opener(module: str, cls: str) -> Callable[[], Opener]:
    found = _lazy(module, cls)
    return lambda: found().open


def _reader(module: str, function: str) -> Inventory:
    found = _lazy(module, function)
    return lambda path: found()(path)


register_runtime(
    Runtime(
        "onnx",
        _opener("vitgender.runtimes.onnx_runner", "OnnxRunner"),
        lambda p: p.suffix == ".onnx",
        ".onnx files, ONNX Runtime CPU",
        stages=True,
        inventory=_reader("vitgender.runtimes.onnx_runner", "inventory"),
    )
)
register_runtime(
    Runtime(
        "openvino",
        _opener("vitgender.runtimes.openvino_runner", "OpenVinoRunner"),
        lambda p: p.suffix == ".onnx",
        ".onnx files, OpenVINO CPU (by name only)",
        options=frozenset({"threads", "precision"}),
        inventory=_reader("vitgender.runtimes.onnx_runner", "inventory"),
        by_file_type=False,  # a peer on ONNX Runtime's files: chosen with --runtime, never by file type
        bench_settings=lambda precision: _lazy("vitgender.runtimes.openvino_runner", "peer_settings")()(precision),
    )
)
register_runtime(
    Runtime(
        "tflite",
        _opener("vitgender.runtimes.tflite_runner", "TfliteRunner"),
        lambda p: p.suffix == ".tflite",
        ".tflite files, LiteRT XNNPACK",
        stages=True,
        inventory=_reader("vitgender.runtimes.tflite_runner", "inventory"),
    )
)
register_runtime(
    Runtime(
        "savedmodel",
        _opener("vitgender.runtimes.savedmodel_runner", "SavedModelRunner"),
        lambda p: (p / "saved_model.pb").is_file(),
        "SavedModel folders, TensorFlow",
        inventory=_reader("vitgender.runtimes.savedmodel_runner", "inventory"),
    )
)
register_runtime(
    Runtime(
        "executorch",
        _opener("vitgender.runtimes.executorch_runner", "ExecuTorchRunner"),
        lambda p: p.suffix == ".pte",
        ".pte programs, ExecuTorch XNNPACK",
        inventory=_reader("vitgender.runtimes.executorch_runner", "inventory"),
    )
)
register_runtime(
    Runtime(
        "inductor",
        _opener("vitgender.runtimes.inductor_runner", "InductorRunner"),
        lambda p: p.suffix == ".pt2",
        ".pt2 programs (PT2E int8), compiled by torch.compile for this CPU",
        options=frozenset({"threads", "precision"}),
        inventory=_reader("vitgender.runtimes.inductor_runner", "inventory"),
        bench_settings=lambda precision: _lazy("vitgender.runtimes.inductor_runner", "bench_settings")()(precision),
    )
)
register_runtime(
    Runtime(
        "torch",
        _opener("vitgender.runtimes.torch_runner", "TorchRunner"),
        lambda p: (p / "config.json").is_file(),
        "HF checkpoints, PyTorch eager",
        options=frozenset({"threads", "allow_pickle"}),
        stages=True,
        fp16_arithmetic=True,
        metadata=_checkpoint_metadata,
    )
)

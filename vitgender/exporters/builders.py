"""Builders: the code that makes the files the format registry describes.

A builder takes the shared `BuildContext` and the specs it is asked for and returns the
seconds each took. Most build one artifact from the fp32 base ONNX (`per_artifact`); the
TensorFlow builder makes the SavedModel and every TFLite variant in one child process, because
they all derive from one onnx2tf conversion. Heavy libraries are imported inside the builders,
so reading the registry (CLI help, validation) stays cheap.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from vitgender.precision import Precision

if TYPE_CHECKING:
    from vitgender.checkpoint import Checkpoint
    from vitgender.exporters.config import ExportConfig
    from vitgender.exporters.options import ExportOptions
    from vitgender.formats import ArtifactSpec


@dataclass(frozen=True)
class Calibration:
    """Calibration images preprocessed exactly like inference, and where they came from."""

    images: tuple[Path, ...]
    pixels: np.ndarray  # float32 NCHW pixel_values
    provenance: dict


@dataclass(frozen=True)
class Int8Source:
    """What the calibrated int8 artifacts quantize: the checkpoint after scale migration, as ONNX and as HF files.

    Without migration both are the unchanged checkpoint's.
    """

    onnx: Path
    checkpoint: Path
    migration: dict | None  # `Migration.manifest()`, or None when off

    def manifest(self, float_heads: tuple[str, ...]) -> dict:
        return {"scale_migration": self.migration or "off", "float_modules": list(float_heads)}


@dataclass(frozen=True)
class BuildContext:
    checkpoint: Checkpoint
    export_config: ExportConfig
    options: ExportOptions
    scratch: Path  # the temporary export directory; artifacts go to scratch / spec.filename
    base_onnx: Path  # the fp32 ONNX every other format derives from
    base_seconds: float
    calibration: Calibration | None
    on_step: Callable[[str], None] = lambda message: None  # progress of a long step
    migrated: Int8Source | None = None  # the scale-migrated model, when a requested int8 recipe migrates

    def int8_source(self, artifact: str) -> Int8Source:
        """What a calibrated int8 artifact quantizes (its recipe says whether migrated)."""
        if self.options.int8_recipe(artifact).smoothquant:
            return self.migrated
        return Int8Source(self.base_onnx, Path(self.checkpoint.directory), None)

    def float_heads(self, artifact: str) -> tuple[str, ...]:
        """The head modules a calibrated int8 artifact keeps float (none when its recipe says so)."""
        wanted = self.options.int8_recipe(artifact).float_head
        return self.export_config.model.heads(self.checkpoint.hf_class) if wanted else ()

    def target(self, spec: ArtifactSpec) -> Path:
        path = self.scratch / spec.filename
        path.parent.mkdir(parents=True, exist_ok=True)
        return path


@dataclass(frozen=True)
class Built:
    seconds: float
    input_dtype: str | None = None  # when the artifact's input dtype differs from its layout's default
    quantization: dict | None = None  # what a quantizer decided, for the manifest
    fixed_batch: int | None = None  # the one batch size the artifact takes; None: any


class Builder(Protocol):
    def __call__(self, ctx: BuildContext, specs: Sequence[ArtifactSpec]) -> dict[str, Built]: ...


def per_artifact(convert: Callable[[BuildContext, Path], dict | None]) -> Builder:
    """A builder that converts the base ONNX into each requested artifact, one at a time.

    `convert` may return what it decided (a quantization plan) for the manifest.
    """

    def build(ctx: BuildContext, specs: Sequence[ArtifactSpec]) -> dict[str, Built]:
        built = {}
        for spec in specs:
            began = time.perf_counter()
            decided = convert(ctx, ctx.target(spec))
            built[spec.name] = Built(round(time.perf_counter() - began, 2), quantization=decided)
        return built

    build.__name__ = convert.__name__
    return build


def web(builder: Builder) -> Builder:
    """transformers.js reads config.json and preprocessor_config.json beside `onnx/`."""

    def build(ctx: BuildContext, specs: Sequence[ArtifactSpec]) -> dict[str, Built]:
        (ctx.scratch / "web").mkdir(exist_ok=True)
        for name in ("config.json", "preprocessor_config.json"):
            shutil.copyfile(ctx.checkpoint.directory / name, ctx.scratch / "web" / name)
        return builder(ctx, specs)

    return build


def copy_base_onnx(ctx: BuildContext, specs: Sequence[ArtifactSpec]) -> dict[str, Built]:
    for spec in specs:
        shutil.copyfile(ctx.base_onnx, ctx.target(spec))
    return {spec.name: Built(ctx.base_seconds) for spec in specs}


@per_artifact
def onnx_fp16(ctx: BuildContext, target: Path) -> None:
    from vitgender.exporters.quantize import to_fp16

    to_fp16(ctx.base_onnx, target)


@per_artifact
def onnx_int8_dynamic(ctx: BuildContext, target: Path) -> None:
    from vitgender.exporters.quantize import to_int8_dynamic

    to_int8_dynamic(ctx.base_onnx, target)


@per_artifact
def onnx_int8_static(ctx: BuildContext, target: Path) -> dict:
    from vitgender.exporters.quantize import to_int8_static

    options = ctx.options
    source, heads = ctx.int8_source("onnx-int8-static"), ctx.float_heads("onnx-int8-static")
    plan = to_int8_static(
        source.onnx,
        target,
        ctx.export_config.input_name,
        ctx.calibration.pixels,
        method=options.calibration_method,
        preset=options.quant_preset,
        auto_target=options.target,
        max_float=options.quant_max_float,
        float_units=("classifier",) if heads else (),
        progress=ctx.on_step,
    )
    return plan.manifest() | source.manifest(heads)


@per_artifact
def onnx_baked_preprocessing(ctx: BuildContext, target: Path) -> None:
    from vitgender.exporters.baked import bake_preprocessing

    bake_preprocessing(ctx.base_onnx, target, ctx.checkpoint.preprocess, ctx.export_config.input_name)


def _auto_plan(ctx: BuildContext, artifact: str) -> dict | None:
    """What a toolchain's worker needs to plan `artifact` under `--quant-preset auto`, or None.

    The units are named as everywhere else (embeddings, then each block's attention and MLP, in
    graph order); the reference is PyTorch's logits on the calibration images, the decision the
    plan's target is stated against.
    """
    from vitgender.exporters import int8_check
    from vitgender.exporters.options import AUTO_PLANNED

    if ctx.options.quant_preset != "auto" or artifact not in AUTO_PLANNED:
        return None
    stages = ctx.checkpoint.model.stages(ctx.checkpoint.architecture.num_hidden_layers, ctx.checkpoint.config)
    return {
        "target": str(ctx.options.target),
        "max_float": ctx.options.quant_max_float,
        "units": [name for name, _ in stages if name == "embeddings" or name.endswith((" attention", " mlp"))],
        "reference": int8_check.pytorch_logits(ctx.checkpoint.load_model(), ctx.calibration.pixels),
    }


def tensorflow(ctx: BuildContext, specs: Sequence[ArtifactSpec]) -> dict[str, Built]:
    """onnx2tf once -> SavedModel; the TFLite converter -> each requested .tflite variant."""
    from vitgender.exporters import tensorflow as tfx

    pre = ctx.checkpoint.preprocess
    work = ctx.scratch / ".tf-work"
    savedmodel = next((ctx.target(s) for s in specs if s.runtime == "savedmodel"), work / "saved_model")
    tflite = {s.precision: ctx.target(s) for s in specs if s.runtime == "tflite"}
    shape = (ctx.checkpoint.architecture.num_channels, pre.height, pre.width)
    int8 = Precision.INT8 in tflite
    source, heads = (ctx.int8_source("tflite-int8"), ctx.float_heads("tflite-int8")) if int8 else (None, ())
    # The full-integer variant converts the migrated model when its recipe migrates (a conversion of its own).
    separate = source is not None and source.onnx != ctx.base_onnx
    others = {p: t for p, t in tflite.items() if not (separate and p is Precision.INT8)}
    plan = _auto_plan(ctx, "tflite-int8") if int8 else None
    converted: dict = {"seconds": {}, "quantization": {}, "dynamic_batch": True}
    if others or not separate or any(s.runtime == "savedmodel" for s in specs):
        converted = tfx.convert(
            ctx.base_onnx,
            work,
            savedmodel,
            others,
            input_name=ctx.export_config.input_name,
            shape=shape,
            representative=ctx.calibration.pixels.transpose(0, 2, 3, 1) if int8 and not separate else None,
            int8_io=ctx.options.tflite_int8_io,
            float_head=bool(heads),
            plan=None if separate else plan,
        )
    if separate:
        shutil.rmtree(work, ignore_errors=True)
        migrated = tfx.convert(
            source.onnx,
            work,
            work / "migrated_saved_model",
            {Precision.INT8: tflite[Precision.INT8]},
            input_name=ctx.export_config.input_name,
            shape=shape,
            representative=ctx.calibration.pixels.transpose(0, 2, 3, 1),
            int8_io=ctx.options.tflite_int8_io,
            float_head=bool(heads),
            plan=plan,
        )
        converted["seconds"][Precision.INT8.value] = (
            migrated["seconds"][Precision.INT8.value] + migrated["seconds"]["savedmodel"]
        )
        converted["quantization"][Precision.INT8.value] = migrated["quantization"][Precision.INT8.value]
        converted["dynamic_batch"] = converted["dynamic_batch"] and migrated["dynamic_batch"]
    if int8:
        converted["quantization"][Precision.INT8.value] |= source.manifest(heads)
    shutil.rmtree(work, ignore_errors=True)
    int8_io = "int8" if ctx.options.tflite_int8_io else None  # full-integer I/O changes that artifact's input
    seconds, plans = converted["seconds"], converted["quantization"]
    fixed_batch = None if converted["dynamic_batch"] else 1
    return {
        s.name: Built(
            seconds["savedmodel" if s.runtime == "savedmodel" else s.precision.value],
            int8_io if s.runtime == "tflite" and s.precision is Precision.INT8 else None,
            plans.get(s.precision.value) if s.runtime == "tflite" else None,
            fixed_batch,
        )
        for s in specs
    }


# PT2E quantization per ExecuTorch int8 artifact: static calibrates one scale per activation tensor;
# dynamic lets XNNPACK quantize each row of a linear's input at run time (weights per channel either way).
_PT2E_SCHEMES = {
    Precision.INT8: "PT2E XNNPACKQuantizer, static symmetric int8 GEMM inputs (residual adds float), per-channel weights",
    Precision.INT8_DYNAMIC: "PT2E XNNPACKQuantizer, dynamic per-row int8 activations, per-channel weights",
}
# The `inductor` runtime's programs (X86InductorQuantizer): uint8 activations per tensor, GEMM outputs float.
_INDUCTOR_SCHEMES = {
    Precision.INT8: "PT2E X86InductorQuantizer, static uint8 activations per tensor, per-channel weights",
    Precision.INT8_DYNAMIC: "PT2E X86InductorQuantizer, dynamic uint8 activations per tensor (range measured "
    "per call over the batch), per-channel weights",
}


def executorch(ctx: BuildContext, specs: Sequence[ArtifactSpec]) -> dict[str, Built]:
    """torch.export -> (PT2E int8, calibrated) -> XNNPACK-lowered .pte, in the ExecuTorch environment;
    for the `inductor` runtime (`pt2-int8`, `pt2-int8-dynamic`) the PT2E graph for x86 Inductor, saved as a .pt2 program.

    Runs a `vitgender.toolchains.executorch_worker` job under `.venv-executorch` (see
    `vitgender.toolchains.side_env`): the checkpoint is read there from its directory, the
    calibration pixels from a .npy file.
    """
    from vitgender.exporters.options import AUTO_PLANNED
    from vitgender.toolchains.side_env import run_executorch_job

    work = ctx.scratch / ".executorch-work"
    pre, arch = ctx.checkpoint.preprocess, ctx.checkpoint.architecture
    built = {}
    for spec in specs:
        began = time.perf_counter()
        pt2 = spec.runtime == "inductor"  # saved as a .pt2 program for Inductor, not lowered to a .pte
        job = {
            "checkpoint": Path(ctx.checkpoint.directory),
            "hf_class": ctx.checkpoint.hf_class,
            "target": ctx.target(spec),
            "precision": spec.precision.value,
            "shape": [arch.num_channels, pre.height, pre.width],
            "program": "pt2" if pt2 else "pte",
            "int8_attention": ctx.options.int8_attention,  # the worker applies it to static pt2 programs only
        }
        quantization = None
        if spec.needs_calibration:
            source, heads = ctx.int8_source(spec.name), ctx.float_heads(spec.name)
            work.mkdir(exist_ok=True)
            np.save(work / "calibration.npy", ctx.calibration.pixels)
            job |= {
                "checkpoint": source.checkpoint,
                "calibration": work / "calibration.npy",
                "float_modules": [f"model.{h}" for h in heads],  # the worker wraps the model
            }
            if ctx.options.quant_preset == "auto" and spec.name in AUTO_PLANNED:
                job["plan"] = {"target": str(ctx.options.target), "max_float": ctx.options.quant_max_float}
            scheme = (_INDUCTOR_SCHEMES if pt2 else _PT2E_SCHEMES)[spec.precision]
            quantization = {"scheme": scheme, **source.manifest(heads)}
        what = f"{spec.name}: {'PT2E' if pt2 else 'ExecuTorch'} export"
        lowered = run_executorch_job("export", job, what=what, workdir=work)
        built[spec.name] = Built(
            round(time.perf_counter() - began, 2),
            quantization=quantization and {**quantization, **lowered},
        )
    shutil.rmtree(work, ignore_errors=True)
    return built


# The same worker job (PT2E in the ExecuTorch environment), saved as a .pt2 program instead of lowered:
# its own name, so its export step is its own line.
pt2_int8 = executorch

# The web (transformers.js) layout's builders, by the names the format registry gives them.
web_copy_base_onnx = web(copy_base_onnx)
web_onnx_int8_dynamic = web(onnx_int8_dynamic)
web_onnx_fp16 = web(onnx_fp16)

"""`main_export`: one HF ViT checkpoint -> every requested artifact, with a manifest.

Like optimum's `main_export`: one entry point that runs the base ONNX export once and then the
builders the format registry names. Everything is written into a temporary sibling directory
and renamed into place only when every requested step succeeded, so a failed or killed export
never leaves a half-written artifact; the error names the step that failed.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from vitgender import checkpoint
from vitgender.exporters import output
from vitgender.errors import ToolchainError, UsageError, VitgenderError
from vitgender.exporters.builders import BuildContext, Built, Calibration
from vitgender.exporters.config import config_for
from vitgender.exporters.formats import FORMATS, ArtifactSpec, InputLayout, parse_formats
from vitgender.exporters.manifest import describe, write_manifest
from vitgender.exporters.quantize import STATIC_PRESETS
from vitgender.inputs import IMAGE_SUFFIXES
from vitgender.preprocess import ALPHA_POLICIES, Preprocessor
from vitgender.runtimes.sidecar import Sidecar, write_sidecar

CALIBRATION_DIR = Path(__file__).resolve().parent.parent / "calibration" / "utkface-train-64"
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


class ExportError(ToolchainError):
    """A conversion step failed on a valid checkpoint (exit 3: the tool chain, not the input)."""


@dataclass
class ExportOptions:
    opset: int = 20
    calibration: Path = field(default=CALIBRATION_DIR)
    calibration_method: str = "minmax"
    quant_preset: str = "safe"
    quant_target: float | None = None  # `auto`: q90 |Δlogit| on the calibration images (None: the int8-dynamic budget)
    tflite_int8_io: bool = False
    alpha: str | None = None  # the alpha policy the sidecars record (None: the checkpoint's, white by default)

    def __post_init__(self) -> None:
        if self.calibration_method not in CALIBRATION_METHODS:
            raise UsageError(self.calibration_method, f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}")
        if self.quant_preset not in STATIC_PRESETS:
            raise UsageError(self.quant_preset, f"quant preset must be one of {', '.join(STATIC_PRESETS)}")
        if self.quant_target is not None and not self.quant_target > 0:
            raise UsageError(str(self.quant_target), "quant target must be a positive q90 |logit difference|")
        if self.alpha is not None and self.alpha not in ALPHA_POLICIES:
            raise UsageError(f"--alpha {self.alpha}", f"alpha policy must be one of {', '.join(ALPHA_POLICIES)}")


def calibration_images(folder: Path, limit: int = 256) -> list[Path]:
    if not folder.is_dir():
        raise UsageError(str(folder), "calibration folder does not exist")
    images = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not images:
        raise UsageError(str(folder), "calibration folder contains no images")
    return images


def _calibration(options: ExportOptions, ckpt: checkpoint.Checkpoint) -> Calibration:
    images = calibration_images(options.calibration)
    pre = Preprocessor(ckpt.preprocess)
    pixels = pre([pre.decode(p) for p in images])
    provenance = {"images": [p.name for p in images], "count": len(images), "folder": str(options.calibration),
                  "method": options.calibration_method, "preset": options.quant_preset,
                  "normalisation": ckpt.preprocess.to_dict()}
    return Calibration(tuple(images), pixels, provenance)


def input_spec(spec: ArtifactSpec, ctx: BuildContext, built: Built) -> dict:
    """The input an artifact takes, as written to its manifest entry and sidecar."""
    pre, channels = ctx.checkpoint.preprocess, ctx.checkpoint.architecture.num_channels
    name, dtype = ctx.export_config.input_name, built.input_dtype
    batch = built.fixed_batch or "batch"
    if spec.layout is InputLayout.NCHW:
        return {"name": name, "layout": "NCHW", "dtype": dtype or "float32", "shape": [batch, channels, pre.height, pre.width]}
    if spec.layout is InputLayout.NHWC_UINT8:
        from vitgender.exporters.baked import RAW_INPUT

        return {"name": RAW_INPUT, "layout": "NHWC", "dtype": dtype or "uint8",
                "shape": [batch, pre.height, pre.width, channels],
                "note": f"resize to {pre.height}x{pre.width} ({pre.resample_name}); "
                        "rescale/normalise/transpose are inside the graph"}
    fixed = {"note": f"batch fixed at {batch} by onnx2tf (the graph reads a tensor shape)"} if built.fixed_batch else {}
    return {"name": name, "layout": "NHWC", "dtype": dtype or "float32", "shape": [batch, pre.height, pre.width, channels],
            **fixed}


def _run_step(name: str, fn: Callable, *args, **kwargs):
    """Run one conversion step; anything but our own errors becomes an ExportError naming it."""
    try:
        return fn(*args, **kwargs)
    except VitgenderError:
        raise
    except Exception as exc:  # noqa: BLE001 - converters raise anything; the user needs the step and reason
        first = str(exc).splitlines()[0][:300] if str(exc) else ""
        raise ExportError(name, f"step failed: {type(exc).__name__}: {first}") from exc


def _by_builder(specs: Sequence[ArtifactSpec]) -> list[list[ArtifactSpec]]:
    """Specs grouped by builder, in registry order, so a shared builder (TensorFlow) runs once."""
    groups: dict[object, list[ArtifactSpec]] = {}
    for spec in sorted(specs, key=lambda s: list(FORMATS).index(s.name)):
        groups.setdefault(spec.builder, []).append(spec)
    return list(groups.values())


def _disk_full(exc: BaseException) -> bool:
    text = str(exc)
    return (isinstance(exc, OSError) and exc.errno in output.DISK_FULL) or "No space left on device" in text \
        or "File too large" in text or "Disk quota exceeded" in text


def main_export(
    model: str | Path | None,
    out: Path | None,
    formats: str | Sequence[str] = "onnx",
    options: ExportOptions | None = None,
    on_step: Callable[[str], None] = lambda name: None,
    overwrite: bool = False,
) -> Path:
    """Export `model` (None = embedded default) to `out` (default artifacts/<model-name>/).

    An existing export of the same checkpoint in `out` is merged (the formats built now replace
    theirs); anything else already there is refused unless `overwrite`.
    """
    options = options or ExportOptions()
    wanted = parse_formats(formats)
    ckpt = checkpoint.open_checkpoint(model)
    export_config = config_for(ckpt.model_type)
    calibration = _calibration(options, ckpt) if any(s.needs_calibration for s in wanted) else None
    name = "vitgender-default" if model is None else Path(str(model).rstrip("/")).name.replace("@", "-")
    out = Path(out) if out is not None else Path("artifacts") / name
    existing = output.check_target(out, ckpt.directory, ckpt.sha256, overwrite)
    output.sweep_stale(out)
    scratch = output.make_scratch(out)
    try:
        artifacts = _build(ckpt, export_config, options, calibration, wanted, scratch, on_step)
        if existing is not None:
            rebuilt = {a["name"] for a in artifacts}
            kept = [e for e in existing["artifacts"] if e["name"] not in rebuilt]
            output.carry_over(out, scratch, [a["path"] for a in artifacts])
            order = {n: i for i, n in enumerate(FORMATS)}
            artifacts = sorted(kept + artifacts, key=lambda a: order.get(a["name"], len(order)))
        model_info = {"source": str(ckpt.directory), "name": name, "model_type": ckpt.model_type,
                      "labels": list(ckpt.labels), "image_size": [ckpt.preprocess.height, ckpt.preprocess.width],
                      "preprocessor": ckpt.preprocess.to_dict(), "checkpoint_sha256": ckpt.sha256}
        write_manifest(scratch, model_info, artifacts)
        output.publish(scratch, out)
    except (OSError, ExportError) as exc:
        if _disk_full(exc):
            raise ExportError(str(out.parent), f"out of disk space while exporting ({str(exc)[-200:]}); "
                                               "nothing was written") from None
        if isinstance(exc, ExportError):
            raise
        raise ExportError(str(out), f"cannot write the export ({exc.strerror or exc})") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return out


def _build(ckpt: checkpoint.Checkpoint, export_config, options: ExportOptions, calibration: Calibration | None,
           wanted: Sequence[ArtifactSpec], scratch: Path, on_step: Callable[[str], None]) -> list[dict]:
    """The base ONNX once, then each builder once; returns the manifest entries of what was built."""
    from vitgender.exporters.onnx_export import export_onnx

    on_step("onnx: torch.onnx.export (dynamo)")  # every other format derives from it
    began = time.perf_counter()
    base = scratch / ".base" / "model.onnx"
    base.parent.mkdir()
    _run_step("onnx", export_onnx, ckpt.load_model(), export_config, ckpt.preprocess.height,
              ckpt.preprocess.width, base, options.opset)
    ctx = BuildContext(ckpt, export_config, options, scratch, base, round(time.perf_counter() - began, 2), calibration,
                       on_step)
    built: dict[str, Built] = {}
    for group in _by_builder(wanted):
        names = ", ".join(s.name for s in group)
        on_step(f"{names}: {group[0].toolchain}")
        built.update(_run_step(names, group[0].builder, ctx, group))
    shutil.rmtree(base.parent)
    artifacts = []
    for spec in sorted(wanted, key=lambda s: list(FORMATS).index(s.name)):
        path = scratch / spec.filename
        io = input_spec(spec, ctx, built[spec.name])
        preprocess = ckpt.preprocess if options.alpha is None else replace(ckpt.preprocess, alpha=options.alpha)
        write_sidecar(path, Sidecar(ckpt.labels, preprocess, spec.precision, ckpt.architecture), io)
        extra = {"converter": spec.toolchain, **({"opset": options.opset} if spec.runtime == "onnx" else {})}
        if spec.needs_calibration:
            extra["calibration"] = calibration.provenance
        if built[spec.name].quantization:
            extra["quantization"] = built[spec.name].quantization
        artifacts.append(describe(scratch, spec.name, spec.runtime, spec.precision, path, io,
                                  seconds=built[spec.name].seconds, **extra))
    return artifacts

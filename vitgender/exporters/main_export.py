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
from dataclasses import replace
from pathlib import Path

from vitgender import checkpoint
from vitgender.errors import ToolchainError, UsageError, VitgenderError
from vitgender.exporters import builders, merge
from vitgender.exporters.builders import BuildContext, Built, Calibration, Int8Source
from vitgender.exporters.config import config_for
from vitgender.exporters.options import CALIBRATION_DIR, CALIBRATION_LIMIT, MIN_CALIBRATION_IMAGES, ExportOptions
from vitgender.formats import FORMATS, ArtifactSpec, InputLayout, parse_formats
from vitgender.inputs import IMAGE_SUFFIXES
from vitgender.manifest import describe, write_manifest
from vitgender.output_folders import atomic_dir
from vitgender.preprocess import Preprocessor
from vitgender.runtimes.sidecar import Sidecar, write_sidecar


class ExportError(ToolchainError):
    """A conversion step failed on a valid checkpoint (exit 3: the tool chain, not the input)."""


def calibration_images(folder: Path, limit: int = CALIBRATION_LIMIT) -> tuple[list[Path], int]:
    """At most `limit` of the folder's images, and how many it has.

    A larger folder is sampled evenly over the name order, not cut after the first `limit`: cut,
    a folder of class subfolders would calibrate on the first classes alone.
    """
    if not folder.is_dir():
        raise UsageError(str(folder), "calibration folder does not exist")
    images = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise UsageError(str(folder), "calibration folder contains no images")
    if len(images) > limit:
        return [images[round(k * (len(images) - 1) / (limit - 1))] for k in range(limit)], len(images)
    return images, len(images)


def _calibration(options: ExportOptions, ckpt: checkpoint.Checkpoint) -> Calibration:
    """Decode and preprocess the calibration images, refusing a folder that cannot calibrate (exit 2)."""
    pre = Preprocessor(ckpt.preprocess)
    decoded, failures = [], []
    chosen, found = calibration_images(options.calibration, options.calibration_limit)
    for path in chosen:
        try:
            decoded.append((path, pre.decode(path)))
        except VitgenderError as exc:
            failures.append(str(exc))
    if len(decoded) < MIN_CALIBRATION_IMAGES:
        first = f" (first failure: {failures[0]})" if failures else ""
        raise UsageError(
            str(options.calibration),
            f"{len(decoded)} decodable calibration images, at least {MIN_CALIBRATION_IMAGES} needed{first}",
        )
    channels = ckpt.architecture.num_channels
    if channels != 3:
        raise UsageError(
            str(options.calibration), f"calibration images decode to RGB (3 channels); the model takes {channels}"
        )
    images = tuple(path for path, _ in decoded)
    pixels = pre([image for _, image in decoded])
    provenance = {
        "images": [p.name for p in images],
        "count": len(images),
        "found": found,  # more than options.calibration_limit: `images` were sampled evenly over the name order
        "skipped_undecodable": len(failures),
        "folder": str(options.calibration),
        "method": options.calibration_method,
        "preset": options.quant_preset,
        "normalisation": ckpt.preprocess.to_dict(),
    }
    return Calibration(images, pixels, provenance)


def calibration_warning(ckpt: checkpoint.Checkpoint, options: ExportOptions) -> str | None:
    """One line when a model other than the default is calibrated on the bundled faces."""
    if Path(options.calibration).resolve() != CALIBRATION_DIR.resolve():
        return None
    if Path(ckpt.directory).resolve() == checkpoint.DEFAULT_MODEL_DIR.resolve():
        return None
    return (
        f"calibrating {Path(ckpt.directory).name} on the bundled UTKFace faces: int8 is only as good as its "
        "calibration; pass --calibration DIR with a few hundred of your model's own images"
    )


def input_spec(spec: ArtifactSpec, ctx: BuildContext, built: Built) -> dict:
    """The input an artifact takes, as written to its manifest entry and sidecar."""
    pre, channels = ctx.checkpoint.preprocess, ctx.checkpoint.architecture.num_channels
    name, dtype = ctx.export_config.input_name, built.input_dtype
    batch = built.fixed_batch or "batch"
    if spec.layout is InputLayout.NCHW:
        return {
            "name": name,
            "layout": "NCHW",
            "dtype": dtype or "float32",
            "shape": [batch, channels, pre.height, pre.width],
        }
    if spec.layout is InputLayout.NHWC_UINT8:
        from vitgender.exporters.baked import RAW_INPUT

        return {
            "name": RAW_INPUT,
            "layout": "NHWC",
            "dtype": dtype or "uint8",
            "shape": [batch, pre.height, pre.width, channels],
            "note": f"resize to {pre.height}x{pre.width} ({pre.resample_name}); "
            "rescale/normalise/transpose are inside the graph",
        }
    fixed = {"note": f"batch fixed at {batch} by onnx2tf (the graph reads a tensor shape)"} if built.fixed_batch else {}
    return {
        "name": name,
        "layout": "NHWC",
        "dtype": dtype or "float32",
        "shape": [batch, pre.height, pre.width, channels],
        **fixed,
    }


def _run_step(name: str, fn: Callable, *args, **kwargs):
    """Run one conversion step; anything but our own errors becomes an ExportError naming it."""
    try:
        return fn(*args, **kwargs)
    except VitgenderError:
        raise
    except Exception as exc:  # converters raise anything; re-raised as ExportError naming the step and reason
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
    return (
        (isinstance(exc, OSError) and exc.errno in merge.DISK_FULL)
        or "No space left on device" in text
        or "File too large" in text
        or "Disk quota exceeded" in text
    )


def main_export(
    model: str | Path | None,
    out: Path | None,
    formats: str | Sequence[str] = "onnx",
    options: ExportOptions | None = None,
    on_step: Callable[[str], None] = lambda name: None,
    overwrite: bool = False,
    on_warning: Callable[[str], None] = lambda line: None,
) -> Path:
    """Export `model` (None = embedded default) to `out` (default artifacts/<model-name>/).

    An existing export of the same checkpoint in `out` is merged (the formats built now replace
    theirs); an export of another model is replaced only with `overwrite`; a folder that is not
    an export is never touched (see `vitgender.output_folders`).
    """
    options = options or ExportOptions()
    wanted = parse_formats(formats)
    ckpt = checkpoint.open_checkpoint(model)
    export_config = config_for(ckpt.model_type)
    calibration = None
    if any(s.needs_calibration for s in wanted):
        calibration = _calibration(options, ckpt)
        if warning := calibration_warning(ckpt, options):
            on_warning(warning)
        if (found := calibration.provenance["found"]) > options.calibration_limit:
            on_warning(
                f"calibrating on {options.calibration_limit} of the {found} images in {options.calibration}, "
                "sampled evenly over their names (--calibration-limit)"
            )
    if options.int8_attention:
        from vitgender.runtimes import int8_attention

        if not int8_attention.available():
            on_warning(
                "--int8-attention: torchao's fused int8 attention kernel is not available here (torchao not "
                "installed, or no kernel for this CPU in its build): the program's quantized attention runs "
                "unfused on this machine, without the speed-up"
            )
    name = "vitgender-default" if model is None else Path(str(model).rstrip("/")).name.replace("@", "-")
    out = Path(out) if out is not None else Path("artifacts") / name
    existing = merge.existing_export(out, ckpt.directory, ckpt.sha256, overwrite)
    try:
        with atomic_dir(out, "export", overwrite=overwrite, recognise=merge.is_export, updates=True) as scratch:
            artifacts = _build(ckpt, export_config, options, calibration, wanted, scratch, on_step)
            if existing is not None:
                rebuilt = {a["name"] for a in artifacts}
                kept = [e for e in existing["artifacts"] if e["name"] not in rebuilt]
                merge.carry_over(out, scratch, [a["path"] for a in artifacts])
                order = {n: i for i, n in enumerate(FORMATS)}
                artifacts = sorted(kept + artifacts, key=lambda a: order.get(a["name"], len(order)))
            model_info = {
                "source": str(ckpt.directory),
                "name": name,
                "model_type": ckpt.model_type,
                "labels": list(ckpt.labels),
                "image_size": [ckpt.preprocess.height, ckpt.preprocess.width],
                "preprocessor": ckpt.preprocess.to_dict(),
                "checkpoint_sha256": ckpt.sha256,
            }
            write_manifest(scratch, model_info, artifacts)
    except (OSError, VitgenderError) as exc:
        cause = exc.__context__ if isinstance(exc, UsageError) and exc.__context__ is not None else exc  # atomic_dir's
        if _disk_full(cause):
            raise ExportError(
                str(out.parent), f"out of disk space while exporting ({str(cause)[-200:]}); " "nothing was written"
            ) from None
        if isinstance(exc, VitgenderError):
            raise
        raise ExportError(str(out), f"cannot write the export ({exc.strerror or exc})") from None
    return out


def _migrated(
    ckpt: checkpoint.Checkpoint,
    export_config,
    options: ExportOptions,
    calibration: Calibration,
    wanted: Sequence[ArtifactSpec],
    base: Path,
    on_step: Callable[[str], None],
) -> Int8Source | None:
    """The scale-migrated model (ONNX and HF files) when a requested int8 artifact's recipe migrates."""
    from vitgender.exporters.onnx_export import export_onnx
    from vitgender.exporters.smoothing import migrate_scales

    alphas = {options.int8_recipe(s.name).smoothquant for s in wanted if s.needs_calibration} - {0.0}
    if not alphas:
        return None
    (alpha,) = alphas  # one value: an explicit --smoothquant applies to every artifact
    on_step(f"int8: SmoothQuant scale migration (alpha {alpha}) on the calibration images")
    model = ckpt.load_model()
    migration = migrate_scales(model, export_config.model, calibration.pixels, alpha)
    folder = base.parent / "migrated"
    model.save_pretrained(folder, safe_serialization=True)
    export_onnx(
        model, export_config, ckpt.preprocess.height, ckpt.preprocess.width, folder / "model.onnx", options.opset
    )
    return Int8Source(folder / "model.onnx", folder, migration.manifest())


def _build(
    ckpt: checkpoint.Checkpoint,
    export_config,
    options: ExportOptions,
    calibration: Calibration | None,
    wanted: Sequence[ArtifactSpec],
    scratch: Path,
    on_step: Callable[[str], None],
) -> list[dict]:
    """The base ONNX once, then each builder once; returns the manifest entries of what was built."""
    from vitgender.exporters.onnx_export import export_onnx

    on_step("onnx: torch.onnx.export (dynamo)")  # every other format derives from it
    began = time.perf_counter()
    base = scratch / ".base" / "model.onnx"
    base.parent.mkdir()
    _run_step(
        "onnx",
        export_onnx,
        ckpt.load_model(),
        export_config,
        ckpt.preprocess.height,
        ckpt.preprocess.width,
        base,
        options.opset,
    )
    seconds = round(time.perf_counter() - began, 2)
    migrated = None
    if calibration is not None:
        migrated = _run_step(
            "int8: SmoothQuant", _migrated, ckpt, export_config, options, calibration, wanted, base, on_step
        )
    ctx = BuildContext(ckpt, export_config, options, scratch, base, seconds, calibration, on_step, migrated)
    built: dict[str, Built] = {}
    for group in _by_builder(wanted):
        names = ", ".join(s.name for s in group)
        on_step(f"{names}: {group[0].toolchain}")
        built.update(_run_step(names, getattr(builders, group[0].builder), ctx, group))
    artifacts = []
    ordered = sorted(wanted, key=lambda s: list(FORMATS).index(s.name))
    for spec in ordered:
        path = scratch / spec.filename
        io = input_spec(spec, ctx, built[spec.name])
        preprocess = ckpt.preprocess if options.alpha is None else replace(ckpt.preprocess, alpha=options.alpha)
        write_sidecar(path, Sidecar(ckpt.labels, preprocess, spec.precision, ckpt.architecture), io)
        extra = {"converter": spec.toolchain, **({"opset": options.opset} if spec.runtime == "onnx" else {})}
        if spec.needs_calibration:
            extra["calibration"] = calibration.provenance
        if built[spec.name].quantization:
            extra["quantization"] = built[spec.name].quantization
        artifacts.append(
            describe(
                scratch, spec.name, spec.runtime, spec.precision, path, io, seconds=built[spec.name].seconds, **extra
            )
        )
    if calibration is not None:
        _check_int8(
            ctx, [(spec, entry) for spec, entry in zip(ordered, artifacts, strict=True) if spec.needs_calibration]
        )
    shutil.rmtree(base.parent)
    return artifacts


def _check_int8(ctx: BuildContext, built: list[tuple[ArtifactSpec, dict]]) -> None:
    """Measure every calibrated int8 artifact against PyTorch and fp32 speed (`int8_check`), into its entry."""
    from vitgender.exporters import int8_check

    pixels, target = ctx.calibration.pixels, ctx.options.target
    ctx.on_step(f"int8 check: {len(built)} artifact(s) against PyTorch on {len(pixels)} calibration images")
    reference = int8_check.pytorch_logits(ctx.checkpoint.load_model(), pixels)
    fp32 = int8_check.fp32_speed(ctx.base_onnx, ctx.export_config.input_name, pixels)
    for spec, entry in built:
        check = int8_check.check_artifact(spec.runtime, ctx.scratch / spec.filename, reference, pixels, target)
        entry["quantization"] = {**(entry.get("quantization") or {}), "check": check, "fp32_images_per_second": fp32}

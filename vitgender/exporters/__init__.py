"""`main_export`: one HF ViT checkpoint -> every deployable artifact, with a manifest.

Like optimum's `main_export`: one entry point, a registry of formats, one config per
architecture. Everything is written into a temporary sibling directory and renamed into
place only when every requested step succeeded, so a failed or killed export never leaves a
half-written artifact; the error names the step that failed.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitgender import checkpoint
from vitgender.errors import UsageError, VitgenderError
from vitgender.exporters.config import config_for
from vitgender.exporters.manifest import describe, write_manifest
from vitgender.inputs import IMAGE_SUFFIXES
from vitgender.preprocess import Preprocessor, decode_image
from vitgender.runtimes.sidecar import write_sidecar

# name -> (format, precision, file name, needs calibration)
FORMATS: dict[str, tuple[str, str, str, bool]] = {
    "onnx": ("onnx", "fp32", "model.onnx", False),
    "onnx-fp16": ("onnx", "fp16", "model_fp16.onnx", False),
    "onnx-int8-dynamic": ("onnx", "int8-dynamic", "model_int8_dynamic.onnx", False),
    "onnx-int8-static": ("onnx", "int8", "model_int8_static.onnx", True),
    # raw uint8 RGB pixels in (NHWC, resized to the model's size), preprocessing inside the graph
    "onnx-uint8-nhwc": ("onnx", "fp32", "model_uint8_nhwc.onnx", False),
    "savedmodel": ("savedmodel", "fp32", "saved_model", False),
    "tflite": ("tflite", "fp32", "model_float32.tflite", False),
    "tflite-fp16": ("tflite", "fp16", "model_float16.tflite", False),
    "tflite-int8-dynamic": ("tflite", "int8-dynamic", "model_int8_dynamic.tflite", False),
    "tflite-int8": ("tflite", "int8", "model_int8.tflite", True),
    # transformers.js / optimum layout: web/{config,preprocessor_config}.json + web/onnx/*.onnx
    "web-onnx": ("onnx", "fp32", "web/onnx/model.onnx", False),
    "web-onnx-quantized": ("onnx", "int8-dynamic", "web/onnx/model_quantized.onnx", False),
    "web-onnx-fp16": ("onnx", "fp16", "web/onnx/model_fp16.onnx", False),
}
GROUPS = {
    "all": list(FORMATS),
    "onnx-all": [f for f in FORMATS if f.startswith("onnx")],
    "tf": [f for f in FORMATS if FORMATS[f][0] in ("savedmodel", "tflite")],
    "web": [f for f in FORMATS if f.startswith("web-")],
}
CALIBRATION_DIR = Path(__file__).resolve().parent.parent / "calibration" / "utkface-train-64"


class ExportError(VitgenderError):
    """A conversion step failed (exit 1: the input was fine, the tool chain was not)."""

    exit_code = 1


@dataclass
class ExportOptions:
    opset: int = 20
    calibration: Path = CALIBRATION_DIR
    calibration_method: str = "minmax"
    quant_preset: str = "safe"
    tflite_int8_io: bool = False


def parse_formats(spec: str | Sequence[str]) -> list[str]:
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    out: list[str] = []
    for name in names:
        for expanded in GROUPS.get(name, [name]):
            if expanded not in FORMATS:
                raise UsageError(name, f"unknown format (choose from {', '.join([*GROUPS, *FORMATS])})")
            if expanded not in out:
                out.append(expanded)
    if not out:
        raise UsageError("--formats", "no format given")
    return out


def calibration_images(folder: Path, limit: int = 256) -> list[Path]:
    if not folder.is_dir():
        raise UsageError(str(folder), "calibration folder does not exist")
    images = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not images:
        raise UsageError(str(folder), "calibration folder contains no images")
    return images


def _onnx2tf_sample(images: list[Path]) -> np.ndarray:
    """The 20x128x128x3 RGB [0, 1] sample onnx2tf insists on (it downloads one otherwise)."""
    picked = [decode_image(p).resize((128, 128)) for p in (images * 20)[:20]]
    return np.stack([np.asarray(p, dtype=np.float32) / 255.0 for p in picked])


def _step(name: str, fn: Callable, *args, **kwargs):
    began = time.perf_counter()
    try:
        result = fn(*args, **kwargs)
    except VitgenderError:
        raise
    except Exception as exc:  # noqa: BLE001 - converters raise anything; the user needs the step and reason
        raise ExportError(name, f"step failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}") from exc
    return result, round(time.perf_counter() - began, 2)


def main_export(
    model: str | Path | None,
    out: Path | None,
    formats: str | Sequence[str] = "onnx",
    options: ExportOptions | None = None,
    on_step: Callable[[str], None] = lambda name: None,
) -> Path:
    """Export `model` (None = embedded default) to `out` (default artifacts/<model-name>/)."""
    import os

    os.environ.setdefault("USE_TF", "0")
    options = options or ExportOptions()
    wanted = parse_formats(formats)
    directory = checkpoint.resolve(model)
    calibration = calibration_images(options.calibration) if any(FORMATS[f][3] for f in wanted) else []
    torch_model = checkpoint.load_model(directory)
    model_type = torch_model.config.model_type
    export_config = config_for(model_type)
    pre_cfg = checkpoint.preprocess_config(directory)
    labels = tuple(torch_model.config.id2label[i] for i in range(torch_model.config.num_labels))
    channels = torch_model.config.num_channels
    name = "vitgender-default" if model is None else Path(str(model).rstrip("/")).name.replace("@", "-")
    out = Path(out) if out is not None else Path("artifacts") / name
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent)).resolve()
    except OSError as exc:
        raise UsageError(str(out), f"cannot write there ({exc.strerror})") from None

    pre = Preprocessor(pre_cfg)
    calib_pixels = pre([decode_image(p) for p in calibration]) if calibration else None
    provenance = None
    if calibration:
        provenance = {"images": [p.name for p in calibration], "count": len(calibration),
                      "folder": str(options.calibration), "method": options.calibration_method,
                      "preset": options.quant_preset, "normalisation": pre_cfg.to_dict()}
    spec = export_config.input_spec(channels, pre_cfg.height, pre_cfg.width)
    nhwc = {**spec, "layout": "NHWC", "shape": [1, pre_cfg.height, pre_cfg.width, channels],
            "note": "batch fixed at 1 by onnx2tf; feed images one at a time"}
    artifacts: list[dict] = []

    def record(key: str, path: Path, seconds: float, input_spec: dict, **extra) -> None:
        fmt, precision, _, _ = FORMATS[key]
        write_sidecar(path, labels, pre_cfg, precision, input_spec)
        artifacts.append(describe(scratch, key, fmt, precision, path, input_spec, seconds=seconds, **extra))

    try:
        from vitgender.exporters import baked, onnx_export, quantize

        on_step("onnx: torch.onnx.export (dynamo)")  # every other format derives from it
        path, seconds = _step("onnx", onnx_export.export_onnx, torch_model, export_config, pre_cfg.height,
                              pre_cfg.width, scratch / FORMATS["onnx"][2], options.opset)
        if "onnx" in wanted:
            record("onnx", path, seconds, spec, opset=options.opset)
        fp32_onnx = scratch / FORMATS["onnx"][2]
        static_args = (export_config.input_name, calib_pixels)
        static_kwargs = {"method": options.calibration_method, "preset": options.quant_preset}
        ort_variants = {
            "web-onnx": (shutil.copyfile, (), {}),
            "onnx-fp16": (quantize.to_fp16, (), {}),
            "web-onnx-fp16": (quantize.to_fp16, (), {}),
            "onnx-int8-dynamic": (quantize.to_int8_dynamic, (), {}),
            "web-onnx-quantized": (quantize.to_int8_dynamic, (), {}),
            "onnx-int8-static": (quantize.to_int8_static, static_args, static_kwargs),
            "onnx-uint8-nhwc": (baked.bake_preprocessing, (pre_cfg, export_config.input_name), {}),
        }
        if any(k.startswith("web-") for k in wanted):
            (scratch / "web" / "onnx").mkdir(parents=True)
            for name in ("config.json", "preprocessor_config.json"):
                shutil.copyfile(directory / name, scratch / "web" / name)
        for key, (fn, args, kwargs) in ort_variants.items():
            if key in wanted:
                on_step(f"{key}: onnxruntime")
                path, seconds = _step(key, fn, fp32_onnx, scratch / FORMATS[key][2], *args, **kwargs)
                input_spec = spec if key != "onnx-uint8-nhwc" else {
                    "name": baked.RAW_INPUT, "layout": "NHWC", "dtype": "uint8",
                    "shape": ["batch", pre_cfg.height, pre_cfg.width, channels],
                    "note": f"resize to {pre_cfg.height}x{pre_cfg.width} ({pre_cfg.resample_name}); "
                            "rescale/normalise/transpose are inside the graph"}
                record(key, Path(path), seconds, input_spec, opset=options.opset,
                       **({"calibration": provenance} if key == "onnx-int8-static" else {}))
        tf_wanted = [k for k in wanted if FORMATS[k][0] in ("savedmodel", "tflite")]
        if tf_wanted:
            from vitgender.exporters import tensorflow as tfx

            on_step(f"{', '.join(tf_wanted)}: onnx2tf -> SavedModel, TFLite converter -> variants")
            savedmodel = scratch / FORMATS["savedmodel"][2]
            tflite = {k: scratch / FORMATS[k][2] for k in tf_wanted if k != "savedmodel"}
            representative = calib_pixels.transpose(0, 2, 3, 1) if "tflite-int8" in tflite else None
            seconds, _ = _step("savedmodel/tflite", tfx.convert, fp32_onnx, scratch / ".tf-work", savedmodel, tflite,
                               input_name=export_config.input_name, shape=(channels, pre_cfg.height, pre_cfg.width),
                               onnx2tf_sample=_onnx2tf_sample(calibration or calibration_images(options.calibration)),
                               representative=representative, int8_io=options.tflite_int8_io)
            for key in tf_wanted:
                path = savedmodel if key == "savedmodel" else tflite[key]
                io_spec = {**nhwc, "dtype": "int8"} if key == "tflite-int8" and options.tflite_int8_io else nhwc
                record(key, path, seconds[key], io_spec,
                       converter="onnx2tf" if key == "savedmodel" else "tf.lite.TFLiteConverter (built-in ops only)",
                       **({"calibration": provenance} if key == "tflite-int8" else {}))
            if "savedmodel" not in wanted:
                shutil.rmtree(savedmodel, ignore_errors=True)
            shutil.rmtree(scratch / ".tf-work", ignore_errors=True)
        if "onnx" not in wanted:
            fp32_onnx.unlink(missing_ok=True)
        model_info = {"source": str(directory), "name": name, "model_type": model_type, "labels": list(labels),
                      "image_size": [pre_cfg.height, pre_cfg.width], "preprocessor": pre_cfg.to_dict(),
                      "checkpoint_sha256": checkpoint.read_manifest(directory) if (directory / checkpoint.MANIFEST).is_file() else None}
        artifacts.sort(key=lambda a: list(FORMATS).index(a["name"]))
        write_manifest(scratch, model_info, artifacts)
        if out.exists():
            shutil.rmtree(out)
        scratch.rename(out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return out

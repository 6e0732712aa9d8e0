"""The format registry: every artifact `vitgender export` can build, described once.

An `ArtifactSpec` says what a format is (runtime, precision, file name, input layout, whether
it needs calibration images) and which builder makes it. Everything else reads this table:
`main_export`, `--formats` parsing and groups, the CLI help, validation, the benchmark and the
manifest order. Adding a format is one spec here and, if no existing builder fits, one builder
in `"py"`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from vitgender.errors import UsageError
from vitgender.precision import Precision


class InputLayout(StrEnum):
    NCHW = "NCHW"  # float32 pixel_values, dynamic batch: what PyTorch takes
    NHWC_UINT8 = "NHWC-uint8"  # resized RGB bytes; rescale/normalise/transpose inside the graph
    NHWC = "NHWC"  # float32 pixel_values transposed: onnx2tf's layout


@dataclass(frozen=True)
class ArtifactSpec:
    name: str
    runtime: str  # a name registered in vitgender.runtimes
    precision: Precision
    filename: str  # relative to the export directory
    builder: str  # the name of its builder in vitgender.exporters.builders (imported only to build)
    toolchain: str  # what converts it, recorded in the manifest
    layout: InputLayout = InputLayout.NCHW
    needs_calibration: bool = False


_ORT_QUANT = "onnxruntime.quantization"
_TFLITE = "tf.lite.TFLiteConverter from the SavedModel (built-in ops only)"
_EXECUTORCH = "torch.export + executorch to_edge_transform_and_lower (XNNPACK), dynamic batch 1-32"
_SPECS = (
    ArtifactSpec("onnx", "onnx", Precision.FP32, "model.onnx", "copy_base_onnx", "torch.onnx.export (dynamo)"),
    ArtifactSpec(
        "onnx-fp16", "onnx", Precision.FP16, "model_fp16.onnx", "onnx_fp16", "onnxruntime.transformers.float16"
    ),
    ArtifactSpec(
        "onnx-int8-dynamic", "onnx", Precision.INT8_DYNAMIC, "model_int8_dynamic.onnx", "onnx_int8_dynamic", _ORT_QUANT
    ),
    ArtifactSpec(
        "onnx-int8-static",
        "onnx",
        Precision.INT8,
        "model_int8_static.onnx",
        "onnx_int8_static",
        _ORT_QUANT + " (QDQ)",
        needs_calibration=True,
    ),
    ArtifactSpec(
        "onnx-uint8-nhwc",
        "onnx",
        Precision.FP32,
        "model_uint8_nhwc.onnx",
        "onnx_baked_preprocessing",
        "vitgender preprocessing graph + torch.onnx.export",
        layout=InputLayout.NHWC_UINT8,
    ),
    ArtifactSpec(
        "savedmodel", "savedmodel", Precision.FP32, "saved_model", "tensorflow", "onnx2tf", layout=InputLayout.NHWC
    ),
    ArtifactSpec(
        "tflite", "tflite", Precision.FP32, "model_float32.tflite", "tensorflow", _TFLITE, layout=InputLayout.NHWC
    ),
    ArtifactSpec(
        "tflite-fp16", "tflite", Precision.FP16, "model_float16.tflite", "tensorflow", _TFLITE, layout=InputLayout.NHWC
    ),
    ArtifactSpec(
        "tflite-int8-dynamic",
        "tflite",
        Precision.INT8_DYNAMIC,
        "model_int8_dynamic.tflite",
        "tensorflow",
        _TFLITE,
        layout=InputLayout.NHWC,
    ),
    ArtifactSpec(
        "tflite-int8",
        "tflite",
        Precision.INT8,
        "model_int8.tflite",
        "tensorflow",
        _TFLITE,
        layout=InputLayout.NHWC,
        needs_calibration=True,
    ),
    ArtifactSpec("executorch", "executorch", Precision.FP32, "model.pte", "executorch", _EXECUTORCH),
    ArtifactSpec(
        "executorch-int8-dynamic",
        "executorch",
        Precision.INT8_DYNAMIC,
        "model_int8_dynamic.pte",
        "executorch",
        _EXECUTORCH + " + PT2E dynamic int8 (per-row activations, calibrated SmoothQuant)",
        needs_calibration=True,
    ),
    ArtifactSpec(
        "executorch-int8",
        "executorch",
        Precision.INT8,
        "model_int8.pte",
        "executorch",
        _EXECUTORCH + " + PT2E int8",
        needs_calibration=True,
    ),
    ArtifactSpec(
        "pt2-int8",
        "inductor",
        Precision.INT8,
        "model_int8.pt2",
        "pt2_int8",
        "torch.export + PT2E X86InductorQuantizer (static int8), compiled on load by torch.compile (Inductor, oneDNN)",
        needs_calibration=True,
    ),
    ArtifactSpec(
        "pt2-int8-dynamic",
        "inductor",
        Precision.INT8_DYNAMIC,
        "model_int8_dynamic.pt2",
        "pt2_int8",
        "torch.export + PT2E X86InductorQuantizer (dynamic int8, calibrated SmoothQuant), compiled on load by Inductor",
        needs_calibration=True,
    ),
    # transformers.js / optimum layout: web/{config,preprocessor_config}.json + web/onnx/*.onnx
    ArtifactSpec(
        "web-onnx", "onnx", Precision.FP32, "web/onnx/model.onnx", "web_copy_base_onnx", "torch.onnx.export (dynamo)"
    ),
    ArtifactSpec(
        "web-onnx-quantized",
        "onnx",
        Precision.INT8_DYNAMIC,
        "web/onnx/model_quantized.onnx",
        "web_onnx_int8_dynamic",
        _ORT_QUANT,
    ),
    ArtifactSpec(
        "web-onnx-fp16",
        "onnx",
        Precision.FP16,
        "web/onnx/model_fp16.onnx",
        "web_onnx_fp16",
        "onnxruntime.transformers.float16",
    ),
)
FORMATS: dict[str, ArtifactSpec] = {spec.name: spec for spec in _SPECS}
GROUPS: dict[str, list[str]] = {
    "all": list(FORMATS),
    "onnx-all": [s.name for s in _SPECS if s.name.startswith("onnx")],
    "tf": [s.name for s in _SPECS if s.runtime in ("savedmodel", "tflite")],
    "web": [s.name for s in _SPECS if s.name.startswith("web-")],
    "mobile": [s.name for s in _SPECS if s.runtime in ("tflite", "executorch")],
}


def parse_formats(spec: str | Sequence[str]) -> list[ArtifactSpec]:
    """`onnx,tf` -> the specs, groups expanded, duplicates dropped, in the order given."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    out: list[ArtifactSpec] = []
    for name in names:
        for expanded in GROUPS.get(name, [name]):
            if expanded not in FORMATS:
                raise UsageError(name, f"unknown format (choose from {', '.join([*GROUPS, *FORMATS])})")
            if FORMATS[expanded] not in out:
                out.append(FORMATS[expanded])
    if not out:
        raise UsageError("--formats", "no format given")
    return out


def formats_help() -> str:
    """The `--formats` help text, generated from the registry so it cannot drift."""
    groups = "; ".join(f"{name} = {', '.join(members)}" for name, members in GROUPS.items() if name != "all")
    return f"Comma list of formats or groups. Formats: {', '.join(FORMATS)}. Groups: all; {groups}."

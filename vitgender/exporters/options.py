"""`ExportOptions`: how `main_export` converts, apart from what it converts.

A module of its own so builders can take the options without importing `main_export`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vitgender.errors import UsageError
from vitgender.exporters.quantize import STATIC_PRESETS
from vitgender.preprocess import ALPHA_POLICIES
from vitgender.quant_plan import DEFAULT_TARGET, QuantTarget

CALIBRATION_DIR = Path(__file__).resolve().parent.parent / "calibration" / "utkface-train-64"
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
# The most images one export calibrates on by default: the int8 check and the `auto` plan run every
# candidate artifact on every calibration image, and on race5 50 images calibrated as well as 256
# (docs/guides/quantization.md); 1,024 did not make pt2-int8's int8 attention more faithful.
CALIBRATION_LIMIT = 256
MIN_CALIBRATION_IMAGES = 16  # fewer cannot set per-tensor scales or judge an agreement target


@dataclass(frozen=True)
class Int8Recipe:
    smoothquant: float  # SmoothQuant alpha (exporters/smoothing.py); 0: off
    float_head: bool  # the classification head left to float kernels


# Per calibrated int8 artifact, kept where it helped on the two trained test models
# (docs/guides/quantization.md, "Int8 for your own model"): ORT static and ExecuTorch's dynamic int8
# (activations quantized per row at run time, so a migrated outlier channel costs no other row its
# resolution) gain from migration; full-integer TFLite and static ExecuTorch requantize every GEMM
# output per tensor, which migration does not help.
INT8_RECIPES = {
    "onnx-int8-static": Int8Recipe(smoothquant=0.5, float_head=True),
    "tflite-int8": Int8Recipe(smoothquant=0.0, float_head=True),
    "executorch-int8-dynamic": Int8Recipe(smoothquant=0.5, float_head=True),
    "executorch-int8": Int8Recipe(smoothquant=0.0, float_head=True),
    # Per-tensor uint8 inputs with float GEMM outputs, as ORT static: the same recipe. Its dynamic twin
    # (each input's range measured per call) was measured only with this recipe, not without migration.
    "pt2-int8": Int8Recipe(smoothquant=0.5, float_head=True),
    "pt2-int8-dynamic": Int8Recipe(smoothquant=0.5, float_head=True),
}

# The artifacts `--quant-preset auto` plans (quant_plan.fewest_float), every calibrated int8 one: ORT
# static on real quantized graphs, full-integer TFLite re-quantized per candidate and run by LiteRT,
# static ExecuTorch as its PT2E graph run in PyTorch, ExecuTorch's dynamic int8 by simulation.
AUTO_PLANNED = ("onnx-int8-static", "tflite-int8", "executorch-int8", "executorch-int8-dynamic")


@dataclass
class ExportOptions:
    opset: int = 20
    calibration: Path = field(default=CALIBRATION_DIR)
    calibration_method: str = "minmax"
    calibration_limit: int = CALIBRATION_LIMIT  # a larger folder is sampled evenly down to this many
    quant_preset: str = "safe"
    # What every calibrated int8 artifact should reach on the calibration images (`quant_plan.QuantTarget`);
    # `auto` keeps at most `quant_max_float` units float to meet it; `quant_strict`: a miss exits 1.
    quant_target: str = DEFAULT_TARGET
    quant_max_float: int = 4
    quant_strict: bool = False
    tflite_int8_io: bool = False
    # Calibrated int8 (the INT8_RECIPES artifacts): SmoothQuant alpha (0: off) and whether the
    # classification head stays float; None: each artifact's measured default (INT8_RECIPES).
    smoothquant: float | None = None
    float_head: bool | None = None
    alpha: str | None = None  # the alpha policy the sidecars record (None: the checkpoint's, white by default)
    # pt2-int8: quantize the attention's products too, for torchao's fused int8 attention kernel
    # (runtimes/int8_attention.py). Off by default: faster, and less faithful (docs/guides/quantization.md).
    int8_attention: bool = False

    def int8_recipe(self, artifact: str) -> Int8Recipe:
        """The artifact's measured recipe, with what the user set explicitly applied to every artifact."""
        default = INT8_RECIPES[artifact]
        return Int8Recipe(
            default.smoothquant if self.smoothquant is None else self.smoothquant,
            default.float_head if self.float_head is None else self.float_head,
        )

    @property
    def target(self) -> QuantTarget:
        return QuantTarget.parse(self.quant_target)

    def __post_init__(self) -> None:
        if self.calibration_method not in CALIBRATION_METHODS:
            raise UsageError(
                self.calibration_method, f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}"
            )
        if self.quant_preset not in STATIC_PRESETS:
            raise UsageError(self.quant_preset, f"quant preset must be one of {', '.join(STATIC_PRESETS)}")
        try:
            QuantTarget.parse(self.quant_target)
        except ValueError as exc:
            raise UsageError(f"--quant-target {self.quant_target}", str(exc)) from None
        if self.calibration_limit < MIN_CALIBRATION_IMAGES:
            raise UsageError(
                f"--calibration-limit {self.calibration_limit}",
                f"must be at least {MIN_CALIBRATION_IMAGES} (fewer cannot set per-tensor scales)",
            )
        if self.quant_max_float < 0:
            raise UsageError(f"--quant-max-float {self.quant_max_float}", "must be 0 or more")
        if self.smoothquant is not None and not 0 <= self.smoothquant <= 1:
            raise UsageError(f"--smoothquant {self.smoothquant}", "SmoothQuant alpha must be in [0, 1] (0: off)")
        if self.alpha is not None and self.alpha not in ALPHA_POLICIES:
            raise UsageError(f"--alpha {self.alpha}", f"alpha policy must be one of {', '.join(ALPHA_POLICIES)}")

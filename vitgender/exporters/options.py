"""`ExportOptions`: how `main_export` converts, apart from what it converts.

A module of its own so builders can take the options without importing `main_export`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vitgender.errors import UsageError
from vitgender.exporters.int8_check import DEFAULT_TARGET, QuantTarget
from vitgender.exporters.quantize import STATIC_PRESETS
from vitgender.preprocess import ALPHA_POLICIES

CALIBRATION_DIR = Path(__file__).resolve().parent.parent / "calibration" / "utkface-train-64"
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


@dataclass
class ExportOptions:
    opset: int = 20
    calibration: Path = field(default=CALIBRATION_DIR)
    calibration_method: str = "minmax"
    quant_preset: str = "safe"
    # What every calibrated int8 artifact should reach on the calibration images (`int8_check.QuantTarget`);
    # `auto` keeps at most `quant_max_float` units float to meet it; `quant_strict`: a miss exits 1.
    quant_target: str = DEFAULT_TARGET
    quant_max_float: int = 4
    quant_strict: bool = False
    tflite_int8_io: bool = False
    # Calibrated int8 (onnx-int8-static, tflite-int8, executorch-int8): SmoothQuant alpha (0: off) and
    # whether the classification head stays float (see exporters/smoothing.py, docs/quantization.md).
    smoothquant: float = 0.5
    float_head: bool = True
    alpha: str | None = None  # the alpha policy the sidecars record (None: the checkpoint's, white by default)

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
        if self.quant_max_float < 0:
            raise UsageError(f"--quant-max-float {self.quant_max_float}", "must be 0 or more")
        if not 0 <= self.smoothquant <= 1:
            raise UsageError(f"--smoothquant {self.smoothquant}", "SmoothQuant alpha must be in [0, 1] (0: off)")
        if self.alpha is not None and self.alpha not in ALPHA_POLICIES:
            raise UsageError(f"--alpha {self.alpha}", f"alpha policy must be one of {', '.join(ALPHA_POLICIES)}")

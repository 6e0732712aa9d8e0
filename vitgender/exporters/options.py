"""`ExportOptions`: how `main_export` converts, apart from what it converts.

A module of its own so builders can take the options without importing `main_export`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vitgender.errors import UsageError
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
    quant_target: float | None = None  # `auto`: q90 |Δlogit| on the calibration images (None: the int8-dynamic budget)
    tflite_int8_io: bool = False
    alpha: str | None = None  # the alpha policy the sidecars record (None: the checkpoint's, white by default)

    def __post_init__(self) -> None:
        if self.calibration_method not in CALIBRATION_METHODS:
            raise UsageError(
                self.calibration_method, f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}"
            )
        if self.quant_preset not in STATIC_PRESETS:
            raise UsageError(self.quant_preset, f"quant preset must be one of {', '.join(STATIC_PRESETS)}")
        if self.quant_target is not None and not self.quant_target > 0:
            raise UsageError(str(self.quant_target), "quant target must be a positive q90 |logit difference|")
        if self.alpha is not None and self.alpha not in ALPHA_POLICIES:
            raise UsageError(f"--alpha {self.alpha}", f"alpha policy must be one of {', '.join(ALPHA_POLICIES)}")

"""The numeric precisions an artifact can be built in: one enum instead of free strings.

A `StrEnum`, so manifests, sidecars and reports keep the plain strings of schema 1
("fp32", "fp16", "int8-dynamic", "int8") and old files still parse.
"""

from __future__ import annotations

from enum import StrEnum

from vitgender.errors import UsageError


class Precision(StrEnum):
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"  # fp32 weights, bfloat16 arithmetic chosen at run time (a runtime's precision hint)
    INT8_DYNAMIC = "int8-dynamic"  # int8 weights, activations quantized at run time
    INT8 = "int8"  # int8 weights and calibrated int8 activations (static / full integer)

    @property
    def is_int8(self) -> bool:
        return self in (Precision.INT8_DYNAMIC, Precision.INT8)

    @classmethod
    def parse(cls, value: str) -> Precision:
        try:
            return cls(value)
        except ValueError:
            raise UsageError(
                repr(value), f"unknown precision (choose from {', '.join(p.value for p in cls)})"
            ) from None

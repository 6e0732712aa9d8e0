"""Quantization proof: what an artifact really contains, read from the file itself.

An "int8" artifact whose weights are secretly float (or an "fp16" one still in fp32) passes
every accuracy check while shipping the wrong thing; this inventory catches it. Each runtime
reads its own files (`Runtime.inventory`: ONNX initializers, TFLite constant buffers, SavedModel
constants and variables, the .pte's XNNPACK constants); this module judges what they report.
"""

from __future__ import annotations

from pathlib import Path

from vitgender.precision import Precision
from vitgender.runtimes import file_inventory
from vitgender.validators.checks import Check


def inventory(path: Path, runtime: str) -> dict | None:
    """What the file holds, for the runtimes that can read their files without running them."""
    return file_inventory(runtime, path)


def check_precision(inv: dict, precision: Precision, minimum_share: float = 0.25) -> Check:
    """Whether the file's weight bytes agree with its declared precision.

    The share is of weight *bytes*; a quarter leaves room for small models whose embeddings
    and norms (kept in float by design) are a large part of the file, while a secretly-float
    "int8" file has none at all.
    """
    share = inv["weight_share_by_dtype"]
    int8 = share.get("int8", 0) + share.get("uint8", 0)
    fp16 = share.get("float16", 0)
    if precision.is_int8:
        return Check(
            "quantization_proof",
            int8 >= minimum_share,
            round(int8, 4),
            minimum_share,
            f"declared {precision} but only {int8:.0%} of weight bytes are 8-bit integers (by dtype: {share})",
        )
    if precision is Precision.FP16:
        return Check(
            "quantization_proof",
            fp16 >= minimum_share,
            round(fp16, 4),
            minimum_share,
            f"declared fp16 but only {fp16:.0%} of weight bytes are float16 (by dtype: {share})",
        )
    if precision is Precision.BF16:  # a run-time arithmetic over a float file (fp32 or fp16 weights)
        return Check(
            "quantization_proof",
            int8 <= 0.5,
            round(int8, 4),
            0.5,
            f"run in bf16 but {int8:.0%} of weight bytes are 8-bit integers: an int8 file keeps its int8 budget",
        )
    return Check(
        "quantization_proof",
        int8 + fp16 <= 0.5,
        round(int8 + fp16, 4),
        0.5,
        f"declared fp32 but {int8 + fp16:.0%} of weight bytes are reduced precision",
    )

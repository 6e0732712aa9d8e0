"""The shape every runtime's `inventory` returns: weight bytes by dtype, their shares, op counts."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping


def weight_inventory(
    bytes_by_dtype: Mapping[str, float],
    op_counts: Mapping[str, int],
    quantization_ops: set[str] | frozenset[str] = frozenset(),
    **extra,
) -> dict:
    """`weight_share_by_dtype` is what `validators.inventory.check_precision` judges a declared precision by."""
    weights = Counter({dtype: int(n) for dtype, n in bytes_by_dtype.items()})
    total = sum(weights.values()) or 1
    return {
        "weight_bytes_by_dtype": dict(weights),
        "weight_share_by_dtype": {dtype: round(n / total, 4) for dtype, n in weights.most_common()},
        "quantization_ops": {op: n for op, n in op_counts.items() if op in quantization_ops},
        "op_counts": dict(op_counts),
        **extra,
    }

"""Which training faces a recipe draws, and which it keeps aside: shared by both fine-tune paths."""

from __future__ import annotations

import hashlib
from collections import Counter

import torch

from vitgender.data import Sample


def holdout_of(sample: Sample, fraction: float) -> bool:
    """A fixed, name-keyed part of the training split kept out of training, for choices and calibration."""
    digest = hashlib.sha256(b"vitgender-holdout:" + sample.path.name.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def balanced_weights(samples: list[Sample], keys: tuple[str, ...], min_age: int) -> torch.Tensor:
    """Per-sample draw weights that give every cell (e.g. race x gender) the same total mass.

    Cells are sized by their faces aged >= min_age; younger faces get the weight of their
    cell's older ones, so their share within a cell is unchanged.
    """
    def cell(s: Sample) -> tuple[str, ...]:
        return tuple(s.groups.get(k, "") for k in keys)

    adults = Counter(cell(s) for s in samples if int(s.groups.get("age", min_age)) >= min_age)
    sizes = Counter(cell(s) for s in samples)
    weights = [1.0 / (adults[cell(s)] or sizes[cell(s)]) for s in samples]
    return torch.tensor(weights, dtype=torch.float64)

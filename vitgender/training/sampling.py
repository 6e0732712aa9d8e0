"""Which training faces a recipe draws, and which it keeps aside: shared by both fine-tune paths."""

from __future__ import annotations

import hashlib
from collections import Counter

import torch

from vitgender.data import Sample
from vitgender.errors import UsageError


def holdout_mask(images: torch.Tensor, fraction: float) -> torch.Tensor:
    """A fixed part of the training split kept out of training, for choices and calibration.

    Chosen by a hash of each decoded image's *pixels*, like the train/val split (by file
    content): UTKFace's duplicate files under other names land on the same side, and a pack
    (which keeps pixels, not files) gives the same holdout as the folder it was made from.
    """

    def held(image: torch.Tensor) -> bool:
        digest = hashlib.sha256(b"vitgender-holdout:" + image.contiguous().numpy().tobytes()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < fraction

    return torch.tensor([held(image) for image in images], dtype=torch.bool)


def balanced_weights(samples: list[Sample], keys: tuple[str, ...], min_age: int = 10) -> torch.Tensor:
    """Per-sample draw weights that give every cell (e.g. race x gender) the same weight per adult face.

    A cell's faces aged >= min_age share a total weight of 1, whatever their number; its younger
    faces (when the source has ages) each get the same weight on top, so their share within the
    cell is unchanged and a cell with many children carries more than 1.
    """
    missing = [k for k in keys if not any(k in s.groups for s in samples)]
    if missing:
        raise UsageError(
            ",".join(keys),
            f"no image carries the group(s) {', '.join(missing)} to balance over "
            f"(available: {', '.join(sorted({k for s in samples for k in s.groups})) or 'none'})",
        )

    def cell(s: Sample) -> tuple[str, ...]:
        return tuple(s.groups.get(k, "") for k in keys)

    adults = Counter(cell(s) for s in samples if int(s.groups.get("age", min_age)) >= min_age)
    sizes = Counter(cell(s) for s in samples)
    weights = [1.0 / (adults[cell(s)] or sizes[cell(s)]) for s in samples]
    return torch.tensor(weights, dtype=torch.float64)

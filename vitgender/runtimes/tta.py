"""Horizontal-flip test-time averaging: any Runner, twice the compute, logits averaged.

Faces are close to mirror-symmetric, so the mirrored image is a second, nearly independent
look at the same face; averaging the two logit vectors removes part of the model's
view-dependent noise. Opt-in (`--tta flip`), because it doubles the cost of every image:
the accuracy it buys on the validation split is in the model card.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from vitgender.runtimes.lifecycle import Closing

if TYPE_CHECKING:  # types only: base.open_runner imports this module
    from vitgender.runtimes.base import Runner, RunnerInfo

TTA_MODES = ("none", "flip")


class FlipAveragedRunner(Closing):
    """A Runner that answers with the mean logits of each image and its mirror image."""

    def __init__(self, inner: Runner) -> None:
        self.inner = inner
        self.info: RunnerInfo = replace(inner.info, source=f"{inner.info.source} (flip-averaged)")

    def run(self, pixel_values: np.ndarray) -> np.ndarray:
        # Width is axis 3 of NCHW pixel_values, axis 2 of the NHWC uint8 images raw-input graphs take.
        width_axis = 2 if self.info.raw_input else 3
        both = np.concatenate([pixel_values, np.flip(pixel_values, axis=width_axis)])
        logits = self.inner.run(np.ascontiguousarray(both))
        return (logits[: len(pixel_values)] + logits[len(pixel_values) :]) / 2

    def close(self) -> None:
        self.inner.close()


def check_tta(mode: str | None) -> None:
    if mode not in (None, *TTA_MODES):
        from vitgender.errors import UsageError

        raise UsageError(str(mode), f"unknown test-time augmentation (choose from {', '.join(TTA_MODES)})")


def with_tta(runner: Runner, mode: str | None) -> Runner:
    """`runner`, wrapped for `mode` (already checked with `check_tta`)."""
    return FlipAveragedRunner(runner) if mode == "flip" else runner

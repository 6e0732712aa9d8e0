"""The int8 plan every toolchain shares: a decision-level target and the fewest-float search.

A plan keeps the most sensitive units (a block's attention, a block's MLP, the embeddings) float,
as few as meet the target on the calibration images. Each toolchain measures a candidate its own
way: ONNX Runtime on real quantized graphs (`vitgender.exporters.quantize.plan_auto`), full-integer
TFLite re-quantized by the converter's debugger and run by LiteRT (`vitgender.exporters.tensorflow`),
ExecuTorch's static program as its calibrated PT2E graph and its dynamic one by simulation, in its
own environment (`vitgender.toolchains.executorch_worker`). All use this module, which needs numpy
only so the ExecuTorch environment can import it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

METRICS = ("agreement", "q90")
DEFAULT_TARGET = "agreement=0.99"


@dataclass(frozen=True)
class QuantTarget:
    """`agreement=A`: share of images keeping PyTorch's top-1 label, at least A; `q90=D`: 0.9 quantile of
    |Δlogit| at most D and no top-1 flip (a bare number means q90, as the `auto` preset took it before)."""

    metric: str
    value: float

    @classmethod
    def parse(cls, text: str) -> QuantTarget:
        metric, _, value = str(text).rpartition("=")
        metric = metric.strip().lower() or "q90"
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if metric not in METRICS or not number > 0 or (metric == "agreement" and number > 1):
            raise ValueError(f"expected agreement=A (0 < A <= 1) or q90=D (D > 0), got {text!r}")
        return cls(metric, number)

    def __str__(self) -> str:
        return f"{self.metric}={self.value:g}"

    def figures(self, reference: np.ndarray, logits: np.ndarray) -> dict:
        flips = int((logits.argmax(1) != reference.argmax(1)).sum())
        return {
            "agreement": round(1 - flips / len(reference), 5),
            "flips": flips,
            "images": len(reference),
            "q90_abs_logit_diff": round(float(np.quantile(np.abs(logits - reference), 0.9)), 5),
        }

    def met(self, figures: dict) -> bool:
        if self.metric == "agreement":
            return figures["agreement"] >= self.value
        return figures["q90_abs_logit_diff"] <= self.value and figures["flips"] == 0


@dataclass(frozen=True)
class Plan:
    """What the search chose, and the evidence: each unit's sensitivity and what the plan reached."""

    kept_float: list[str]  # most sensitive first
    sensitivity: dict[str, float]  # unit -> q90 |Δlogit| with that unit alone quantized (empty: none needed)
    reached: dict  # `QuantTarget.figures` of the chosen plan on the calibration images
    met: bool


def fewest_float(
    units: Sequence[str],
    figures: Callable[[list[str]], dict],
    target: QuantTarget,
    max_float: int,
    progress: Callable[[str], None] = lambda message: None,
) -> Plan:
    """Keep the fewest most sensitive units float until `figures(kept_float)` meets `target`.

    If quantizing everything meets it, nothing is measured further. Otherwise each unit's
    sensitivity is measured with that unit alone quantized (`figures` of every other unit kept
    float), and a binary search over how many of the most sensitive to keep float, at most
    `max_float` (beyond a few float units the speed is gone), finds the fewest that meet the
    target; when even `max_float` does not, the plan keeps that many and says so.
    """
    units = list(units)
    progress(f"fit: all {len(units)} units int8")
    reached = figures([])
    if target.met(reached) or not units or max_float == 0:
        return Plan([], {}, reached, target.met(reached))
    alone = {}
    for i, unit in enumerate(units, 1):
        progress(f"sensitivity {i}/{len(units)}: {unit}")
        alone[unit] = figures([u for u in units if u != unit])["q90_abs_logit_diff"]
    order = sorted(units, key=alone.__getitem__, reverse=True)
    tried: dict[int, dict] = {}
    low, high = 1, min(max_float, len(order))
    while low < high:
        k = (low + high) // 2
        progress(f"fit: {k} of {len(order)} units float")
        tried[k] = figures(order[:k])
        if target.met(tried[k]):
            high = k
        else:
            low = k + 1
    reached = tried.get(low) or figures(order[:low])
    return Plan(order[:low], {u: round(alone[u], 5) for u in order}, reached, target.met(reached))

"""The fewest-float search every int8 toolchain's `auto` plan uses, on a synthetic model of sensitivities."""

from __future__ import annotations

import numpy as np
import pytest

from vitgender.quant_plan import QuantTarget, fewest_float

UNITS = ["embeddings", "block 0 attention", "block 0 mlp", "block 1 attention", "block 1 mlp"]
# How many decisions (of 100) each unit flips when int8; flips add up, and so does each unit's drift
# of every logit (a unit that flips more decisions moves every logit more).
FLIPS = {"embeddings": 0, "block 0 attention": 1, "block 0 mlp": 3, "block 1 attention": 0, "block 1 mlp": 2}


def synthetic(calls: list[list[str]]):
    reference = np.tile([[1.0, 0.0]], (100, 1))

    def figures(kept_float: list[str]) -> dict:
        calls.append(list(kept_float))
        flips = sum(FLIPS[u] for u in UNITS if u not in kept_float)
        logits = reference.copy()
        logits[:flips] = [0.0, 1.0]
        logits[flips:] += sum(0.01 * (FLIPS[u] + 1) for u in UNITS if u not in kept_float)
        return QuantTarget.parse("agreement=0.99").figures(reference, logits)

    return figures


def test_nothing_is_measured_when_all_int8_meets_the_target():
    calls = []
    plan = fewest_float(UNITS, synthetic(calls), QuantTarget.parse("agreement=0.9"), max_float=4)
    assert plan.kept_float == [] and plan.met and plan.sensitivity == {} and calls == [[]]


def test_the_fewest_most_sensitive_units_stay_float():
    calls = []
    plan = fewest_float(UNITS, synthetic(calls), QuantTarget.parse("agreement=0.98"), max_float=4)
    # alone: block 0 mlp flips 3, block 1 mlp 2: keeping those two float leaves 1 flip = 99%
    assert plan.kept_float == ["block 0 mlp", "block 1 mlp"] and plan.met
    assert plan.reached["agreement"] == pytest.approx(0.99)
    assert set(plan.sensitivity) == set(UNITS)
    assert max(len(kept) for kept in calls) <= 4


def test_a_target_out_of_reach_keeps_max_float_and_says_so():
    plan = fewest_float(UNITS, synthetic([]), QuantTarget.parse("agreement=1.0"), max_float=1)
    assert plan.kept_float == ["block 0 mlp"] and not plan.met and plan.reached["flips"] == 3


@pytest.mark.parametrize("text", ["agreement=1.5", "q90=-1", "loss=0.1", "agreement="])
def test_targets_outside_their_range_are_refused(text):
    with pytest.raises(ValueError, match="expected agreement=A"):
        QuantTarget.parse(text)

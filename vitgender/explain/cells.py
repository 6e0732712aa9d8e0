"""`evaluate --explain N`: the average map of right and of wrong answers per cell of a group table.

A reader of a per-group table asks *why* a cell is worse; the average map of its errors next to
the average map of its right answers shows whether the errors rest on the face, the hair or the
background. Up to N images per (cell, right/wrong), the first N by path so reruns agree. Cells
are those of the finest reported table with at most two fields (race x gender for the default
model on UTKFace names), or of the true label when no group table is reported.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from vitgender.evaluation.metrics import LABEL, Prediction, value_of
from vitgender.explain.api import Explainer
from vitgender.explain.maps import average_maps


def cell_keys(groupings: Sequence[tuple[str, ...]]) -> tuple[str, ...]:
    """The group keys the maps are averaged over: the widest table of at most two fields, else the label."""
    tables = [keys for keys in groupings if len(keys) <= 2]
    return max(tables, key=len) if tables else (LABEL,)


def cell_maps(
    explainer: Explainer,
    predictions: Sequence[Prediction],
    per_cell: int,
    method: str,
    keys: Sequence[str] = (LABEL,),
    *,
    advance: Callable[[int], None] = lambda n: None,
) -> list[dict]:
    """One entry per cell of `keys`: {"group", "correct": {"n", "map"}, "wrong": {"n", "map"}}.

    `n` counts the images averaged (at most `per_cell`); a side with no images has map None.
    """
    cells: dict[tuple[str, ...], list[Prediction]] = {}
    for prediction in predictions:
        values = tuple(value_of(prediction, k) for k in keys)
        if None not in values:
            cells.setdefault(values, []).append(prediction)
    out = []
    for key in sorted(cells):
        entry: dict = {"group": dict(zip(keys, key, strict=False))}
        for side, wanted in (("correct", True), ("wrong", False)):
            chosen = sorted((p for p in cells[key] if p.correct == wanted), key=lambda p: p.image)[:per_cell]
            maps = [e.map for e in explainer.explain([p.image for p in chosen], method)] if chosen else []
            entry[side] = {"n": len(chosen), "map": average_maps(maps).round(5).tolist() if maps else None}
            advance(len(chosen))
        out.append(entry)
    return out

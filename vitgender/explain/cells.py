"""`evaluate --explain N`: the average map of right and of wrong answers per race x gender cell.

A reader of a fairness table asks *why* a cell is worse; the average map of its errors next to
the average map of its right answers shows whether the errors rest on the face, the hair or the
background. Up to N images per (cell, right/wrong), the first N by path so reruns agree; cells
are keyed by the group labels the data carries (UTKFace names: race and gender).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from vitgender.explain.api import Explainer
from vitgender.explain.maps import average_maps
from vitgender.evaluation.metrics import Prediction

CELL_KEYS = ("race", "gender")


def cell_maps(explainer: Explainer, predictions: Sequence[Prediction], per_cell: int, method: str, *,
              advance: Callable[[int], None] = lambda n: None) -> list[dict]:
    """One entry per race x gender cell: {"group", "correct": {"n", "map"}, "wrong": {"n", "map"}}.

    `n` counts the images averaged (at most `per_cell`); a side with no images has map None.
    """
    cells: dict[tuple[str, ...], list[Prediction]] = {}
    for prediction in predictions:
        if all(key in prediction.groups for key in CELL_KEYS):
            cells.setdefault(tuple(prediction.groups[k] for k in CELL_KEYS), []).append(prediction)
    out = []
    for key in sorted(cells):
        entry: dict = {"group": dict(zip(CELL_KEYS, key))}
        for side, wanted in (("correct", True), ("wrong", False)):
            chosen = sorted((p for p in cells[key] if p.correct == wanted), key=lambda p: p.image)[:per_cell]
            maps = [e.map for e in explainer.explain([p.image for p in chosen], method)] if chosen else []
            entry[side] = {"n": len(chosen), "map": average_maps(maps).round(5).tolist() if maps else None}
            advance(len(chosen))
        out.append(entry)
    return out

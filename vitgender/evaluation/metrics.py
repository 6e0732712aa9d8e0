"""Accuracy, calibration and per-group fairness: pure functions from predictions to data.

Used by `vitgender evaluate` (one model or artifact) and by `vitgender validate` (the same
tables per artifact, to show whether a conversion hurts one group more than another).
Reporting (terminal, JSON, HTML) lives elsewhere; nothing here prints.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from vitgender.data import AGE_BUCKETS

# Group tables reported for every evaluation, when the data carries the attributes.
GROUPINGS: tuple[tuple[str, ...], ...] = (("gender",), ("race",), ("gender", "race"), ("age_bucket",), ("race", "gender", "age_bucket"))
MIN_GROUP_N_FOR_WORST = 30  # smaller cells have CIs too wide to name a "worst group"


@dataclass(frozen=True)
class Prediction:
    """One labelled, classified image with its top-1 label and confidence."""

    image: str
    label: str
    predicted: str
    confidence: float
    groups: dict[str, str] = field(default_factory=dict)

    @property
    def correct(self) -> bool:
        return self.label == self.predicted


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for k successes in n trials (sane at 0% and 100%)."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def accuracy_cell(predictions: Sequence[Prediction]) -> dict:
    n = len(predictions)
    k = sum(p.correct for p in predictions)
    low, high = wilson(k, n)
    return {"n": n, "correct": k, "accuracy": k / n if n else None, "ci95": [low, high]}


def _age_order(bucket: str) -> int:
    labels = [f"{lo}+" if hi is None else f"{lo}-{hi}" for lo, hi in AGE_BUCKETS]
    return labels.index(bucket) if bucket in labels else len(labels)


def group_table(predictions: Sequence[Prediction], keys: tuple[str, ...]) -> list[dict]:
    cells: dict[tuple[str, ...], list[Prediction]] = defaultdict(list)
    for p in predictions:
        if all(k in p.groups for k in keys):
            cells[tuple(p.groups[k] for k in keys)].append(p)

    def order(item):
        return tuple(_age_order(v) if k == "age_bucket" else v for k, v in zip(keys, item[0]))

    return [{"group": dict(zip(keys, values)), **accuracy_cell(members)} for values, members in sorted(cells.items(), key=order)]


def per_class(predictions: Sequence[Prediction], labels: Sequence[str]) -> tuple[dict, dict]:
    """Precision/recall per class and the confusion matrix {true: {predicted: count}}."""
    confusion = {t: {p: 0 for p in labels} for t in labels}
    for p in predictions:
        row = confusion.setdefault(p.label, {q: 0 for q in labels})
        row[p.predicted] = row.get(p.predicted, 0) + 1
    stats = {}
    for c in labels:
        tp = confusion.get(c, {}).get(c, 0)
        predicted = sum(row.get(c, 0) for row in confusion.values())
        actual = sum(confusion.get(c, {}).values())
        stats[c] = {"precision": tp / predicted if predicted else None, "recall": tp / actual if actual else None,
                    "support": actual}
    return stats, confusion


def calibration(predictions: Sequence[Prediction], bins: int = 10) -> dict:
    """Expected calibration error of the top-1 confidence, with the reliability diagram's bins."""
    table = [{"low": i / bins, "high": (i + 1) / bins, "n": 0, "correct": 0, "confidence_sum": 0.0} for i in range(bins)]
    for p in predictions:
        cell = table[min(int(p.confidence * bins), bins - 1)]
        cell["n"] += 1
        cell["correct"] += p.correct
        cell["confidence_sum"] += p.confidence
    total = len(predictions)
    ece = 0.0
    for cell in table:
        n = cell.pop("n")
        confidence = cell.pop("confidence_sum") / n if n else None
        accuracy = cell["correct"] / n if n else None
        cell.update(n=n, confidence=confidence, accuracy=accuracy)
        if n:
            ece += n / total * abs(accuracy - confidence)
    return {"ece": ece if total else None, "bins": table}


def coverage(predictions: Sequence[Prediction], min_confidence: float) -> dict:
    """Answer only when confident: how many are answered, and how accurate those answers are."""
    covered = [p for p in predictions if p.confidence >= min_confidence]
    result = {"min_confidence": min_confidence, "coverage": len(covered) / len(predictions) if predictions else None,
              "covered": accuracy_cell(covered), "groups": {}}
    for keys in GROUPINGS[:3]:
        rows = []
        for row in group_table(predictions, keys):
            members = [p for p in predictions if all(p.groups.get(k) == v for k, v in row["group"].items())]
            kept = [p for p in members if p.confidence >= min_confidence]
            rows.append({"group": row["group"], "n": len(members), "coverage": len(kept) / len(members),
                         **{k: v for k, v in accuracy_cell(kept).items() if k != "n"}})
        result["groups"]["x".join(keys)] = rows
    return result


def summarize(
    predictions: Sequence[Prediction],
    labels: Sequence[str],
    *,
    errors: Iterable[dict] = (),
    skipped: Iterable[str] = (),
    min_confidence: float | None = None,
) -> dict:
    """The whole evaluation as one JSON-ready dict (schema documented in the README)."""
    errors, skipped = list(errors), list(skipped)
    overall = accuracy_cell(predictions)
    classes, confusion = per_class(predictions, labels)
    groups = {"x".join(keys): group_table(predictions, keys) for keys in GROUPINGS}
    groups = {name: rows for name, rows in groups.items() if rows}
    candidates = [
        (row["accuracy"], name, row) for name, rows in groups.items() for row in rows
        if row["n"] >= MIN_GROUP_N_FOR_WORST and name != "racexgenderxage_bucket"
    ]
    worst = None
    if candidates and overall["accuracy"] is not None:
        accuracy, name, row = min(candidates, key=lambda c: c[0])
        worst = {"table": name, "group": row["group"], "n": row["n"], "accuracy": accuracy,
                 "gap_to_overall": overall["accuracy"] - accuracy}
    report = {
        "schema": 1,
        "accuracy": overall["accuracy"],
        "overall": overall,
        "per_class": classes,
        "confusion": confusion,
        "groups": groups,
        "worst_group": worst,
        "calibration": calibration(predictions),
        "unclassified": {"count": len(errors), "items": errors},
        "skipped_unlabelled": {"count": len(skipped), "items": skipped},
    }
    if min_confidence is not None:
        report["selective"] = coverage(predictions, min_confidence)
    return report

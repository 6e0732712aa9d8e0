"""Accuracy per label and per group, calibration: pure functions from predictions to data.

Labels come from the model, groups from the data. Every report has a table per true label
("label"); per-group tables use only metadata the data carries (UTKFace fields, CSV columns),
chosen with `--group-by` or, for the default model's labels, the fairness tables its model card
reports (gender, race, gender x race, age). Used by `vitgender evaluate` and `evaluate --explain`;
the parity gate reuses the group tables. Reporting lives elsewhere; nothing here prints.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from vitgender.data import AGE_BUCKETS
from vitgender.errors import UsageError

# The default model's labels; its evaluations report GROUPINGS (the tables of its model card).
DEFAULT_LABELS = ("female", "male")
GROUPINGS: tuple[tuple[str, ...], ...] = (
    ("gender",),
    ("race",),
    ("gender", "race"),
    ("age_bucket",),
    ("race", "gender", "age_bucket"),
)
LABEL = "label"  # the group key of the true label, available in every table
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


def is_default_labels(labels: Iterable[str]) -> bool:
    """True for the default model's label set (female/male), whose reports carry its responsible-use text."""
    return sorted(label.casefold() for label in labels) == sorted(DEFAULT_LABELS)


def value_of(prediction: Prediction, key: str) -> str | None:
    """A prediction's value for a group key: its true label for "label", else the data's field."""
    return prediction.label if key == LABEL else prediction.groups.get(key)


def table_name(keys: Sequence[str]) -> str:
    return "x".join(keys)


def default_groupings(labels: Sequence[str], fields: Iterable[str]) -> tuple[tuple[str, ...], ...]:
    """The per-group tables reported without `--group-by`: the default model's fairness tables (for
    its labels, where the data has the fields), none for other models (the per-label table stays)."""
    if not is_default_labels(labels):
        return ()
    available = set(fields)
    return tuple(keys for keys in GROUPINGS if set(keys) <= available)


def parse_group_by(text: str, fields: Iterable[str]) -> tuple[tuple[str, ...], ...]:
    """`race,age` -> one table per field; `race+gender` crosses fields in one table. `age` means the
    age buckets where the data has them; every field must be one the data carries (or `label`)."""
    available = set(fields) | {LABEL}
    tables = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        keys = []
        for key in (k.strip() for k in part.split("+")):
            if key == "age" and "age_bucket" in available:
                key = "age_bucket"
            if key not in available:
                raise UsageError(
                    f"--group-by {key}", "not a field of this data (it has: " f"{', '.join(sorted(available))})"
                )
            keys.append(key)
        tables.append(tuple(dict.fromkeys(keys)))
    if not tables:
        raise UsageError("--group-by", "name at least one field, e.g. --group-by race,age")
    return tuple(dict.fromkeys(tables))


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
        values = tuple(value_of(p, k) for k in keys)
        if None not in values:
            cells[values].append(p)

    def order(item):
        return tuple(_age_order(v) if k == "age_bucket" else v for k, v in zip(keys, item[0], strict=False))

    return [
        {"group": dict(zip(keys, values, strict=False)), **accuracy_cell(members)}
        for values, members in sorted(cells.items(), key=order)
    ]


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
        stats[c] = {
            "precision": tp / predicted if predicted else None,
            "recall": tp / actual if actual else None,
            "support": actual,
        }
    return stats, confusion


def calibration(predictions: Sequence[Prediction], bins: int = 10) -> dict:
    """Expected calibration error of the top-1 confidence, with the reliability diagram's bins."""
    table = [
        {"low": i / bins, "high": (i + 1) / bins, "n": 0, "correct": 0, "confidence_sum": 0.0} for i in range(bins)
    ]
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


def coverage(
    predictions: Sequence[Prediction], min_confidence: float, groupings: Sequence[tuple[str, ...]] = ()
) -> dict:
    """Answer only when confident: how many are answered, and how accurate those answers are,
    overall and per group of each table in `groupings`."""
    covered = [p for p in predictions if p.confidence >= min_confidence]
    result = {
        "min_confidence": min_confidence,
        "coverage": len(covered) / len(predictions) if predictions else None,
        "covered": accuracy_cell(covered),
        "groups": {},
    }
    for keys in groupings:
        rows = []
        for row in group_table(predictions, keys):
            members = [p for p in predictions if all(value_of(p, k) == v for k, v in row["group"].items())]
            kept = [p for p in members if p.confidence >= min_confidence]
            rows.append(
                {
                    "group": row["group"],
                    "n": len(members),
                    "coverage": len(kept) / len(members),
                    **{k: v for k, v in accuracy_cell(kept).items() if k != "n"},
                }
            )
        result["groups"][table_name(keys)] = rows
    return result


def _same_partition(predictions: Sequence[Prediction], key: str) -> bool:
    """True when a data field holds exactly the true label (e.g. UTKFace gender for the default model)."""
    return bool(predictions) and all(p.groups.get(key) == p.label for p in predictions)


def report_tables(
    predictions: Sequence[Prediction], groupings: Sequence[tuple[str, ...]]
) -> tuple[tuple[str, ...], ...]:
    """`groupings` plus the per-label table, unless a one-field table already is the label."""
    tables = tuple(groupings)
    if not any(len(keys) == 1 and (keys[0] == LABEL or _same_partition(predictions, keys[0])) for keys in tables):
        tables = ((LABEL,), *tables)
    return tables


def summarize(
    predictions: Sequence[Prediction],
    labels: Sequence[str],
    *,
    errors: Iterable[dict] = (),
    skipped: Iterable[str] = (),
    min_confidence: float | None = None,
    groupings: Sequence[tuple[str, ...]] | None = None,
) -> dict:
    """The whole evaluation as one JSON-ready dict (schema in docs/labels-and-groups.md).

    `groupings`: the per-group tables (None: `default_groupings`); the per-label table is added.
    """
    errors, skipped = list(errors), list(skipped)
    overall = accuracy_cell(predictions)
    classes, confusion = per_class(predictions, labels)
    if groupings is None:
        groupings = default_groupings(labels, {k for p in predictions for k in p.groups})
    tables = report_tables(predictions, groupings)
    groups = {table_name(keys): group_table(predictions, keys) for keys in tables}
    groups = {name: rows for name, rows in groups.items() if rows}
    candidates = [  # a cell of three or more fields is too thin to name; the label table loses ties
        (row["accuracy"], name == LABEL, name, row)
        for keys in tables
        if len(keys) <= 2
        for name in [table_name(keys)]
        for row in groups.get(name, [])
        if row["n"] >= MIN_GROUP_N_FOR_WORST
    ]
    worst = None
    if candidates and overall["accuracy"] is not None:
        accuracy, _, name, row = min(candidates, key=lambda c: (c[0], c[1]))
        worst = {
            "table": name,
            "group": row["group"],
            "n": row["n"],
            "accuracy": accuracy,
            "gap_to_overall": overall["accuracy"] - accuracy,
        }
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
        report["selective"] = coverage(predictions, min_confidence, [keys for keys in tables if len(keys) <= 2])
    return report

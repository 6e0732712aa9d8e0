"""`vitgender evaluate`: accuracy, calibration and per-group fairness of a model or artifact.

Streams a labelled set through any Runner (PyTorch checkpoint or exported artifact) keeping
only a small record per image, so memory stays flat; unreadable images and unlabelled names
are counted and listed in the report, never silently dropped from the denominator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from vitgender.data import LabelledSet, Sample, open_labelled, split_samples
from vitgender.errors import ImageError, UsageError
from vitgender.evaluation.metrics import Prediction, summarize
from vitgender.preprocess import Preprocessor
from vitgender.runtimes import Runner, runner_input
from vitgender.scoring import apply_function

SPLITS = ("all", "train", "val")


def select(
    source: Path,
    split: str = "all",
    min_age: int | None = None,
    *,
    labels: Sequence[str] | None = None,
    label_field: str | None = None,
) -> LabelledSet:
    """The labelled set to evaluate (labels matched to the model's `labels`), with its skipped names."""
    if split not in SPLITS:
        raise UsageError(split, f"split must be one of {', '.join(SPLITS)}")
    labelled = open_labelled(source, labels=labels, label_field=label_field)
    if split != "all":
        labelled.samples = split_samples(labelled.samples)[split]
    if min_age is not None:
        if not any("age" in s.groups for s in labelled.samples):
            raise UsageError(str(source), "--min-age needs age labels (UTKFace names or an age column)")
        labelled.samples = [
            s for s in labelled.samples if s.groups.get("age", "").isdecimal() and int(s.groups["age"]) >= min_age
        ]
    return labelled


def predict_samples(
    runner: Runner,
    samples: list[Sample],
    *,
    batch_size: int = 16,
    advance: Callable[[int], None] = lambda n: None,
) -> tuple[list[Prediction], list[dict]]:
    labels = runner.info.labels
    unknown = sorted({s.label for s in samples} - set(labels))
    if unknown:
        raise UsageError(", ".join(unknown), f"labels in the data are not model labels {list(labels)}")
    pre = Preprocessor(runner.info.preprocess)
    predictions, errors = [], []
    for start in range(0, len(samples), batch_size):
        batch, pixels = [], []
        for sample in samples[start : start + batch_size]:
            try:
                pixels.append(pre.load(sample.path))
                batch.append(sample)
            except ImageError as exc:
                errors.append({"image": str(sample.path), "error": exc.why})
        if batch:
            probs = apply_function(runner.run(runner_input(runner, np.stack(pixels))), "softmax")
            for sample, row in zip(batch, probs, strict=False):
                top = int(row.argmax())
                predictions.append(
                    Prediction(str(sample.path), sample.label, labels[top], float(row[top]), sample.groups)
                )
        advance(len(samples[start : start + batch_size]))
    return predictions, errors


def report_of(
    runner: Runner,
    predictions: list[Prediction],
    errors: list[dict],
    skipped: list[str],
    *,
    min_confidence: float | None = None,
    groupings: Sequence[tuple[str, ...]] | None = None,
) -> dict:
    """The evaluation report for predictions already made (the CLI keeps them for `--explain`);
    `groupings` as `summarize` takes them."""
    report = summarize(
        predictions,
        runner.info.labels,
        errors=errors,
        skipped=skipped,
        min_confidence=min_confidence,
        groupings=groupings,
    )
    report["model"] = {"runtime": runner.info.runtime, "source": runner.info.source, "precision": runner.info.precision}
    return report


def evaluate_samples(
    runner: Runner,
    samples: list[Sample],
    skipped: list[str],
    *,
    min_confidence: float | None = None,
    batch_size: int = 16,
    advance: Callable[[int], None] = lambda n: None,
) -> dict:
    predictions, errors = predict_samples(runner, samples, batch_size=batch_size, advance=advance)
    return report_of(runner, predictions, errors, skipped, min_confidence=min_confidence)

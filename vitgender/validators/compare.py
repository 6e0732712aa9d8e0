"""Compare two runs on the same images, and judge a comparison against budgets: pure functions.

`compare` takes two `RunResult`s (PyTorch and an artifact, or any two artifacts) and returns the
numbers; `judge` turns them into `Check`s. Neither runs a model, so saved outputs can be compared
again, against another reference, on a machine without the runtimes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vitgender.evaluation.metrics import Prediction, accuracy_cell, default_groupings, group_table, report_tables
from vitgender.precision import Precision
from vitgender.scoring import apply_function
from vitgender.validators import budgets as budgets_mod
from vitgender.validators.checks import ArtifactResult, Check
from vitgender.validators.localize import compare_stages, divergence
from vitgender.validators.metrics import compare_logits, logit_diff_histogram, logit_scale, paired_accuracy
from vitgender.validators.results import ImageSet, RunResult


def predictions(run: RunResult, images: ImageSet) -> list[Prediction]:
    """Per labelled image: truth, the runner's answer (by label name) and its probability."""
    probs = apply_function(run.logits, "softmax")
    out = []
    for i, (name, truth) in enumerate(zip(images.names, images.labels or [], strict=False)):
        top = int(probs[i].argmax())
        out.append(
            Prediction(
                name, truth, run.labels[top], float(probs[i, top]), (images.groups or [{}] * len(images.names))[i]
            )
        )
    return out


def group_deltas(reference: list[Prediction], candidate: list[Prediction], labels: Sequence[str]) -> list[dict]:
    """Per group: accuracy of the reference vs the candidate, with n, per label and per group of the
    tables `evaluate` reports by default for these labels (at most two fields each)."""
    rows = []
    fields = {key for p in reference for key in p.groups}
    for keys in (k for k in report_tables(reference, default_groupings(labels, fields)) if len(k) <= 2):
        ref_rows = {tuple(r["group"].items()): r for r in group_table(reference, keys)}
        for row in group_table(candidate, keys):
            ref = ref_rows[tuple(row["group"].items())]
            rows.append(
                {
                    "group": row["group"],
                    "n": row["n"],
                    "torch_accuracy": ref["accuracy"],
                    "artifact_accuracy": row["accuracy"],
                    "delta": row["accuracy"] - ref["accuracy"],
                }
            )
    return rows


def label_check(artifact_labels: tuple[str, ...], model_labels: tuple[str, ...]) -> Check:
    """The artifact's sidecar must name the model's labels in the model's order: a swapped order
    turns every answer into its opposite while the logits still match."""
    return Check(
        "labels",
        tuple(artifact_labels) == tuple(model_labels),
        ", ".join(artifact_labels),
        None,
        f"labels {list(artifact_labels)} differ from the model's {list(model_labels)} (order matters)",
    )


def compare(reference: RunResult, candidate: RunResult, images: ImageSet) -> ArtifactResult:
    """Everything measurable between two runs on the same images, as an unjudged ArtifactResult (no checks)."""
    result = ArtifactResult(
        candidate.name,
        candidate.runtime,
        Precision.parse(candidate.precision),
        candidate.path,
        candidate.sha256,
        {},
        [],
        {},
        calibration=candidate.calibration,
        inventory=candidate.inventory,
    )
    if candidate.logits.shape != reference.logits.shape:
        result.checks.append(
            Check(
                "output_shape",
                False,
                str(tuple(candidate.logits.shape)),
                None,
                f"logits of shape {tuple(candidate.logits.shape)}, the reference gives "
                f"{tuple(reference.logits.shape)}",
            )
        )
        return result
    ref, art = reference.logits, candidate.logits
    metrics = compare_logits(ref, art, candidate.labels, images.names)
    metrics["latency_ms_per_image"] = round(candidate.latency_ms_per_image, 3)
    if candidate.batch is not None:
        metrics.update(candidate.batch)
        metrics["batch_max_rel_logit_diff"] = candidate.batch["batch_max_abs_logit_diff"] / logit_scale(ref)
    top = ref.argmax(1)
    rows = np.arange(len(ref))
    result.histogram = logit_diff_histogram(ref, art)
    # P(the reference's predicted class) per image, for the plots: meaningful for any number of labels
    result.probabilities = {
        "torch": apply_function(ref, "softmax")[rows, top].tolist(),
        "artifact": apply_function(np.nan_to_num(art), "softmax")[rows, top].tolist(),
    }
    if images.labels:
        ref_preds, art_preds = predictions(reference, images), predictions(candidate, images)
        metrics.update(paired_accuracy([p.correct for p in ref_preds], [p.correct for p in art_preds]))
        result.accuracy = {"torch": accuracy_cell(ref_preds), "artifact": accuracy_cell(art_preds)}
        result.group_deltas = group_deltas(ref_preds, art_preds, reference.labels)
    if reference.stages and candidate.stages:
        stages = compare_stages(reference.stages, candidate.stages)
        result.localization = {"stages": stages, "divergence": divergence(stages)}
    result.metrics = metrics
    return result


def judge(
    result: ArtifactResult,
    budget: dict[str, float],
    artifact_labels: tuple[str, ...],
    model_labels: tuple[str, ...],
    labelled: bool,
) -> ArtifactResult:
    """Add the label-order, budget and quantization-proof checks to a comparison (in place; returned)."""
    from vitgender.validators.inventory import check_precision

    result.budget = budget
    if any(c.name == "output_shape" for c in result.checks):
        return result
    result.checks = [
        label_check(artifact_labels, model_labels),
        *result.checks,
        *budgets_mod.check(result.metrics, budget, labelled=labelled),
    ]
    if result.inventory is not None:
        result.checks.append(check_precision(result.inventory, result.precision))
    return result

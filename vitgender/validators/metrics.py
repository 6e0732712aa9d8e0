"""Parity metrics between the PyTorch reference and an artifact: pure functions, data out.

Like polygraphy's comparator: given two logit arrays for the same images, return numbers;
deciding pass/fail (budgets) and presenting (reports) happen elsewhere.

The budgeted figures are chosen so that they mean the same on 16 images or 5,000: quantiles
over images (not maxima, which grow with the sample), rates judged by a one-sided 99% Wilson
lower bound (a correct artifact's occasional flip does not make the bound cross a budget; a
broken one's many flips do), and accuracy compared pairwise (McNemar's exact test on the images
where exactly one of the two is right). Maxima are still reported, and budgeted only as a loose
catastrophic bound.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np

from vitgender.scoring import apply_function


class Better(str, Enum):
    """Which way a metric improves: a budget is an upper bound on a LOWER metric, a lower bound on a HIGHER one."""

    LOWER = "lower"
    HIGHER = "higher"


@dataclass(frozen=True)
class Metric:
    name: str
    better: Better
    meaning: str

    def within(self, value: float, limit: float) -> bool:
        return value <= limit if self.better is Better.LOWER else value >= limit

    def worse_by(self, new: float, old: float) -> float:
        """How much worse `new` is than `old` (positive = worse), whichever way the metric improves."""
        return new - old if self.better is Better.LOWER else old - new

    @property
    def symbol(self) -> str:
        return "≤" if self.better is Better.LOWER else "≥"


def _metrics(*rows: tuple[str, Better, str]) -> dict[str, Metric]:
    return {name: Metric(name, better, meaning) for name, better, meaning in rows}


# Every metric a budget may name, with its direction: the one place budgets, baselines, reports
# and the fit command read it from. "rel" metrics divide |Δlogit| by the reference logits' spread
# over the images (`logit_scale`), so one budget means the same for a model whose logits stay within
# +-1.6 and one whose logits reach 14.
METRICS: dict[str, Metric] = _metrics(
    ("max_abs_logit_diff", Better.LOWER, "largest |Δlogit| over all images and classes"),
    ("mean_abs_logit_diff", Better.LOWER, "mean |Δlogit|"),
    ("p99_abs_logit_diff", Better.LOWER, "99th percentile of |Δlogit| over all logits"),
    ("q90_abs_logit_diff", Better.LOWER, "90th percentile over images of the image's largest |Δlogit|"),
    ("q90_rel_logit_diff", Better.LOWER, "q90_abs_logit_diff / the reference logits' spread"),
    ("max_rel_logit_diff", Better.LOWER, "max_abs_logit_diff / the reference logits' spread"),
    ("max_abs_prob_diff", Better.LOWER, "largest |Δprobability|"),
    ("q90_abs_prob_diff", Better.LOWER, "90th percentile over images of the image's largest |Δprobability|"),
    ("cosine_min", Better.HIGHER, "smallest per-image cosine of the logit vectors (more than two classes)"),
    ("cosine_mean", Better.HIGHER, "mean per-image cosine of the logit vectors (more than two classes)"),
    ("top1_agreement", Better.HIGHER, "share of images with the reference's top-1 class"),
    ("flip_rate_lower99", Better.LOWER, "99% lower confidence bound of the share of changed decisions"),
    ("confident_flip_rate_lower99", Better.LOWER, "the same, for decisions the reference took with p >= 0.9"),
    ("accuracy_worse_p", Better.HIGHER, "McNemar p-value that the candidate is less accurate (labelled images)"),
    ("accuracy_drop", Better.LOWER, "reference accuracy - candidate accuracy (labelled images)"),
    ("flips_far_from_boundary", Better.LOWER, "changed decisions whose reference margin was >= 0.1"),
    ("batch_max_abs_logit_diff", Better.LOWER, "largest |Δlogit| of an image alone vs inside a batch"),
    ("batch_max_rel_logit_diff", Better.LOWER, "batch_max_abs_logit_diff / the reference logits' spread"),
)


def logit_scale(reference: np.ndarray) -> float:
    """The reference logits' spread: root mean square of each image's logits about their own mean.

    What a logit difference is measured against. Softmax ignores a shift shared by an image's logits,
    so the spread is too; it grows with the model's logit scale (rounding errors in fp16 and int8 grow
    with it as well), so a budget in these units transfers between a model whose logits stay within
    +-1.6 and one whose logits reach 14.
    """
    ref = np.asarray(reference, np.float64)
    if not ref.size:
        return 1.0
    return max(float(np.sqrt(((ref - ref.mean(axis=1, keepdims=True)) ** 2).mean())), 1e-12)


# A flip is "confident" when PyTorch gave its answer at least this probability: such an answer
# changing is a real behaviour change, unlike a coin-toss face crossing the boundary.
CONFIDENT = 0.9
# Kept for reports of schema 1: a flip whose reference top-1 margin is below this is "near the boundary".
BOUNDARY_MARGIN = 0.1
Z_ONE_SIDED_99 = 2.3263
QUANTILE = 0.9


def wilson_lower(k: int, n: int, z: float = Z_ONE_SIDED_99) -> float:
    """One-sided lower confidence bound of a rate (Wilson score): 'the true rate is at least this'."""
    if n == 0:
        return 0.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half)


def mcnemar_worse_p(artifact_only_wrong: int, torch_only_wrong: int) -> float:
    """One-sided exact McNemar p-value for 'the artifact is less accurate than PyTorch'.

    Only discordant images count: b where the artifact alone is wrong, c where PyTorch alone is.
    Under equal accuracy b ~ Binomial(b + c, 1/2); the p-value is P(X >= b).
    """
    n = artifact_only_wrong + torch_only_wrong
    if n == 0:
        return 1.0
    return min(1.0, sum(math.comb(n, i) for i in range(artifact_only_wrong, n + 1)) / 2**n)


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    denominator = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return np.where(denominator > 0, (a64 * b64).sum(axis=1) / np.maximum(denominator, 1e-300), 1.0)


def compare_logits(
    reference: np.ndarray,
    candidate: np.ndarray,
    labels: Sequence[str],
    names: Sequence[str],
) -> dict:
    """Logit and probability differences, decision agreement and the flipped images.

    `reference` and `candidate` must have the same shape (callers check; validate reports a
    shape mismatch as a failed check of its own).
    """
    if reference.shape != candidate.shape:
        raise ValueError(f"shape mismatch: reference {reference.shape} vs artifact {candidate.shape}")
    n = len(reference)
    finite = bool(np.isfinite(candidate).all())
    safe = np.nan_to_num(candidate, nan=0.0, posinf=1e30, neginf=-1e30)
    diff = np.abs(reference.astype(np.float64) - safe.astype(np.float64))
    p_ref, p_art = apply_function(reference, "softmax"), apply_function(safe.astype(np.float32), "softmax")
    top_ref, top_art = reference.argmax(1), safe.argmax(1)
    sorted_ref = np.sort(p_ref, axis=1)
    ref_margin = sorted_ref[:, -1] - sorted_ref[:, -2] if p_ref.shape[1] > 1 else sorted_ref[:, -1]
    ref_prob = p_ref[np.arange(n), top_ref]
    flips = [
        {
            "image": names[i],
            "reference": labels[top_ref[i]],
            "artifact": labels[top_art[i]],
            "reference_prob": float(ref_prob[i]),
            "artifact_prob": float(p_art[i, top_ref[i]]),
            "confident": bool(ref_prob[i] >= CONFIDENT),
            "near_boundary": bool(ref_margin[i] < BOUNDARY_MARGIN),
        }
        for i in np.flatnonzero(top_ref != top_art)
    ]
    per_image = diff.max(axis=1) if diff.size else np.zeros(0)
    scale = logit_scale(reference)
    prob_diff = np.abs(p_ref - p_art).max(axis=1) if diff.size else np.zeros(0)
    confident = sum(f["confident"] for f in flips)
    worst = np.argsort(-per_image)[:5]
    metrics = {
        "images": int(n),
        "finite": finite,
        "nonfinite_count": int((~np.isfinite(candidate)).sum()),
        "max_abs_logit_diff": float(diff.max()) if diff.size else 0.0,
        "mean_abs_logit_diff": float(diff.mean()) if diff.size else 0.0,
        "p99_abs_logit_diff": float(np.percentile(diff, 99)) if diff.size else 0.0,
        "q90_abs_logit_diff": float(np.quantile(per_image, QUANTILE)) if n else 0.0,
        "logit_scale": scale,
        "q90_rel_logit_diff": float(np.quantile(per_image, QUANTILE)) / scale if n else 0.0,
        "max_rel_logit_diff": float(diff.max()) / scale if diff.size else 0.0,
        "max_abs_prob_diff": float(prob_diff.max()) if n else 0.0,
        "q90_abs_prob_diff": float(np.quantile(prob_diff, QUANTILE)) if n else 0.0,
        "top1_agreement": float((top_ref == top_art).mean()) if n else 1.0,
        "flips": flips,
        "flip_rate": len(flips) / n if n else 0.0,
        "flip_rate_lower99": wilson_lower(len(flips), n),
        "confident_flips": confident,
        "confident_flip_rate": confident / n if n else 0.0,
        "confident_flip_rate_lower99": wilson_lower(confident, n),
        "flips_near_boundary": sum(f["near_boundary"] for f in flips),
        "flips_far_from_boundary": sum(not f["near_boundary"] for f in flips),
        "boundary_margin": BOUNDARY_MARGIN,
        # probabilities of the class the reference predicted (not of label 0: five-class models too)
        "worst_images": [
            {
                "image": names[i],
                "max_abs_logit_diff": float(per_image[i]),
                "label": labels[top_ref[i]],
                "torch_prob": float(p_ref[i, top_ref[i]]),
                "artifact_prob": float(p_art[i, top_ref[i]]),
            }
            for i in worst
        ],
    }
    if reference.shape[1] > 2:  # with two classes the logits are near-antisymmetric: cosine is always +-1
        cosine = _cosine_rows(reference, safe)
        metrics.update(cosine_min=float(cosine.min()) if n else 1.0, cosine_mean=float(cosine.mean()) if n else 1.0)
    return metrics


def paired_accuracy(torch_correct: np.ndarray, artifact_correct: np.ndarray) -> dict:
    """Accuracy of both on the same labelled images, and whether the artifact is provably worse."""
    torch_correct, artifact_correct = np.asarray(torch_correct, bool), np.asarray(artifact_correct, bool)
    artifact_only_wrong = int((torch_correct & ~artifact_correct).sum())
    torch_only_wrong = int((~torch_correct & artifact_correct).sum())
    return {
        "accuracy_drop": float(torch_correct.mean() - artifact_correct.mean()) if len(torch_correct) else 0.0,
        "artifact_only_wrong": artifact_only_wrong,
        "torch_only_wrong": torch_only_wrong,
        "accuracy_worse_p": mcnemar_worse_p(artifact_only_wrong, torch_only_wrong),
    }


def logit_diff_histogram(reference: np.ndarray, candidate: np.ndarray, bins: int = 20) -> dict:
    """Histogram of |logit differences| on a log10 scale, for the report's plot."""
    diff = np.abs(reference.astype(np.float64) - np.nan_to_num(candidate).astype(np.float64)).ravel()
    logs = np.log10(np.maximum(diff, 1e-9))
    counts, edges = np.histogram(logs, bins=bins, range=(-9, max(1.0, float(logs.max()) + 0.01)))
    return {"log10_edges": edges.tolist(), "counts": counts.tolist()}

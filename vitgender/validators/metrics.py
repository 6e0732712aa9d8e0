"""Parity metrics between the PyTorch reference and an artifact: pure functions, data out.

Like polygraphy's comparator: given two logit arrays for the same preprocessed images, return
numbers; deciding pass/fail (budgets) and presenting (reports) happen elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vitgender.classify import apply_function

# A flip whose reference top-1 probability margin is below this is "near the boundary":
# expected occasionally from any lossy conversion, unlike a confident answer that changes.
BOUNDARY_MARGIN = 0.1


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    denominator = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return np.where(denominator > 0, (a64 * b64).sum(axis=1) / np.maximum(denominator, 1e-300), 1.0)


def compare_logits(
    reference: np.ndarray,
    candidate: np.ndarray,
    labels: Sequence[str],
    names: Sequence[str],
    margin: float = BOUNDARY_MARGIN,
) -> dict:
    """Logit and probability differences, decision agreement and the list of flipped images."""
    if reference.shape != candidate.shape:
        raise ValueError(f"shape mismatch: reference {reference.shape} vs artifact {candidate.shape}")
    finite = bool(np.isfinite(candidate).all())
    safe = np.nan_to_num(candidate, nan=0.0, posinf=1e30, neginf=-1e30)
    diff = np.abs(reference.astype(np.float64) - safe.astype(np.float64))
    p_ref, p_art = apply_function(reference, "softmax"), apply_function(safe.astype(np.float32), "softmax")
    top_ref, top_art = reference.argmax(1), safe.argmax(1)
    sorted_ref = np.sort(p_ref, axis=1)
    ref_margin = sorted_ref[:, -1] - sorted_ref[:, -2] if p_ref.shape[1] > 1 else sorted_ref[:, -1]
    flips = [
        {"image": names[i], "reference": labels[top_ref[i]], "artifact": labels[top_art[i]],
         "reference_prob": float(p_ref[i, top_ref[i]]), "artifact_prob": float(p_art[i, top_ref[i]]),
         "near_boundary": bool(ref_margin[i] < margin)}
        for i in np.flatnonzero(top_ref != top_art)
    ]
    per_image = diff.max(axis=1)
    worst = np.argsort(-per_image)[:5]
    cosine = _cosine_rows(reference, safe)
    return {
        "images": int(len(reference)),
        "finite": finite,
        "nonfinite_count": int((~np.isfinite(candidate)).sum()),
        "max_abs_logit_diff": float(diff.max()) if diff.size else 0.0,
        "mean_abs_logit_diff": float(diff.mean()) if diff.size else 0.0,
        "p99_abs_logit_diff": float(np.percentile(diff, 99)) if diff.size else 0.0,
        "cosine_min": float(cosine.min()) if cosine.size else 1.0,
        "cosine_mean": float(cosine.mean()) if cosine.size else 1.0,
        "max_abs_prob_diff": float(np.abs(p_ref - p_art).max()) if diff.size else 0.0,
        "top1_agreement": float((top_ref == top_art).mean()) if len(top_ref) else 1.0,
        "flips": flips,
        "flips_near_boundary": sum(f["near_boundary"] for f in flips),
        "flips_far_from_boundary": sum(not f["near_boundary"] for f in flips),
        "boundary_margin": margin,
        "worst_images": [{"image": names[i], "max_abs_logit_diff": float(per_image[i])} for i in worst],
    }


def logit_diff_histogram(reference: np.ndarray, candidate: np.ndarray, bins: int = 20) -> dict:
    """Histogram of |logit differences| on a log10 scale, for the report's plot."""
    diff = np.abs(reference.astype(np.float64) - np.nan_to_num(candidate).astype(np.float64)).ravel()
    logs = np.log10(np.maximum(diff, 1e-9))
    counts, edges = np.histogram(logs, bins=bins, range=(-9, max(1.0, float(logs.max()) + 0.01)))
    return {"log10_edges": edges.tolist(), "counts": counts.tolist()}

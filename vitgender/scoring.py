"""Logits -> HF-pipeline-shaped answers: the scoring every entry point shares.

`classify`, the servers, `classify --ray`, `evaluate`, `explain` and the parity validators all
turn logits into scores and ranked `{"label", "score"}` lists the same way; this module is that
one way, with no model or runtime in it (so validators and serving need not import the
`Classifier` API).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vitgender.errors import UsageError

FUNCTIONS = ("softmax", "sigmoid", "none")


def apply_function(logits: np.ndarray, function: str) -> np.ndarray:
    """Scores from logits, as the transformers pipeline computes them (float32 numpy)."""
    if function == "softmax":
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return shifted / shifted.sum(axis=-1, keepdims=True)
    if function == "sigmoid":
        return 1.0 / (1.0 + np.exp(-logits))
    if function == "none":
        return logits
    raise UsageError(function, f"function_to_apply must be one of {', '.join(FUNCTIONS)}")


def rank(scores: np.ndarray, labels: Sequence[str], top_k: int | None) -> list[dict]:
    """The top_k labels by score, highest first (all of them when top_k is None)."""
    order = sorted(range(len(labels)), key=lambda i: -float(scores[i]))
    k = len(labels) if top_k is None else max(1, min(top_k, len(labels)))
    return [{"label": labels[i], "score": float(scores[i])} for i in order[:k]]


@dataclass
class Result:
    """One input's outcome: predictions (or faces, in face-first mode), or an error that says why."""

    image: str
    predictions: list[dict] | None = None
    error: str | None = None
    faces: list[dict] | None = None

    def to_dict(self) -> dict:
        if self.error is not None:
            return {"image": self.image, "error": self.error}
        if self.faces is not None:
            return {"image": self.image, "faces": self.faces}
        return {"image": self.image, "predictions": self.predictions}


UNCERTAIN = "uncertain"


def with_uncertainty(ranked: list[dict], min_confidence: float | None) -> list[dict]:
    """Below `min_confidence`, the answer starts with `{"label": "uncertain", "score": <top score>}`,
    followed by the ranked labels as usual.

    One form for the CLI, the Python API and both servers: HF clients parse the list unchanged
    (the first label is what a caller that takes one answer gets), and no guess is lost.
    """
    if min_confidence is None or ranked[0]["score"] >= min_confidence:
        return ranked
    return [{"label": UNCERTAIN, "score": ranked[0]["score"]}, *ranked]

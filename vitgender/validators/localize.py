"""Where does an artifact start to differ from PyTorch? Stage-by-stage activation comparison.

Like polygraphy's "mark all outputs" comparison, narrowed to the stages a ViT engineer reasons
in (each model type's `stages`, `vitgender.models`): patch embeddings, each block's attention output, MLP
activations and block output, the final layer norm, the logits. Each runtime declares whether its runners
expose stages (`Runtime.stages`; `stage_activations`: ONNX all of them, TFLite the embeddings, block outputs and logits);
this module only compares them and names the stage where the error starts.
"""

from __future__ import annotations

import numpy as np


def compare_stages(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> list[dict]:
    """Relative L2 error and mean per-image cosine of each stage both sides expose, in forward order."""
    rows = []
    for name in reference:
        if name not in candidate or reference[name].shape != candidate[name].shape:
            continue
        ref = reference[name].reshape(len(reference[name]), -1).astype(np.float64)
        art = candidate[name].reshape(len(candidate[name]), -1).astype(np.float64)
        rel = float(np.linalg.norm(art - ref) / max(np.linalg.norm(ref), 1e-12))
        norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(art, axis=1)
        cosine = float(np.mean(np.where(norms > 0, (ref * art).sum(axis=1) / np.maximum(norms, 1e-300), 1.0)))
        rows.append({"stage": name, "relative_l2": rel, "cosine": cosine})
    return rows


FLOAT32_NOISE = 1e-4  # relative error of a faithful fp32 conversion stays below this at every stage


def divergence(rows: list[dict], floor: float = 1e-6) -> dict | None:
    """The stage whose relative error grows most over the stage before it: where things start to go wrong.

    None when no stage differs beyond float32 rounding (a faithful fp32 artifact).
    """
    if not rows or max(row["relative_l2"] for row in rows) < FLOAT32_NOISE:
        return None
    previous, best = floor, None
    for row in rows:
        growth = row["relative_l2"] / max(previous, floor)
        if best is None or growth > best["growth"]:
            best = {"stage": row["stage"], "growth": growth, "relative_l2": row["relative_l2"]}
        previous = max(row["relative_l2"], floor)
    return best


def localize(reference, candidate, pixels: np.ndarray, inputs: np.ndarray) -> dict:
    """The per-stage error curve of `candidate` against the PyTorch `reference` runner on the same images."""
    rows = compare_stages(reference.stage_activations(pixels), candidate.stage_activations(inputs))
    return {"stages": rows, "divergence": divergence(rows)}

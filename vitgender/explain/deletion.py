"""The deletion test: does removing the patches a map ranks first hurt the prediction first?

A map that tracks what the model uses should make the predicted class's probability fall
faster when its most salient patches are removed than when random patches are, and slower
when its least salient ones are (Petsiuk et al. 2018, "RISE"; Chefer et al. 2021 use the same
perturbation test). "Removed" means replaced by the image's own per-channel mean in normalised
pixel space: a flat patch that adds no edge or colour of its own, and no value outside the
image's range. All functions are pure; the model enters only through `predict`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

ORDERS = ("salient", "random", "least")
FRACTIONS = tuple(k / 10 for k in range(10))  # 0%, 10%, ..., 90% of the patches removed

Predict = Callable[[np.ndarray], np.ndarray]  # float32 (n, C, H, W) pixel_values -> (n, classes) probabilities


def patch_order(maps: np.ndarray, order: str, rng: np.random.Generator | None = None) -> np.ndarray:
    """(N, patches) indices into the row-major patch grid, in the order they are removed.

    Ties keep grid order (a stable sort), so the same maps always give the same order; "random"
    ignores the maps and needs `rng`.
    """
    flat = np.asarray(maps, dtype=np.float64).reshape(len(maps), -1)
    if order == "salient":
        return np.argsort(-flat, axis=1, kind="stable")
    if order == "least":
        return np.argsort(flat, axis=1, kind="stable")
    if order == "random":
        if rng is None:
            raise ValueError("the random order needs an rng (seeded, so runs repeat)")
        return np.stack([rng.permutation(flat.shape[1]) for _ in range(len(flat))])
    raise ValueError(f"order must be one of {', '.join(ORDERS)}, not {order!r}")


def remove_patches(pixels: np.ndarray, patches: np.ndarray, grid: tuple[int, int], patch: int) -> np.ndarray:
    """A copy of one image's (C, H, W) pixels with the given row-major patch indices set to the
    image's per-channel mean."""
    out = np.array(pixels, dtype=np.float32, copy=True)
    mean = pixels.reshape(pixels.shape[0], -1).mean(axis=1).astype(np.float32)
    _, grid_w = grid
    for index in np.asarray(patches, dtype=np.int64):
        row, col = divmod(int(index), grid_w)
        out[:, row * patch : (row + 1) * patch, col * patch : (col + 1) * patch] = mean[:, None, None]
    return out


def deletion_curves(
    predict: Predict,
    pixel_values: np.ndarray,
    orders: np.ndarray,
    target: np.ndarray,
    patch: int,
    fractions: Sequence[float] = FRACTIONS,
    *,
    base: np.ndarray | None = None,
    batch_size: int = 64,
) -> np.ndarray:
    """(N, len(fractions)) probability of each image's `target` class after removing the first
    round(fraction x patches) of its `orders` row.

    `base` (N,) is the untouched probability, reused for fraction 0 instead of another forward pass.
    """
    pixel_values = np.asarray(pixel_values, dtype=np.float32)
    n, _, height, width = pixel_values.shape
    grid = (height // patch, width // patch)
    total = grid[0] * grid[1]
    if orders.shape != (n, total):
        raise ValueError(f"orders must be ({n}, {total}) for a {grid[0]}x{grid[1]} grid, got {orders.shape}")
    curves = np.empty((n, len(fractions)), dtype=np.float64)
    jobs = []  # (image, column, patches removed)
    for column, fraction in enumerate(fractions):
        count = int(round(fraction * total))
        for image in range(n):
            if count == 0 and base is not None:
                curves[image, column] = base[image]
            else:
                jobs.append((image, column, count))
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        batch = np.stack([remove_patches(pixel_values[i], orders[i, :count], grid, patch) for i, _, count in chunk])
        probabilities = predict(batch)
        for (image, column, _), row in zip(chunk, probabilities, strict=False):
            curves[image, column] = row[int(target[image])]
    return curves


def curve_auc(curves: np.ndarray, fractions: Sequence[float] = FRACTIONS) -> np.ndarray:
    """Area under each curve by the trapezoid rule, divided by the fraction span: the mean
    probability over the removal range, in [0, 1]. Lower = faster drop."""
    fractions = np.asarray(fractions, dtype=np.float64)
    curves = np.asarray(curves, dtype=np.float64)
    widths = np.diff(fractions)
    area = ((curves[..., 1:] + curves[..., :-1]) / 2 * widths).sum(-1)
    return area / (fractions[-1] - fractions[0])


def torch_predict(model) -> Predict:
    """`predict` for an HF image classifier: softmax probabilities, no gradients, eval mode."""
    import torch

    model.eval()

    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            logits = model(pixel_values=torch.from_numpy(np.ascontiguousarray(batch))).logits
        return torch.softmax(logits.float(), -1).numpy()

    return predict

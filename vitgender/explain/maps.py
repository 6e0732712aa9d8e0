"""Where a ViT looked: attention rollout and gradient-weighted attention rollout over the patch grid.

Pure functions of a loaded HF model and its `pixel_values`; no files, no images, no globals.
Both methods combine the per-layer attention matrices `A` (batch, heads, T, T) that the model
returns with `output_attentions=True` (eager attention, so the returned tensors are the very
softmax outputs the forward pass multiplied with its values; `attribution` differentiates
through them and fails loudly if they were copies):

- `rollout` (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers"): fuse the
  heads (mean by default, or max/min), optionally drop the weakest `discard_ratio` of each
  fused matrix (as in jacobgil/vit-explain), add the residual path (`0.5 A + 0.5 I`),
  renormalise rows, and multiply the layers: `R = Â_L ··· Â_1`. Class-agnostic: it says where
  information flowed from, not whether it argued for the predicted label.
- `attribution` (Chefer, Gur, Wolf 2021b, "Generic Attention-model Explainability",
  hila-chefer/Transformer-MM-Explainability): `R = I`; for each block
  `Ā = mean_heads(relu(∂y_c/∂A ⊙ A))`, `R += Ā · R`. The gradient of the explained class's
  logit `y_c` keeps the heads and entries that push `y_c` up and zeroes the rest.

The map is the classifier's read-out row of `R` over the patch tokens (the CLS row for CLS
pooling, the mean of the patch rows for mean pooling, their average for DINOv2's
`[CLS, mean(patches)]` head), renormalised to sum to 1 over the patches: the CLS token's
mass on itself and on any register or distillation tokens is dropped, since those are not
places in the image. Both methods give a patch exactly zero mass when no token on a path to
the read-out attends to it (tests/test_explain.py builds such a model).

DINOv2-style backbones (the default model is a DINOv2 ViT-S/14) park much of their attention
in a few high-norm "artifact" tokens, usually background patches that hold global state
(Darcet et al. 2023, "Vision Transformers Need Registers"). Rollout follows attention, so it
shows those patches as isolated hot spots; neither head fusion nor discarding the weakest
entries removes them (they are the *strongest* entries), and no method here hides them:
renormalising over the patches keeps the artifacts' share honest instead of letting the
CLS self-mass dilute everything. The gradient weighting of `attribution` keeps an artifact
only where attending to it raised the explained logit. Which map tracks what the model uses
is measured, not assumed: `vitgender.explain.deletion` and `benchmarks/explain_deletion.py`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

METHODS = ("rollout", "attribution")
HEAD_FUSIONS = ("mean", "max", "min")


@dataclass(frozen=True)
class MapResult:
    """Maps (N, grid_h, grid_w) summing to 1, the logits (N, classes) and the class each map explains."""

    maps: np.ndarray
    logits: np.ndarray
    target: np.ndarray


def patch_grid(model, pixel_values) -> tuple[int, int]:
    """(rows, columns) of patch tokens for this input size: the patch conv has stride = kernel, no padding."""
    patch = model.config.patch_size
    ph, pw = (patch, patch) if isinstance(patch, int) else tuple(patch)
    height, width = pixel_values.shape[-2:]
    return int(height) // ph, int(width) // pw


@contextmanager
def _eager_eval(model) -> Iterator[None]:
    """Eager attention (the only implementation that returns attention probabilities) in eval mode,
    restored afterwards: SDPA computes the same function but hands back no matrices."""
    previous, training = model.config._attn_implementation, model.training
    model.config._attn_implementation = "eager"
    model.eval()
    try:
        yield
    finally:
        model.config._attn_implementation = previous
        model.train(training)


def _readout(model, num_tokens: int, num_patches: int):
    """Weights over output tokens that the classification head reads (see the module docstring); the
    model type's config (`vitgender.models`) knows its head."""
    import torch

    from vitgender.models import model_config

    config = model.config
    weights = model_config(config.model_type).readout(config.to_dict(), type(model).__name__, num_tokens, num_patches)
    return torch.from_numpy(weights)


def _forward(model, pixel_values, target: Sequence[int] | np.ndarray | None, need_grad: bool):
    """Logits, per-layer attentions and the explained class per image (predicted, unless given)."""
    import torch

    if model.dtype != torch.float32:
        raise TypeError(f"explanations need a float32 model (got {model.dtype}); call model.float() first")
    pixels = torch.as_tensor(pixel_values, dtype=torch.float32)
    if pixels.ndim != 4:
        raise ValueError(f"pixel_values must be (N, C, H, W), got shape {tuple(pixels.shape)}")
    with torch.set_grad_enabled(need_grad):
        if need_grad:  # so the graph reaches the attentions even when the parameters are frozen
            pixels = pixels.clone().requires_grad_(True)
        output = model(pixel_values=pixels, output_attentions=True)
    attentions = output.attentions
    if not attentions:
        raise ValueError(f"{type(model).__name__} returned no attentions: not a ViT-style encoder")
    logits = output.logits
    if target is None:
        chosen = logits.detach().argmax(-1)
    else:
        chosen = torch.as_tensor(np.asarray(target), dtype=torch.long).reshape(-1)
        if chosen.shape[0] != logits.shape[0]:
            raise ValueError(f"{chosen.shape[0]} targets for {logits.shape[0]} images")
    return logits, attentions, chosen


def _to_maps(model, pixel_values, relevance_matrix, chosen, logits) -> MapResult:
    """Read-out row of R over the patch tokens, renormalised; uniform where it carries no mass."""
    import torch

    grid_h, grid_w = patch_grid(model, pixel_values)
    num_tokens = relevance_matrix.shape[-1]
    num_patches = grid_h * grid_w
    if num_patches < 1 or num_patches > num_tokens - 1:
        raise ValueError(f"{num_tokens} tokens cannot hold a {grid_h}x{grid_w} patch grid plus a CLS token")
    row = torch.einsum("t,nts->ns", _readout(model, num_tokens, num_patches), relevance_matrix.double())
    patches = row[:, num_tokens - num_patches :].clamp(min=0)
    total = patches.sum(-1, keepdim=True)
    usable = torch.isfinite(total) & (total > 0)
    patches = torch.where(
        usable,
        patches / torch.where(usable, total, torch.ones_like(total)),
        torch.full_like(patches, 1.0 / num_patches),
    )
    return MapResult(
        patches.reshape(-1, grid_h, grid_w).float().numpy(),
        logits.detach().float().numpy(),
        chosen.numpy().astype(np.int64),
    )


def _fuse(attention, head_fusion: str):
    if head_fusion == "mean":
        return attention.mean(1)
    if head_fusion == "max":
        return attention.amax(1)
    if head_fusion == "min":
        return attention.amin(1)
    raise ValueError(f"head_fusion must be one of {', '.join(HEAD_FUSIONS)}, not {head_fusion!r}")


def _discard_lowest(fused, ratio: float):
    """Zero the weakest `ratio` of each matrix's entries, never the attention to the CLS token (column 0)."""
    import torch

    if ratio <= 0:
        return fused
    n, t, _ = fused.shape
    count = min(int(t * t * ratio), t * (t - 1))
    if count == 0:
        return fused
    flat = fused.reshape(n, -1).clone()
    keep = torch.zeros_like(flat, dtype=torch.bool).reshape(n, t, t)
    keep[:, :, 0] = True
    candidates = flat.masked_fill(keep.reshape(n, -1), float("inf"))
    lowest = candidates.topk(count, dim=-1, largest=False).indices
    flat.scatter_(1, lowest, 0.0)
    return flat.reshape(n, t, t)


def rollout_result(
    model,
    pixel_values,
    *,
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    target: Sequence[int] | np.ndarray | None = None,
) -> MapResult:
    """Attention rollout with the logits; `target` only names the class reported (rollout ignores it)."""
    import torch

    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), not {discard_ratio}")
    with _eager_eval(model), torch.no_grad():
        logits, attentions, chosen = _forward(model, pixel_values, target, need_grad=False)
        num_tokens = attentions[0].shape[-1]
        eye = torch.eye(num_tokens, dtype=torch.float64)
        result = eye.expand(attentions[0].shape[0], -1, -1)
        for attention in attentions:
            fused = _discard_lowest(_fuse(attention.double(), head_fusion), discard_ratio)
            mixed = 0.5 * fused + 0.5 * eye
            mixed = mixed / mixed.sum(-1, keepdim=True)
            result = mixed @ result
    return _to_maps(model, pixel_values, result, chosen, logits)


def attribution_result(model, pixel_values, *, target: Sequence[int] | np.ndarray | None = None) -> MapResult:
    """Gradient-weighted attention rollout (Chefer et al. 2021b) for `target` (default: the predicted class)."""
    import torch

    with _eager_eval(model):
        logits, attentions, chosen = _forward(model, pixel_values, target, need_grad=True)
        score = logits.gather(1, chosen[:, None]).sum()  # images are independent: one backward serves the batch
        # autograd.grad raises if an attention tensor is not on the path to the logits (i.e. a copy)
        grads = torch.autograd.grad(score, attentions)
    with torch.no_grad():
        num_tokens = attentions[0].shape[-1]
        result = torch.eye(num_tokens, dtype=torch.float64).repeat(attentions[0].shape[0], 1, 1)
        for attention, grad in zip(attentions, grads, strict=False):
            fused = (grad.double() * attention.detach().double()).clamp(min=0).mean(1)
            result = result + fused @ result
    return _to_maps(model, pixel_values, result, chosen, logits)


def rollout(model, pixel_values, *, head_fusion: str = "mean", discard_ratio: float = 0.0) -> np.ndarray:
    """(N, grid_h, grid_w) attention-rollout maps, each summing to 1."""
    return rollout_result(model, pixel_values, head_fusion=head_fusion, discard_ratio=discard_ratio).maps


def attribution(model, pixel_values, *, target: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """(N, grid_h, grid_w) gradient-weighted attention-rollout maps for `target`, each summing to 1."""
    return attribution_result(model, pixel_values, target=target).maps


def explain_pixels(model, pixel_values, method: str, *, target: Sequence[int] | np.ndarray | None = None) -> MapResult:
    """Dispatch on `method` ('rollout' or 'attribution'), with each method's published defaults."""
    if method == "rollout":
        return rollout_result(model, pixel_values, target=target)
    if method == "attribution":
        return attribution_result(model, pixel_values, target=target)
    raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")


def average_maps(maps: Sequence[np.ndarray]) -> np.ndarray:
    """The mean of same-shaped maps, renormalised to sum to 1 (e.g. one race x gender cell's right answers).

    Each map counts once whatever its sharpness, since every map already sums to 1; an empty list
    is an error rather than a silent zero map, because "no images in this cell" must be reported.
    """
    if len(maps) == 0:
        raise ValueError("average_maps needs at least one map")
    stacked = np.stack([np.asarray(m, dtype=np.float64) for m in maps])
    if stacked.ndim != 3:
        raise ValueError(f"maps must be 2-D (grid_h, grid_w), got {stacked.shape[1:]}")
    mean = stacked.mean(0)
    total = mean.sum()
    if not np.isfinite(total) or total <= 0:
        raise ValueError("maps carry no mass (all zero or not finite)")
    return (mean / total).astype(np.float32)

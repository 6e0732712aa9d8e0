"""SmoothQuant-style scale migration: make a ViT's activations easier to quantize, exactly in float.

A ViT's LayerNorm outputs carry a few channels tens of times larger than the rest, and an int8
activation has one scale per tensor, so those channels set the step and the others lose most
of their bits. SmoothQuant (Xiao et al., 2023) divides each channel j of a linear's input by
s_j and multiplies the weight's column j by s_j: the product is unchanged, the activation's
range is flattened and the weight (quantized per output channel) absorbs the difference. Where
the division folds into the op before, the float model is the same function:

- the two LayerNorms' gamma and beta absorb 1/s for the Q/K/V projections and the MLP's first linear;
- the value projection's rows absorb 1/s for the attention output projection (softmax(QK^T) V is
  linear in each channel of V).

The MLP's second linear reads GELU's output, where nothing folds, and is left as it is.
`s_j = max|x_j|^alpha / max|W_:,j|^(1-alpha)` from the calibration images, alpha 0.5 as in the paper.
Every int8 toolchain (ORT static, full-integer TFLite, ExecuTorch PT2E) quantizes the migrated
model, so they all gain from it; the float artifacts are exported from the checkpoint unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_ALPHA = 0.5


@dataclass(frozen=True)
class Migration:
    """What was migrated, for the manifest."""

    alpha: float
    groups: int  # (activation, linears) pairs rescaled
    largest_scale: float
    smallest_scale: float

    def manifest(self) -> dict:
        return {
            "method": "SmoothQuant scale migration (folded into LayerNorm and value weights; float-exact)",
            "alpha": self.alpha,
            "groups": self.groups,
            "scale_range": [round(self.smallest_scale, 5), round(self.largest_scale, 5)],
        }


def _module(root, path: str):
    for part in path.split("."):
        root = getattr(root, part, None)
        if root is None:
            return None
    return root


def _input_maxima(model, linears: list, pixels: np.ndarray, batch: int = 16) -> list:
    """max |x_j| over the calibration images of each linear's input, per channel."""
    import torch

    maxima: list = [None] * len(linears)

    def record(index: int):
        def hook(module, inputs, output):
            x = inputs[0].detach().abs().reshape(-1, inputs[0].shape[-1]).amax(0)
            maxima[index] = x if maxima[index] is None else torch.maximum(maxima[index], x)

        return hook

    hooks = [linear.register_forward_hook(record(i)) for i, linear in enumerate(linears)]
    try:
        with torch.inference_mode():
            for start in range(0, len(pixels), batch):
                model(pixel_values=torch.from_numpy(np.ascontiguousarray(pixels[start : start + batch])))
    finally:
        for hook in hooks:
            hook.remove()
    return maxima


def migrate_scales(model, model_type, pixels: np.ndarray, alpha: float = DEFAULT_ALPHA) -> Migration:
    """Rewrite `model` in place (see the module docstring); the float function stays the same."""
    import torch

    groups = []  # (input maximum source linear, op absorbing 1/s, linears absorbing s)
    for block in model_type.blocks(model):
        qkv = [_module(block, path) for path in model_type.attention_inputs]
        norm1, norm2 = _module(block, model_type.norm_before), _module(block, model_type.norm_after)
        paths = (model_type.mlp_input, model_type.attention_inputs[-1], model_type.attention_output)
        fc1, value, proj = (_module(block, path) for path in paths)
        if getattr(norm1, "weight", None) is not None and all(isinstance(m, torch.nn.Linear) for m in qkv):
            groups.append((qkv[0], norm1, qkv))
        if getattr(norm2, "weight", None) is not None and isinstance(fc1, torch.nn.Linear):
            groups.append((fc1, norm2, [fc1]))
        if isinstance(value, torch.nn.Linear) and isinstance(proj, torch.nn.Linear):
            groups.append((proj, value, [proj]))
    if not groups:
        return Migration(alpha, 0, 1.0, 1.0)
    maxima = _input_maxima(model, [g[0] for g in groups], pixels)
    largest, smallest = 0.0, float("inf")
    with torch.no_grad():
        for (_, before, linears), x_max in zip(groups, maxima, strict=True):
            w_max = torch.stack([linear.weight.abs().amax(0) for linear in linears]).amax(0)
            scale = (x_max.clamp(min=1e-5) ** alpha / w_max.clamp(min=1e-5) ** (1 - alpha)).clamp(min=1e-5)
            if isinstance(before, torch.nn.Linear):  # the value projection: its output rows
                before.weight.div_(scale[:, None])
            else:  # a LayerNorm: gamma
                before.weight.div_(scale)
            if before.bias is not None:
                before.bias.div_(scale)
            for linear in linears:
                linear.weight.mul_(scale)
            largest, smallest = max(largest, float(scale.max())), min(smallest, float(scale.min()))
    return Migration(alpha, len(groups), largest, smallest)

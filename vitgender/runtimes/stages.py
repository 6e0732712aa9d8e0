"""The stages of a ViT forward pass that runners can expose, for localising where an artifact diverges.

Every runtime that can read intermediate tensors implements `Runner.stage_activations(inputs)`,
returning `{stage: float32 array}` for the stages below it can identify; validators compare them
without knowing any format.
"""

from __future__ import annotations


def stages(num_layers: int) -> list[tuple[str, str]]:
    """(stage name, HF module path) in forward order."""
    out = [("embeddings", "vit.embeddings")]
    for k in range(num_layers):
        out += [(f"block {k} attention", f"vit.encoder.layer.{k}.attention"),
                (f"block {k} mlp", f"vit.encoder.layer.{k}.intermediate"),
                (f"block {k}", f"vit.encoder.layer.{k}")]
    return out + [("final layernorm", "vit.layernorm"), ("logits", "classifier")]

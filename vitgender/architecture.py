"""The model family vitgender supports, and the sizes derived from a ViT config.

One place answers "is this a ViT?" (checkpoint loading, export configs) and "how many tokens,
FLOPs and activation bytes does one image cost?" (`vitgender bench`, `--batch-size auto`), so
the numbers always come from the model's own config rather than from one model's constants.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# Classifiers that are plain ViTs or direct descendants: same pixel_values -> logits contract,
# same pre-norm transformer block, loadable with AutoModelForImageClassification.
VIT_MODEL_TYPES: tuple[str, ...] = ("vit", "deit", "dinov2", "dinov2_with_registers", "vit_msn", "beit",
                                    "data2vec-vision")


@dataclass(frozen=True)
class ViTArchitecture:
    patch_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_channels: int
    num_labels: int

    @classmethod
    def from_config(cls, config: Mapping) -> ViTArchitecture:
        """From an HF `config.json` dict (or the `architecture` block of a sidecar)."""
        labels = config.get("num_labels") or len(config.get("id2label") or {}) or 2
        return cls(int(config["patch_size"]), int(config["hidden_size"]), int(config["intermediate_size"]),
                   int(config["num_hidden_layers"]), int(config["num_attention_heads"]),
                   int(config.get("num_channels", 3)), int(labels))

    def to_dict(self) -> dict:
        return {"patch_size": self.patch_size, "hidden_size": self.hidden_size,
                "intermediate_size": self.intermediate_size, "num_hidden_layers": self.num_hidden_layers,
                "num_attention_heads": self.num_attention_heads, "num_channels": self.num_channels,
                "num_labels": self.num_labels}

    def patches(self, height: int, width: int) -> int:
        return (height // self.patch_size) * (width // self.patch_size)

    def tokens(self, height: int, width: int) -> int:
        """Patch tokens plus the [CLS] token."""
        return self.patches(height, width) + 1

    def flops(self, height: int, width: int) -> float:
        """Forward FLOPs of one image (a multiply-add is 2 FLOPs), matrix products only."""
        p, h, m, t = self.patch_size, self.hidden_size, self.intermediate_size, self.tokens(height, width)
        embed = 2 * self.patches(height, width) * (self.num_channels * p * p) * h
        attention = 2 * t * h * 3 * h + 2 * 2 * t * t * h + 2 * t * h * h  # qkv, scores + weighted sum, output
        mlp = 2 * 2 * t * h * m
        return float(embed + self.num_hidden_layers * (attention + mlp) + 2 * h * self.num_labels)

    def activation_bytes(self, height: int, width: int) -> int:
        """fp32 bytes one image keeps alive in the widest point of one block (eager attention).

        The attention probabilities (heads x tokens x tokens, plus the scores they came from) and
        the MLP's hidden activations dominate; q, k, v and the residual stream are added on top.
        """
        t, h = self.tokens(height, width), self.hidden_size
        attention = 2 * self.num_attention_heads * t * t
        return 4 * (attention + t * self.intermediate_size + 5 * t * h)

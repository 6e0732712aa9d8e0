"""The sizes derived from a model's config: tokens, FLOPs and activation bytes of one image.

`vitgender bench` and `--batch-size auto` read these numbers from the model's own config (and
the token layout its model type declares) rather than from one model's constants.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from vitgender.models.registry import model_config


@dataclass(frozen=True)
class ViTArchitecture:
    patch_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_channels: int
    num_labels: int
    model_type: str = "vit"
    prefix_tokens: int = 1  # [CLS] plus any distillation or register tokens

    @classmethod
    def from_config(cls, config: Mapping) -> ViTArchitecture:
        """From an HF `config.json` dict (or the `architecture` block of a sidecar; older sidecars name no
        model type: they were all plain ViTs)."""
        labels = config.get("num_labels") or len(config.get("id2label") or {}) or 2
        model_type = config.get("model_type", "vit")
        family = model_config(model_type)
        prefix = config.get("prefix_tokens") or family.prefix_tokens(config)
        return cls(
            int(config["patch_size"]),
            int(config["hidden_size"]),
            family.intermediate_size(config),
            int(config["num_hidden_layers"]),
            int(config["num_attention_heads"]),
            int(config.get("num_channels", 3)),
            int(labels),
            model_type,
            int(prefix),
        )

    def to_dict(self) -> dict:
        return {
            "patch_size": self.patch_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_channels": self.num_channels,
            "num_labels": self.num_labels,
            "model_type": self.model_type,
            "prefix_tokens": self.prefix_tokens,
        }

    def patches(self, height: int, width: int) -> int:
        return (height // self.patch_size) * (width // self.patch_size)

    def tokens(self, height: int, width: int) -> int:
        """Patch tokens plus the [CLS], distillation and register tokens."""
        return self.patches(height, width) + self.prefix_tokens

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

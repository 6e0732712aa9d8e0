"""The registered model types: how each differs from the plain ViT of `base.ModelType`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from vitgender.models.base import ModelType


class ViTMSN(ModelType):
    """ViT-MSN: a ViT backbone trained with masked siamese networks; same layout and head."""

    model_type = "vit_msn"
    hf_classes = ("ViTMSNForImageClassification",)


class DeiT(ModelType):
    """DeiT: [CLS] and a distillation token in front of the patches, one learned position table.

    The distilled class (`...WithTeacher`) has two heads, on the [CLS] and on the distillation
    token, and answers their average; the plain class reads the [CLS] token only.
    """

    model_type = "deit"
    hf_classes = ("DeiTForImageClassification", "DeiTForImageClassificationWithTeacher")
    base_prefix = "deit"

    def extra_tokens(self, config: Mapping) -> int:
        return 1

    def readout(self, config: Mapping, hf_class: str, num_tokens: int, num_patches: int) -> np.ndarray:
        weights = np.zeros(num_tokens)
        if hf_class.endswith("WithTeacher"):
            weights[:2] = 0.5
        else:
            weights[0] = 1.0
        return weights

    def prefix_rows(self, embeddings):
        import torch

        return torch.cat([embeddings.cls_token, embeddings.distillation_token], dim=1)

    def heads(self, hf_class: str) -> tuple[str, ...]:
        return ("cls_classifier", "distillation_classifier") if hf_class.endswith("WithTeacher") else ("classifier",)


class Dinov2(ModelType):
    """DINOv2: positions interpolated to the input size at run time; the head reads [CLS] and the
    mean of the patch tokens. The free-batch rewrite bakes the positions at the export's size."""

    model_type = "dinov2"
    hf_classes = ("Dinov2ForImageClassification",)
    base_prefix = "dinov2"
    mlp = "mlp"
    norm_before, norm_after, mlp_input = "norm1", "norm2", "mlp.fc1"  # a SwiGLU MLP has no fc1: not migrated

    def intermediate_size(self, config: Mapping) -> int:
        return int(config.get("intermediate_size") or config["hidden_size"] * config.get("mlp_ratio", 4))

    def readout(self, config: Mapping, hf_class: str, num_tokens: int, num_patches: int) -> np.ndarray:
        weights = np.zeros(num_tokens)
        weights[0] = 0.5
        weights[num_tokens - num_patches :] = 0.5 / num_patches
        return weights

    def positions(self, embeddings, height: int, width: int):
        import torch

        patches = (height // embeddings.patch_size) * (width // embeddings.patch_size)
        probe = torch.zeros(1, 1 + patches, embeddings.cls_token.shape[-1])
        return embeddings.interpolate_pos_encoding(probe, height, width)


class Dinov2WithRegisters(Dinov2):
    """DINOv2 with registers: learned register tokens inserted after [CLS], after the positions are added
    (so they get none), and skipped by the head's patch mean."""

    model_type = "dinov2_with_registers"
    hf_classes = ("Dinov2WithRegistersForImageClassification",)
    base_prefix = "dinov2_with_registers"

    def extra_tokens(self, config: Mapping) -> int:
        return int(config.get("num_register_tokens", 4))

    def prefix_rows(self, embeddings):
        import torch

        return torch.cat([embeddings.cls_token, embeddings.register_tokens], dim=1)

    def positions(self, embeddings, height: int, width: int):
        import torch

        table = super().positions(embeddings, height, width)
        none = torch.zeros(1, embeddings.register_tokens.shape[1], table.shape[-1])
        return torch.cat([table[:, :1], none, table[:, 1:]], dim=1)


class Beit(ModelType):
    """BEiT: relative or absolute positions (often none in the embeddings), mean pooling of the patch
    tokens through the pooler's layer norm by default; its embeddings also return the patch grid."""

    model_type = "beit"
    hf_classes = ("BeitForImageClassification",)
    base_prefix = "beit"
    load_options: ClassVar[dict] = {
        "attn_implementation": "eager"
    }  # SDPA reads a Shape (batch-1 TF) and returns no attentions
    export_attention: ClassVar[str] = "eager"  # its own attention class: the AttentionInterface is not consulted

    def readout(self, config: Mapping, hf_class: str, num_tokens: int, num_patches: int) -> np.ndarray:
        if not config.get("use_mean_pooling", True):
            return super().readout(config, hf_class, num_tokens, num_patches)
        weights = np.zeros(num_tokens)
        weights[num_tokens - num_patches :] = 1.0 / num_patches
        return weights

    def final_norm(self, config: Mapping) -> str:
        return f"{self.base_prefix}.pooler" if config.get("use_mean_pooling", True) else super().final_norm(config)

    def positions(self, embeddings, height: int, width: int):
        if embeddings.position_embeddings is None:
            return None
        import torch

        patches = (height // embeddings.patch_embeddings.patch_size[0]) * (
            width // embeddings.patch_embeddings.patch_size[1]
        )
        return embeddings.interpolate_pos_encoding(
            torch.zeros(1, 1 + patches, embeddings.cls_token.shape[-1]), height, width
        )

    def patch_tokens(self, embeddings, pixel_values):
        return embeddings.patch_embeddings(pixel_values)[0]

    def embeddings_output(self, embeddings, tokens, pixel_values):
        size = embeddings.patch_embeddings.patch_size
        return tokens, (pixel_values.shape[2] // size[0], pixel_values.shape[3] // size[1])


class Data2VecVision(Beit):
    """data2vec-vision: BEiT's architecture under another name and prefix."""

    model_type = "data2vec-vision"
    hf_classes = ("Data2VecVisionForImageClassification",)
    base_prefix = "data2vec_vision"


ALL: tuple[type[ModelType], ...] = (ModelType, ViTMSN, DeiT, Dinov2, Dinov2WithRegisters, Beit, Data2VecVision)

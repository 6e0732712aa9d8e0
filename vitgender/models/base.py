"""What one model type (HF `model_type`) contributes: its classes, stage paths, token layout, free-batch rewrite.

Everything else in vitgender is architecture-agnostic: the pixel_values -> logits contract is the
same for every member of the family. A subclass states only how its checkpoint differs from the
plain ViT below it, in optimum's manner of one config class per architecture.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import ClassVar

import numpy as np

from vitgender.models.attention import BMM


class ModelType:
    """A plain ViT (`vit`): one [CLS] token, a learned position table, a `classifier` on the [CLS] output."""

    model_type: str = "vit"
    # HF classes a checkpoint of this type may name in `architectures`; the first is the default.
    hf_classes: tuple[str, ...] = ("ViTForImageClassification",)
    base_prefix: str = "vit"  # the attribute holding the backbone (HF's `base_model_prefix`)
    mlp: str = "intermediate"  # the block's MLP module (its first linear + activation)
    # Inside one encoder block: the two LayerNorms and the linears that read them, for int8 scale
    # migration (`vitgender.exporters.smoothing`). The value projection feeds the attention output.
    norm_before: str = "layernorm_before"
    norm_after: str = "layernorm_after"
    attention_inputs: tuple[str, ...] = (
        "attention.attention.query",
        "attention.attention.key",
        "attention.attention.value",
    )
    attention_output: str = "attention.output.dense"
    mlp_input: str = "intermediate.dense"
    # Extra `from_pretrained` arguments. Types that pick their attention class when built (BEiT) load the
    # eager one: switching `config._attn_implementation` later (export, explain) would not reach them.
    load_options: ClassVar[dict] = {}
    # The attention ExecuTorch programs are exported with: bmm on [batch * heads] (`models.attention`)
    # where the type's attention goes through transformers' AttentionInterface; "eager" otherwise.
    export_attention: ClassVar[str] = BMM

    # --- loading -------------------------------------------------------------------------------
    def hf_class(self, config: Mapping) -> str:
        """The class named in the checkpoint's `architectures`, when it is one of ours; else the default."""
        named = [name for name in config.get("architectures") or [] if name in self.hf_classes]
        return named[0] if named else self.hf_classes[0]

    def model_class(self, config: Mapping):
        import transformers

        return getattr(transformers, self.hf_class(config))

    def intermediate_size(self, config: Mapping) -> int:
        """The MLP's hidden width (DINOv2 configs give a ratio instead)."""
        return int(config["intermediate_size"])

    # --- token layout --------------------------------------------------------------------------
    def extra_tokens(self, config: Mapping) -> int:
        """Tokens between [CLS] and the patch tokens (distillation, registers)."""
        return 0

    def prefix_tokens(self, config: Mapping) -> int:
        return 1 + self.extra_tokens(config)

    def readout(self, config: Mapping, hf_class: str, num_tokens: int, num_patches: int) -> np.ndarray:
        """Weights over the last layer's tokens that the classification head reads (explain's map row)."""
        weights = np.zeros(num_tokens)
        weights[0] = 1.0  # the [CLS] token
        return weights

    def heads(self, hf_class: str) -> tuple[str, ...]:
        """The classification head modules (kept float in int8 artifacts: they read the final LayerNorm's outliers)."""
        return ("classifier",)

    def blocks(self, model) -> list:
        """The encoder blocks of a loaded HF model, in order."""
        return list(getattr(model, self.base_prefix).encoder.layer)

    # --- stages (localisation, explain) --------------------------------------------------------
    def final_norm(self, config: Mapping) -> str:
        return f"{self.base_prefix}.layernorm"

    def stages(self, num_layers: int, config: Mapping | None = None) -> list[tuple[str, str]]:
        """(stage name, module path inside the HF model) in forward order; the logits come after these."""
        layer = f"{self.base_prefix}.encoder.layer"
        out = [("embeddings", f"{self.base_prefix}.embeddings")]
        for k in range(num_layers):
            out += [
                (f"block {k} attention", f"{layer}.{k}.attention"),
                (f"block {k} mlp", f"{layer}.{k}.{self.mlp}"),
                (f"block {k}", f"{layer}.{k}"),
            ]
        return [*out, ("final layernorm", self.final_norm(config or {}))]

    # --- free-batch embeddings (see exporters/onnx_export.py) ----------------------------------
    def prefix_rows(self, embeddings):
        """(1, P, hidden): the learned tokens placed in front of the patch tokens, in order."""
        return embeddings.cls_token

    def positions(self, embeddings, height: int, width: int):
        """(1, tokens, hidden) added after the prefix tokens are in place, laid out in final token order;
        None when the type adds none. Interpolated tables are evaluated here, at the export's size."""
        return embeddings.position_embeddings

    def patch_tokens(self, embeddings, pixel_values):
        return embeddings.patch_embeddings(pixel_values)

    def embeddings_output(self, embeddings, tokens, pixel_values):
        return tokens

    @contextlib.contextmanager
    def batch_free_embeddings(self, model, height: int, width: int) -> Iterator[bool]:
        """Replace `prefix.expand(batch) + concat` by `pad patches + constant prefix rows + positions`.

        Every token sees the same additions in the same order as in HF's forward (x + 0 is
        exact), so logits agree with HF's within float rounding while the graph has no Shape op
        and onnx2tf keeps the batch free. Yields False where the model's embeddings are not the
        layout this type declares (then it is exported as it is).
        """
        import torch

        embeddings = getattr(getattr(model, model.base_model_prefix, model), "embeddings", None)
        if embeddings is None or not hasattr(embeddings, "patch_embeddings"):
            yield False
            return
        with torch.no_grad():
            prefix = self.prefix_rows(embeddings).detach()
            count = prefix.shape[1]
            patches = (height // _pair(model.config.patch_size)[0]) * (width // _pair(model.config.patch_size)[1])
            table = self.positions(embeddings, height, width)
            table = None if table is None else table.detach().clone()
            if table is not None and tuple(table.shape[:2]) != (1, count + patches):
                yield False
                return
            prefix_row = torch.nn.functional.pad(prefix, (0, 0, 0, patches)).clone()

        def forward(pixel_values, *args, **kwargs):
            tokens = torch.nn.functional.pad(self.patch_tokens(embeddings, pixel_values), (0, 0, count, 0)) + prefix_row
            if table is not None:
                tokens = tokens + table
            return self.embeddings_output(embeddings, embeddings.dropout(tokens), pixel_values)

        embeddings.forward = forward
        try:
            yield True
        finally:
            del embeddings.forward  # back to the class's method


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)

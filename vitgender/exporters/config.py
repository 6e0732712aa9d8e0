"""Export configuration per architecture, in the spirit of optimum's `OnnxConfig`.

One config describes a model family's inputs, outputs, dynamic axes and the ops that are
numerically sensitive under int8 (kept in float by the static quantizer's safe preset).
ViT, DeiT and DINOv2-style classifiers share the ViT config: same pixel_values -> logits
contract, same transformer block.
"""

from __future__ import annotations

from dataclasses import dataclass

from vitgender.errors import UsageError


@dataclass(frozen=True)
class ExportConfig:
    model_types: tuple[str, ...]
    input_name: str = "pixel_values"
    output_name: str = "logits"
    default_opset: int = 18
    # Op types whose int8 quantization costs the most accuracy in ViTs (FQ-ViT, PTQ4ViT):
    # LayerNorm statistics, the softmax's long tail, GELU, and the residual additions.
    sensitive_ops: tuple[str, ...] = ("LayerNormalization", "Softmax", "Gelu", "Erf", "Add", "Div", "Pow", "Sqrt",
                                      "ReduceMean", "Sub")

    def input_spec(self, channels: int, height: int, width: int) -> dict:
        return {"name": self.input_name, "layout": "NCHW", "dtype": "float32",
                "shape": ["batch", channels, height, width]}


VIT = ExportConfig(model_types=("vit", "deit", "dinov2", "dinov2_with_registers", "vit_msn", "beit", "data2vec-vision"))
_REGISTRY = {model_type: VIT for model_type in VIT.model_types}


def config_for(model_type: str) -> ExportConfig:
    if model_type not in _REGISTRY:
        raise UsageError(model_type, f"no export config for this architecture ({', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[model_type]

"""Export configuration per architecture, in the spirit of optimum's `OnnxConfig`.

One config describes a model family's graph interface: the input and output names every
artifact keeps, and the input spec written to manifests and sidecars. Every ViT-family
classifier (see `vitgender.architecture.VIT_MODEL_TYPES`) shares one: the same
pixel_values -> logits contract and the same transformer block.
"""

from __future__ import annotations

from dataclasses import dataclass

from vitgender.architecture import VIT_MODEL_TYPES
from vitgender.errors import UsageError


@dataclass(frozen=True)
class ExportConfig:
    model_types: tuple[str, ...]
    input_name: str = "pixel_values"
    output_name: str = "logits"


VIT = ExportConfig(model_types=VIT_MODEL_TYPES)
_REGISTRY = {model_type: VIT for model_type in VIT.model_types}


def config_for(model_type: str) -> ExportConfig:
    if model_type not in _REGISTRY:
        raise UsageError(model_type, f"no export config for this architecture ({', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[model_type]

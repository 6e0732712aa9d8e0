"""Export configuration, in the spirit of optimum's `OnnxConfig`.

One config describes the graph interface every artifact keeps: the input and output names,
written to manifests and sidecars. Every model type in the family (`vitgender.models`) shares
one, since all map pixel_values to logits; what differs per type (its HF class, the free-batch
embedding rewrite) is the type's own config, which `config_for` carries alongside.
"""

from __future__ import annotations

from dataclasses import dataclass

from vitgender.models import ModelType, model_config


@dataclass(frozen=True)
class ExportConfig:
    model: ModelType
    input_name: str = "pixel_values"
    output_name: str = "logits"


def config_for(model_type: str) -> ExportConfig:
    return ExportConfig(model_config(model_type))

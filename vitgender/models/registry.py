"""The registry of model types, keyed by HF `model_type`."""

from __future__ import annotations

from vitgender.errors import CheckpointError
from vitgender.models.base import ModelType
from vitgender.models.types import ALL

_REGISTRY: dict[str, ModelType] = {}


def register_model_type(config: ModelType) -> None:
    _REGISTRY[config.model_type] = config


def supported_model_types() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def model_config(model_type: str | None, source: str = "config.json") -> ModelType:
    """The config of `model_type`; refuses (exit 2, naming the supported ones) a type outside the family."""
    if not isinstance(model_type, str) or model_type not in _REGISTRY:
        raise CheckpointError(
            source, f"model_type {model_type!r} is not supported (supported: " f"{', '.join(_REGISTRY)})"
        )
    return _REGISTRY[model_type]


for _cls in ALL:
    register_model_type(_cls())

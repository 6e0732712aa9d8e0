"""The model family: one registered config per HF `model_type` (optimum's pattern).

Checkpoint loading, export, localisation and explanations ask `model_config(model_type)` for
what is specific to an architecture (its HF class, stage paths, token layout, free-batch
rewrite); nothing else names a model type. Adding a type is one `ModelType` subclass in
`types.py` (or anywhere) and one `register_model_type` call: see docs/models.md.
"""

from __future__ import annotations

from vitgender.models.base import ModelType
from vitgender.models.registry import model_config, register_model_type, supported_model_types
from vitgender.models.sizes import ViTArchitecture

__all__ = ["ModelType", "ViTArchitecture", "model_config", "register_model_type", "supported_model_types"]

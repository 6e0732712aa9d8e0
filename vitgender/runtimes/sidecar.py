"""The sidecar JSON written next to every exported artifact: labels, preprocessing, precision.

Mobile and web developers read the same file (documented in the README), so nobody has to
guess label order or normalisation; runners read it so an artifact is self-describing.
"""

from __future__ import annotations

import json
from pathlib import Path

from vitgender.errors import UsageError
from vitgender.preprocess import PreprocessConfig

SUFFIX = ".json"


def sidecar_path(artifact: Path) -> Path:
    return artifact.with_name(artifact.name + SUFFIX)


def write_sidecar(artifact: Path, labels: tuple[str, ...], preprocess: PreprocessConfig, precision: str,
                  input_spec: dict) -> Path:
    path = sidecar_path(artifact)
    path.write_text(json.dumps({
        "labels": list(labels),
        "preprocessor": preprocess.to_dict(),
        "precision": precision,
        "input": input_spec,
        "output": {"name": "logits", "dtype": "float32", "shape": ["batch", len(labels)],
                   "meaning": "unnormalised scores in label order; apply softmax for probabilities"},
    }, indent=2) + "\n")
    return path


def read_sidecar(artifact: Path) -> tuple[tuple[str, ...], PreprocessConfig, str]:
    path = sidecar_path(artifact)
    if not path.is_file():
        raise UsageError(str(artifact), f"no {path.name} beside it (labels and preprocessing are unknown); "
                                        "export with 'vitgender export'")
    data = json.loads(path.read_text())
    return tuple(data["labels"]), PreprocessConfig.from_dict(data["preprocessor"]), data.get("precision", "fp32")

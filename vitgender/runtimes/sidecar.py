"""The sidecar JSON written next to every exported artifact: labels, preprocessing, precision.

Mobile and web developers read the same file (documented in the README), so nobody has to
guess label order or normalisation; runners read it so an artifact is self-describing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from vitgender.errors import UsageError
from vitgender.models import ViTArchitecture
from vitgender.precision import Precision
from vitgender.preprocess import PreprocessConfig

SUFFIX = ".json"


@dataclass(frozen=True)
class Sidecar:
    labels: tuple[str, ...]
    preprocess: PreprocessConfig
    precision: Precision
    architecture: ViTArchitecture | None


def sidecar_path(artifact: Path) -> Path:
    return artifact.with_name(artifact.name + SUFFIX)


def write_sidecar(artifact: Path, sidecar: Sidecar, input_spec: dict) -> Path:
    path = sidecar_path(artifact)
    data = {
        "labels": list(sidecar.labels),
        "preprocessor": sidecar.preprocess.to_sidecar(),
        "precision": sidecar.precision.value,
        "input": input_spec,
        "output": {
            "name": "logits",
            "dtype": "float32",
            "shape": ["batch", len(sidecar.labels)],
            "meaning": "unnormalised scores in label order; apply softmax for probabilities",
        },
    }
    if sidecar.architecture is not None:
        data["architecture"] = sidecar.architecture.to_dict()
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def read_sidecar(artifact: Path) -> Sidecar:
    path = sidecar_path(artifact)
    if not path.is_file():
        raise UsageError(
            str(artifact),
            f"no {path.name} beside it (labels and preprocessing are unknown); " "export with 'vitgender export'",
        )
    try:
        data = json.loads(path.read_bytes())
        labels = data["labels"]
        if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
            raise ValueError("labels must be a non-empty list of strings")
        architecture = ViTArchitecture.from_config(data["architecture"]) if "architecture" in data else None
        return Sidecar(
            tuple(labels),
            PreprocessConfig.from_dict(data["preprocessor"]),
            Precision.parse(data.get("precision", "fp32")),
            architecture,
        )
    except UsageError as exc:
        raise UsageError(str(path), exc.why) from None
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError, UnicodeDecodeError) as exc:
        raise UsageError(str(path), f"invalid sidecar ({type(exc).__name__}: {str(exc)[:200]})") from None

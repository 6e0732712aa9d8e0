"""`manifest.json`: what an export directory holds, schema 1 (documented in the README).

`{"schema": 1, "model": {...}, "created_by": {...}, "artifacts": [{"name", "format",
"precision", "path", "sha256", "bytes", "input": {...}, "opset"?, "calibration"?,
"seconds", ...}]}`. Paths are relative to the manifest; a directory artifact (SavedModel)
is hashed as the sha256 of its sorted `sha256sum`-style listing.
"""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path

from vitgender.checkpoint import sha256_file
from vitgender.errors import UsageError

SCHEMA = 1
MANIFEST = "manifest.json"
TOOLS = ("vitgender", "torch", "transformers", "onnx", "onnxruntime", "onnxscript", "onnx2tf", "tensorflow",
         "ai-edge-litert")


def tool_versions() -> dict[str, str]:
    versions = {}
    for name in TOOLS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def artifact_sha256(path: Path) -> str:
    if path.is_file():
        return sha256_file(path)
    listing = "".join(
        f"{sha256_file(p)}  {p.relative_to(path).as_posix()}\n" for p in sorted(path.rglob("*")) if p.is_file()
    )
    return hashlib.sha256(listing.encode()).hexdigest()


def artifact_bytes(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def describe(root: Path, name: str, fmt: str, precision: str, path: Path, input_spec: dict, **extra) -> dict:
    return {"name": name, "format": fmt, "precision": precision, "path": path.relative_to(root).as_posix(),
            "sha256": artifact_sha256(path), "bytes": artifact_bytes(path), "input": input_spec, **extra}


def write_manifest(root: Path, model: dict, artifacts: list[dict], extra: dict | None = None) -> Path:
    data = {"schema": SCHEMA, "model": model, "created_by": tool_versions(), "artifacts": artifacts, **(extra or {})}
    target = root / MANIFEST
    target.write_text(json.dumps(data, indent=2) + "\n")
    return target


def read_manifest(directory: Path) -> dict:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise UsageError(str(directory), f"no {MANIFEST}: not a 'vitgender export' directory")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UsageError(str(path), f"invalid JSON ({exc.msg})") from None
    if data.get("schema") != SCHEMA or not isinstance(data.get("artifacts"), list):
        raise UsageError(str(path), f"unsupported manifest (schema {data.get('schema')!r}, expected {SCHEMA})")
    return data


def verify_artifact(directory: Path, entry: dict) -> Path:
    """Check one artifact against its manifest entry; raise naming the file on any mismatch."""
    path = Path(directory) / entry["path"]
    if not path.exists():
        raise UsageError(str(path), f"artifact {entry['name']!r} listed in {MANIFEST} is missing")
    actual = artifact_sha256(path)
    if actual != entry["sha256"]:
        raise UsageError(str(path), f"sha256 mismatch for {entry['name']!r} (manifest {entry['sha256'][:12]}..., "
                                    f"file {actual[:12]}...): tampered or corrupted")
    return path

"""`manifest.json`: what an export directory holds, schema 2 (documented in the README).

`{"schema": 2, "model": {...}, "created_by": {...}, "artifacts": [{"name", "runtime",
"precision", "path", "sha256", "bytes", "input": {...}, "opset"?, "calibration"?,
"seconds", ...}]}`. `name` is the artifact name `--formats` takes, `runtime` the runtime that
runs it. Paths are relative to the manifest; a directory artifact (SavedModel) is hashed as
the sha256 of its sorted `sha256sum`-style listing.

Schema 1 called the runtime `"format"`, which `--formats` uses for artifact names; it is still
read (upgraded in memory), so exports made before the rename validate, bench and serve as before.

Shared by exporters (writing), validators and bench (reading), so it imports neither.
"""

from __future__ import annotations

import hashlib
import json
import re
from importlib import metadata
from pathlib import Path, PurePosixPath

from vitgender.checkpoint import sha256_file
from vitgender.errors import UsageError
from vitgender.precision import Precision

SCHEMA = 2
READABLE_SCHEMAS = (1, 2)
MANIFEST = "manifest.json"
TOOLS = (
    "vitgender",
    "torch",
    "transformers",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "onnx2tf",
    "tensorflow",
    "ai-edge-litert",
)


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


def describe(root: Path, name: str, runtime: str, precision: str, path: Path, input_spec: dict, **extra) -> dict:
    return {
        "name": name,
        "runtime": runtime,
        "precision": precision,
        "path": path.relative_to(root).as_posix(),
        "sha256": artifact_sha256(path),
        "bytes": artifact_bytes(path),
        "input": input_spec,
        **extra,
    }


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
        data = json.loads(path.read_bytes())
    except json.JSONDecodeError as exc:
        raise UsageError(str(path), f"invalid JSON ({exc.msg})") from None
    except (UnicodeDecodeError, RecursionError):
        raise UsageError(str(path), "invalid JSON (not UTF-8, or nested too deeply)") from None
    schema = data.get("schema") if isinstance(data, dict) else None
    if schema not in READABLE_SCHEMAS or isinstance(schema, bool) or not isinstance(data.get("artifacts"), list):
        raise UsageError(
            str(path),
            f"unsupported manifest (schema {schema!r}, expected one of " f"{', '.join(map(str, READABLE_SCHEMAS))})",
        )
    if not isinstance(data.get("model"), dict):
        raise UsageError(str(path), "manifest has no 'model' object")
    for number, entry in enumerate(data["artifacts"]):
        if schema == 1 and isinstance(entry, dict) and "format" in entry:
            entry["runtime"] = entry.pop("format")
        _check_entry(path, number, entry)
    data["schema"] = SCHEMA  # upgraded in memory; the file is left as it was
    return data


def _check_entry(path: Path, number: int, entry: object) -> None:
    """A hand-edited entry must still name a file inside the export directory and a sha256 to check it by."""
    what = f"{path} artifacts[{number}]"
    if not isinstance(entry, dict):
        raise UsageError(what, "not an object")
    for key in ("name", "runtime", "precision", "path", "sha256"):
        if not isinstance(entry.get(key), str) or not entry[key]:
            raise UsageError(what, f"needs a non-empty string '{key}'")
    relative = PurePosixPath(entry["path"])
    if relative.is_absolute() or ".." in relative.parts or "\\" in entry["path"] or "\0" in entry["path"]:
        raise UsageError(what, f"path {entry['path']!r} must stay inside the export directory")
    if not re.fullmatch(r"[0-9a-f]{64}", entry["sha256"]):
        raise UsageError(what, "sha256 must be 64 lowercase hex digits")
    Precision.parse(entry["precision"])


def verify_artifact(directory: Path, entry: dict) -> Path:
    """Check one artifact against its manifest entry; raise naming the file on any mismatch."""
    path = Path(directory) / entry["path"]
    if not path.exists():
        raise UsageError(str(path), f"artifact {entry['name']!r} listed in {MANIFEST} is missing")
    actual = artifact_sha256(path)
    if actual != entry["sha256"]:
        raise UsageError(
            str(path),
            f"sha256 mismatch for {entry['name']!r} (manifest {entry['sha256'][:12]}..., "
            f"file {actual[:12]}...): tampered or corrupted",
        )
    return path

"""Find, verify and load HF-format ViT checkpoints: safetensors only, SHA-256 manifests.

A checkpoint is a local directory (`config.json`, `model.safetensors` or sharded safetensors
with `model.safetensors.index.json`, `preprocessor_config.json`) or a hub id
`owner/name[@revision]` resolved through `huggingface_hub` (which honours `HF_HUB_OFFLINE` and
`HF_HOME`). Before a single tensor is read:
- pickle weights (`.bin`, `.pt`, `.pth`, `.ckpt`) are refused unless `allow_pickle=True`
  (then loaded with `torch.load(weights_only=True)` by transformers);
- `SHA256SUMS`, when present, is checked for every file it names;
- every safetensors header is validated (size limit, dtype, shape/size agreement, contiguous
  in-range offsets, file length), so a corrupt file gives one line, not a crash deep in a reader.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from vitgender.errors import CheckpointError
from vitgender.models import ModelType, ViTArchitecture, model_config
from vitgender.preprocess import PreprocessConfig

DEFAULT_MODEL_DIR = Path(__file__).parent / "default_model"
SHA256SUMS = "SHA256SUMS"
MAX_HEADER_BYTES = 100 * 1024 * 1024
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+(@[\w./-]+)?$")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_sha256sums(directory: Path) -> Path:
    """Write a sha256sum-compatible `SHA256SUMS` covering every file below `directory`."""
    directory = Path(directory)
    lines = [
        f"{sha256_file(path)}  {path.relative_to(directory).as_posix()}"
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != SHA256SUMS and not path.name.startswith(".")
    ]
    target = directory / SHA256SUMS
    partial = directory / f".{SHA256SUMS}.partial"
    partial.write_text("\n".join(lines) + "\n")
    partial.replace(target)
    return target


def read_sha256sums(directory: Path) -> dict[str, str]:
    entries = {}
    try:
        text = (Path(directory) / SHA256SUMS).read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise CheckpointError(f"{directory}/{SHA256SUMS}", "not a text file") from None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        match = re.match(r"^([0-9a-fA-F]{64}) [ *](.+)$", line)
        if not match:
            raise CheckpointError(f"{directory}/{SHA256SUMS}", f"line {number} is not '<sha256>  <file>'")
        entries[match[2]] = match[1].lower()
    return entries


def verify_sha256sums(directory: Path) -> dict[str, str]:
    """Check every file in SHA256SUMS; raise naming the first bad file, return the entries checked."""
    directory = Path(directory)
    entries = read_sha256sums(directory)
    for name, expected in entries.items():
        path = directory / name
        if ".." in Path(name).parts:
            raise CheckpointError(f"{directory}/{SHA256SUMS}", f"refuses path outside the checkpoint: {name}")
        if not path.is_file():
            raise CheckpointError(str(path), f"listed in {SHA256SUMS} but missing")
        actual = sha256_file(path)
        if actual != expected:
            raise CheckpointError(str(path), f"sha256 mismatch (expected {expected[:12]}..., got {actual[:12]}...)")
    return entries


def validate_safetensors(path: Path) -> dict[str, dict]:
    """Validate a safetensors file's header without reading tensor data; return the header."""
    what = str(path)
    size = path.stat().st_size
    if size < 8:
        raise CheckpointError(what, f"truncated safetensors file ({size} bytes, no header)")
    with open(path, "rb") as handle:
        (header_len,) = struct.unpack("<Q", handle.read(8))
        if header_len > MAX_HEADER_BYTES:
            raise CheckpointError(
                what, f"safetensors header claims {header_len:,} bytes, over the {MAX_HEADER_BYTES:,} limit"
            )
        if 8 + header_len > size:
            raise CheckpointError(
                what, f"safetensors header ({header_len:,} bytes) runs past the end of the file ({size:,} bytes)"
            )
        raw = handle.read(header_len)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(what, "safetensors header is not valid JSON") from None
    except RecursionError:  # a header of 100,000 nested brackets is hostile, not a checkpoint
        raise CheckpointError(what, "safetensors header nests too deeply to be a tensor table") from None
    if not isinstance(header, dict):
        raise CheckpointError(what, "safetensors header is not a JSON object")
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    spans = []
    for name, info in tensors.items():
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
            raise CheckpointError(what, f"tensor {name!r}: header entry lacks dtype/shape/data_offsets")
        if info["dtype"] not in _DTYPE_BYTES:
            raise CheckpointError(what, f"tensor {name!r}: unknown dtype {info['dtype']!r}")
        shape, offsets = info["shape"], info["data_offsets"]
        if not all(isinstance(d, int) and d >= 0 for d in shape):
            raise CheckpointError(what, f"tensor {name!r}: invalid shape {shape}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise CheckpointError(what, f"tensor {name!r}: invalid data_offsets {offsets}")
        count = 1
        for dim in shape:
            count *= dim
        if offsets[1] - offsets[0] != count * _DTYPE_BYTES[info["dtype"]]:
            raise CheckpointError(
                what,
                f"tensor {name!r}: {info['dtype']}{shape} needs {count * _DTYPE_BYTES[info['dtype']]} bytes, "
                f"offsets span {offsets[1] - offsets[0]}",
            )
        spans.append((offsets[0], offsets[1], name))
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            raise CheckpointError(
                what, f"tensor {name!r}: data offsets not contiguous (starts at {begin}, expected {position})"
            )
        position = end
    if 8 + header_len + position != size:
        raise CheckpointError(what, f"file is {size:,} bytes but the header describes {8 + header_len + position:,}")
    return tensors


@dataclass(frozen=True)
class CheckpointFiles:
    directory: Path
    weights: tuple[Path, ...]
    pickle: bool


def weight_files(directory: Path, allow_pickle: bool = False) -> CheckpointFiles:
    directory = Path(directory)
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise CheckpointError(str(index), "not a valid safetensors index (needs a weight_map)") from None
        return CheckpointFiles(directory, tuple(directory / s for s in shards), False)
    single = directory / "model.safetensors"
    if single.is_file():
        return CheckpointFiles(directory, (single,), False)
    pickled = sorted(p for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickled:
        if not allow_pickle:
            raise CheckpointError(
                str(pickled[0]),
                "pickle weights can run arbitrary code when loaded; convert them once with "
                f"'vitgender convert {directory} --out {directory.name}-safetensors' (classify, explain and verify "
                "also take --allow-pickle)",
            )
        return CheckpointFiles(directory, tuple(pickled), True)
    raise CheckpointError(str(directory), "no model.safetensors (or sharded index) found")


def resolve(model: str | os.PathLike | None) -> Path:
    """A local checkpoint directory for `model` (None = the embedded default model), made absolute: it is
    recorded in manifests and handed to child processes that run in other working directories."""
    if model is None:
        return DEFAULT_MODEL_DIR
    path = Path(model).expanduser()
    if path.is_dir():
        return path.absolute()
    spec = str(model)
    if path.exists():
        raise CheckpointError(spec, "a checkpoint must be a directory (config.json + model.safetensors)")
    if not _HUB_ID.match(spec) or _looks_local(spec):
        raise CheckpointError(spec, "no such directory")
    return _download_from_hub(spec)


def _looks_local(spec: str) -> bool:
    """`./model`, `~/x`, `../a/b` or `build/model` (when `build/` exists) are folders, not hub ids."""
    first = spec.split("/", 1)[0]
    return spec.startswith(("./", "../", "/", "~")) or first in (".", "..") or Path(first).is_dir()


def _download_from_hub(spec: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    repo_id, _, revision = spec.partition("@")
    try:
        path = Path(
            snapshot_download(
                repo_id,
                revision=revision or None,
                allow_patterns=["*.json", "*.safetensors", SHA256SUMS, "README.md"],
            )
        )
    except LocalEntryNotFoundError:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        why = (
            "no such directory; as a hub id it is not in the local HF cache, and HF_HUB_OFFLINE is set"
            if offline
            else "no such directory; as a hub id the hub is unreachable and it is not in the local HF cache"
        )
        raise CheckpointError(spec, why) from None
    except HfHubHTTPError as exc:
        raise CheckpointError(spec, f"hub error: {str(exc).splitlines()[0]}") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            spec, f"no such directory, and fetching it as a hub id failed: " f"{str(exc).splitlines()[0]}"
        ) from None
    _check_hub_lfs_hashes(repo_id, revision or None, path)
    return path


def _check_hub_lfs_hashes(repo_id: str, revision: str | None, path: Path) -> None:
    """Compare downloaded weights with the LFS sha256 the hub publishes, when it is reachable."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return
    from huggingface_hub import HfApi

    try:
        info = HfApi().model_info(repo_id, revision=revision, files_metadata=True)
    except Exception:  # noqa: BLE001 - metadata is a bonus check; the download already succeeded
        return
    for sibling in info.siblings or []:
        lfs = getattr(sibling, "lfs", None)
        local = path / sibling.rfilename
        if lfs and local.is_file() and sha256_file(local) != lfs.sha256:
            raise CheckpointError(str(local), "sha256 differs from the hub's LFS metadata")


def _read_config(directory: Path) -> dict:
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise CheckpointError(str(directory), "no config.json: not an HF checkpoint directory")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        why = (
            f"{exc.msg} at line {exc.lineno}"
            if isinstance(exc, json.JSONDecodeError)
            else "nests too deeply"
            if isinstance(exc, RecursionError)
            else "not UTF-8"
        )
        raise CheckpointError(str(config_path), f"invalid JSON ({why})") from None
    if not isinstance(config, dict):
        raise CheckpointError(str(config_path), "not a JSON object")
    model_config(config.get("model_type"), str(config_path))  # refuses a type outside the family, naming ours
    if not isinstance(config.get("id2label"), dict) or not config["id2label"]:
        raise CheckpointError(str(config_path), "no id2label: an image classifier needs its label names")
    return config


def _read_preprocess(directory: Path) -> PreprocessConfig:
    path = directory / "preprocessor_config.json"
    if not path.is_file():
        raise CheckpointError(str(directory), "no preprocessor_config.json: the model's normalisation is unknown")
    try:
        return PreprocessConfig.from_file(path)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(str(path), f"invalid preprocessor config ({type(exc).__name__}: {exc})"[:300]) from None


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint that passed every integrity check, read once: config, preprocessing, hashes.

    Exporters, runners and benchmarks take this object instead of going back to the directory
    for each piece; `load_model()` is the only step that reads tensors.
    """

    directory: Path
    config: dict
    files: CheckpointFiles
    preprocess: PreprocessConfig
    sha256: dict[str, str] | None  # the verified SHA256SUMS entries, None when the checkpoint has none

    @property
    def model_type(self) -> str:
        return self.config["model_type"]

    @property
    def model(self) -> ModelType:
        """What is specific to this checkpoint's architecture (HF class, stages, token layout)."""
        return model_config(self.model_type)

    @property
    def hf_class(self) -> str:
        return self.model.hf_class(self.config)

    @property
    def labels(self) -> tuple[str, ...]:
        id2label = self.config["id2label"]
        return tuple(id2label.get(str(i), id2label.get(i)) for i in range(len(id2label)))

    @property
    def architecture(self) -> ViTArchitecture:
        return ViTArchitecture.from_config(self.config)

    def load_model(self):
        """The model type's HF class (the one `architectures` names) in fp32 eval mode, whatever dtype the
        file stores. Not `AutoModelForImageClassification`: it maps a distilled DeiT to the plain class."""
        import torch

        try:
            model, info = self.model.model_class(self.config).from_pretrained(
                str(self.directory),
                use_safetensors=not self.files.pickle,
                dtype=torch.float32,
                output_loading_info=True,
                **self.model.load_options,
            )
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise CheckpointError(str(self.directory), f"cannot load model ({str(exc).splitlines()[0]})") from None
        # A checkpoint whose tensors do not match its config would silently run with random weights.
        missing = [k for k in info["missing_keys"] if "pooler" not in k]
        wrong = missing or info["unexpected_keys"] or info["mismatched_keys"]
        if wrong:
            raise CheckpointError(
                str(self.directory), f"weights do not match config.json ({len(wrong)} tensors, e.g. {wrong[0]})"
            )
        return model.eval()


def open_checkpoint(model: str | os.PathLike | None, allow_pickle: bool = False) -> Checkpoint:
    """Resolve (None = the embedded default, a folder, or a hub id) and run every integrity check."""
    directory = resolve(model)
    sums = verify_sha256sums(directory) if (directory / SHA256SUMS).is_file() else None
    config = _read_config(directory)
    files = weight_files(directory, allow_pickle)
    if not files.pickle:
        for path in files.weights:
            if not path.is_file():
                raise CheckpointError(str(path), "shard named in the index is missing")
            validate_safetensors(path)
    return Checkpoint(directory, config, files, _read_preprocess(directory), sums)


def load_model(model: str | os.PathLike | None, allow_pickle: bool = False):
    """Verify, then load the model in fp32 eval mode (shorthand for `open_checkpoint(...).load_model()`)."""
    return open_checkpoint(model, allow_pickle).load_model()

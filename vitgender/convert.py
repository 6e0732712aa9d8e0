"""`vitgender convert`: pickle weights (`pytorch_model.bin`, `.pt`, sharded `.bin`) -> `model.safetensors`.

Every other command refuses pickle weights, because unpickling can run code. Converting once
is the way out, and it loads the pickle only because the user asked for exactly that, with
`torch.load(weights_only=True)` (tensors and plain containers only). The result is checked
before it is published: every tensor read back from the safetensors file equals the one loaded
from the pickle, and the converted checkpoint loads through the same integrity checks as any
other (`open_checkpoint`, config vs weights). A new folder is written through `atomic_dir`
(a scratch folder renamed into place), so a failure leaves nothing half-written; `in_place` adds
`model.safetensors` and a fresh `SHA256SUMS` to the source folder and keeps the pickle files
(this command never deletes what it did not create).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from vitgender.checkpoint import PICKLE_SUFFIXES, SHA256SUMS, open_checkpoint, verify_sha256sums, write_sha256sums
from vitgender.errors import CheckpointError, UsageError
from vitgender.output_folders import atomic_dir

SAFETENSORS = "model.safetensors"
PICKLE_INDEX = "pytorch_model.bin.index.json"


def pickle_files(directory: Path) -> list[Path]:
    """The pickle weight files of a checkpoint folder: the shards its index names, else the single file."""
    index = directory / PICKLE_INDEX
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise CheckpointError(str(index), "not a valid weight index (needs a weight_map)") from None
        return [directory / name for name in names]
    found = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in PICKLE_SUFFIXES)
    if len(found) > 1:
        raise CheckpointError(
            str(directory),
            f"{len(found)} pickle files and no {PICKLE_INDEX}: which are the "
            f"weights? ({', '.join(p.name for p in found[:4])})",
        )
    if not found:
        raise CheckpointError(str(directory), "no pickle weights (.bin, .pt, .pth, .ckpt, .pkl) to convert")
    return found


def _state_dict(files: list[Path]) -> dict:
    import torch

    tensors = {}
    for path in files:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a refused or corrupt pickle is the user's input, one line
            raise CheckpointError(
                str(path),
                f"cannot load as weights ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:200] if str(exc) else ''})",
            ) from None
        if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
            loaded = loaded["state_dict"]  # Lightning-style checkpoints wrap the weights
        if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
            raise CheckpointError(str(path), "holds no plain {name: tensor} state dict")
        tensors.update(loaded)
    # safetensors stores each tensor once: tensors sharing memory (tied weights) are copied apart.
    seen, out = set(), {}
    for name, tensor in tensors.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        out[name] = tensor.contiguous().clone() if key in seen or not tensor.is_contiguous() else tensor
        seen.add(key)
    return out


def _write_checked(state: dict, target: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    save_file(state, str(target), metadata={"format": "pt"})
    back = load_file(str(target))
    if back.keys() != state.keys() or not all(torch.equal(back[k], state[k]) for k in state):
        raise CheckpointError(str(target), "the written tensors differ from the pickle's (nothing published)")


def _build(directory: Path, files: list[Path], state: dict, scratch: Path) -> None:
    """The converted checkpoint in `scratch`: every non-pickle file copied, model.safetensors, SHA256SUMS,
    then loaded through the usual checks (config and weights must agree)."""
    skip = {p.name for p in files} | {PICKLE_INDEX, SHA256SUMS}
    for item in sorted(directory.iterdir()):
        if item.name not in skip and not item.name.startswith(".") and item.suffix not in PICKLE_SUFFIXES:
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, scratch / item.name)
    _write_checked(state, scratch / SAFETENSORS)
    write_sha256sums(scratch)
    open_checkpoint(scratch).load_model()


def convert(
    source: Path, out: Path | None = None, *, in_place: bool = False, warn: Callable[[str], None] = lambda line: None
) -> Path:
    """Convert the checkpoint folder `source` (or the folder of a weight file) and return the folder
    written: `out`, or `source` itself with `in_place` (its SHA256SUMS is rewritten to cover both)."""
    source = Path(source)
    directory = source.parent if source.is_file() else source
    if not directory.is_dir():
        raise UsageError(str(source), "no such checkpoint folder")
    if in_place == (out is not None):
        raise UsageError("--out", "give --out NEW_FOLDER, or --in-place to add model.safetensors beside the pickle")
    if (directory / SAFETENSORS).exists() or (directory / "model.safetensors.index.json").exists():
        raise UsageError(str(directory), "already has safetensors weights: nothing to convert")
    target = directory if in_place else Path(out)
    if not in_place and target.exists():
        raise UsageError(str(target), "already exists (convert writes a new folder)")
    parent = target.absolute().parent
    if not parent.is_dir():
        raise UsageError(str(target), "parent folder does not exist")
    if (directory / SHA256SUMS).is_file():
        verify_sha256sums(directory)  # convert what its publisher vouched for, not a tampered copy
    files = pickle_files(directory)
    warn(
        f"loading the pickle weights {', '.join(p.name for p in files)} because you asked to convert them "
        "(torch.load weights_only=True: tensors only)"
    )
    state = _state_dict(files)
    if not in_place:  # a new folder, through the one policy every command that writes a folder follows
        with atomic_dir(target, "convert") as scratch:
            _build(directory, files, state, scratch)
        return target
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(scratch, 0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary folder
        _build(directory, files, state, scratch)
        (scratch / SAFETENSORS).replace(directory / SAFETENSORS)
        write_sha256sums(directory)
    except OSError as exc:
        raise UsageError(str(target), f"cannot write ({exc.strerror or exc})") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target

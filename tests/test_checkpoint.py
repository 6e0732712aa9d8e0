"""Integrity: manifests, safetensors header validation, pickle refusal, hub resolution offline."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest
import torch

from vitgender import checkpoint
from vitgender.errors import CheckpointError


@pytest.fixture
def model_copy(tiny_model, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_model, tmp_path / "copy"))


def test_manifest_is_sha256sum_compatible(model_copy):
    import subprocess

    result = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=model_copy, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert set(checkpoint.verify_sha256sums(model_copy)) == {
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    }


def test_flipped_byte_is_refused_naming_the_file(model_copy):
    weights = model_copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors: sha256 mismatch"):
        checkpoint.load_model(model_copy)


def _rewrite_header(path: Path, mutate) -> None:
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    mutate(header)
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + raw[8 + length :])


def _first_tensor(header: dict) -> dict:
    return header[next(k for k in header if k != "__metadata__")]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda h: _first_tensor(h).update(dtype="F33"), "unknown dtype"),
        (lambda h: _first_tensor(h).update(shape=[10**6]), "needs"),
        (
            lambda h: _first_tensor(h).update(data_offsets=[1, _first_tensor(h)["data_offsets"][1] + 1]),
            "not contiguous|needs",
        ),
        (lambda h: _first_tensor(h).pop("shape"), "lacks"),
    ],
)
def test_corrupt_headers_are_refused_before_reading(model_copy, mutate, message):
    weights = model_copy / "model.safetensors"
    _rewrite_header(weights, mutate)
    with pytest.raises(CheckpointError, match=message):
        checkpoint.validate_safetensors(weights)


def test_truncated_file_and_huge_header(model_copy):
    weights = model_copy / "model.safetensors"
    raw = weights.read_bytes()
    weights.write_bytes(raw[:-100])
    with pytest.raises(CheckpointError, match="header describes"):
        checkpoint.validate_safetensors(weights)
    weights.write_bytes(struct.pack("<Q", 2**40) + raw[8:])
    with pytest.raises(CheckpointError, match="over the"):
        checkpoint.validate_safetensors(weights)
    weights.write_bytes(b"abc")
    with pytest.raises(CheckpointError, match="truncated"):
        checkpoint.validate_safetensors(weights)


def test_hostile_nested_header_is_one_line_exit_2(model_copy):
    """A header of 100,001 nested brackets once escaped as a RecursionError traceback."""
    import subprocess
    import sys

    weights = model_copy / "model.safetensors"
    header = b"[" * 100_001 + b"]" * 100_001
    weights.write_bytes(struct.pack("<Q", len(header)) + header)
    (model_copy / checkpoint.SHA256SUMS).unlink()
    example = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.jpg"))[0]
    result = subprocess.run(
        [sys.executable, "-m", "vitgender.cli", "classify", str(example), "--model", str(model_copy)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "nests too deeply" in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_pickle_weights_refused_unless_allowed(model_copy):
    model = checkpoint.load_model(model_copy)
    (model_copy / "model.safetensors").unlink()
    (model_copy / "SHA256SUMS").unlink()
    torch.save(model.state_dict(), model_copy / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickle weights"):
        checkpoint.load_model(model_copy)
    loaded = checkpoint.load_model(model_copy, allow_pickle=True)
    assert torch.equal(loaded.classifier.weight, model.classifier.weight)


def test_sharded_checkpoint_loads(tmp_path, tiny_model):
    from transformers import ViTForImageClassification

    model = ViTForImageClassification.from_pretrained(tiny_model)
    out = tmp_path / "sharded"
    model.save_pretrained(out, safe_serialization=True, max_shard_size="20KB")
    shutil.copy(tiny_model / "preprocessor_config.json", out)
    assert (out / "model.safetensors.index.json").exists()
    ckpt = checkpoint.open_checkpoint(out)
    assert len(ckpt.files.weights) > 1 and ckpt.sha256 is None
    loaded = checkpoint.load_model(out)
    assert torch.equal(loaded.classifier.weight, model.classifier.weight)


def test_wrong_config_is_a_clear_error(model_copy):
    config = json.loads((model_copy / "config.json").read_text())
    (model_copy / "SHA256SUMS").unlink()
    (model_copy / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    with pytest.raises(CheckpointError, match="not supported .supported: vit, "):
        checkpoint.load_model(model_copy)
    (model_copy / "config.json").write_text(json.dumps({**config, "hidden_size": 64}))
    with pytest.raises(CheckpointError, match="do not match config.json|cannot load"):
        checkpoint.load_model(model_copy)
    (model_copy / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="invalid JSON"):
        checkpoint.load_model(model_copy)


def _populate_hf_cache(hf_home: Path, repo_id: str, source: Path, commit: str = "a" * 40) -> None:
    repo_dir = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / commit
    shutil.copytree(source, snapshot)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)


def test_hub_id_resolves_from_cache_offline(tmp_path, tiny_model):
    """In a child process: huggingface_hub reads HF_HOME / HF_HUB_OFFLINE once, at import."""
    import subprocess
    import sys

    _populate_hf_cache(tmp_path / "hf", "acme/tiny-vit", tiny_model)
    script = (
        "from vitgender import checkpoint\n"
        "from vitgender.errors import CheckpointError\n"
        "path = checkpoint.resolve('acme/tiny-vit')\n"
        "print(checkpoint.load_model(path).config.id2label)\n"
        "try:\n    checkpoint.resolve('acme/not-cached')\nexcept CheckpointError as exc:\n    print('ERR', exc)\n"
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "{0: 'female', 1: 'male'}" in result.stdout
    assert (
        "ERR acme/not-cached: no such directory; as a hub id it is not in the local HF cache, and HF_HUB_OFFLINE is set"
        in result.stdout
    )


def test_unknown_spec_is_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="no such directory"):
        checkpoint.resolve(str(tmp_path / "nope"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "build").mkdir()
    for local in ("./model", "../model", "build/model", "~/model"):  # folders, never sent to the hub as ids
        with pytest.raises(CheckpointError) as info:
            checkpoint.resolve(local)
        assert info.value.why == "no such directory"
    with pytest.raises(CheckpointError, match="no config.json"):
        checkpoint.load_model(tmp_path)


def test_default_model_is_verified_and_loads():
    ckpt = checkpoint.open_checkpoint(None)
    assert ckpt.directory == checkpoint.DEFAULT_MODEL_DIR and ckpt.labels == ("female", "male")
    assert ckpt.config["image_size"] == 140 and ckpt.preprocess.height == 140
    assert len(ckpt.files.weights) == 1 and set(ckpt.sha256) >= {"model.safetensors", "config.json"}
    assert ckpt.architecture.tokens(140, 140) == 101  # (140/14)^2 patches + [CLS]


def test_verify_command_with_and_without_checksums(model_copy):
    import subprocess
    import sys

    def verify(*args):
        return subprocess.run(
            [sys.executable, "-m", "vitgender.cli", "verify", str(model_copy), *args],
            capture_output=True,
            text=True,
            timeout=120,
        )

    ok = verify()
    assert ok.returncode == 0 and ok.stdout.startswith(f"OK {model_copy}: 3 files match SHA256SUMS")
    (model_copy / checkpoint.SHA256SUMS).unlink()
    unsigned = verify()
    assert unsigned.returncode == 2 and "1 weight file(s) valid" in unsigned.stderr  # still checked the files
    assert "no SHA256SUMS" in unsigned.stderr and "--write" in unsigned.stderr and unsigned.stderr.count("\n") == 1
    assert verify("--write").returncode == 0 and verify().returncode == 0

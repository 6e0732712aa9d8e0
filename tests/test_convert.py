"""`vitgender convert`: pickle weights -> model.safetensors + SHA256SUMS, the way past the pickle refusal."""

from __future__ import annotations

import shutil

import pytest
import torch

from tests.conftest import pickled_copy, run_main
from vitgender import checkpoint


@pytest.fixture
def pickled(tmp_path, tiny_model):
    return pickled_copy(tiny_model, tmp_path / "pickled")


@pytest.fixture
def run(monkeypatch, capsys):
    """`vitgender ARGS` in this process -> (exit code, stderr)."""

    def invoke(*args: str) -> tuple[int, str]:
        code, _, err = run_main(monkeypatch, capsys, *args)
        return code, err

    return invoke


def test_commands_without_allow_pickle_name_the_converter(pickled, tmp_path, run):
    code, err = run("evaluate", str(pickled), "--data", str(tmp_path))
    assert code == 2 and f"vitgender convert {pickled}" in err and err.count("\n") == 1


def test_convert_to_a_new_folder_is_checked_and_verifiable(pickled, tmp_path, run):
    out = tmp_path / "converted"
    code, err = run("convert", str(pickled / "pytorch_model.bin"), "--out", str(out))
    assert code == 0, err
    assert "warning: loading the pickle weights pytorch_model.bin" in err
    assert sorted(p.name for p in out.iterdir()) == [
        ".vitgender-output.json",  # atomic_dir's marker: a later run recognises its own output
        "SHA256SUMS",
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]
    assert run("verify", str(out))[0] == 0
    original = torch.load(pickled / "pytorch_model.bin", weights_only=True)
    converted = checkpoint.load_model(out).state_dict()
    assert all(torch.equal(converted[k], v) for k, v in original.items())
    assert (pickled / "pytorch_model.bin").is_file() and not (pickled / "model.safetensors").exists()
    code, err = run("convert", str(pickled), "--out", str(out))  # never overwrites
    assert code == 2 and "already exists" in err


def test_in_place_needs_the_flag_and_keeps_the_pickle(pickled, run):
    assert run("convert", str(pickled))[0] == 2  # neither --out nor --in-place: nothing written
    assert not (pickled / "model.safetensors").exists()
    code, err = run("convert", str(pickled), "--in-place")
    assert code == 0, err
    assert (pickled / "pytorch_model.bin").is_file() and (pickled / "model.safetensors").is_file()
    assert sorted(checkpoint.verify_sha256sums(pickled)) == [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "pytorch_model.bin",
    ]
    assert run("convert", str(pickled), "--in-place")[0] == 2  # already converted


def test_a_pickle_that_is_not_a_state_dict_is_one_line(tmp_path, tiny_model, run):
    folder = tmp_path / "odd"
    shutil.copytree(tiny_model, folder)
    (folder / "model.safetensors").unlink()
    (folder / "SHA256SUMS").unlink()
    torch.save([1, 2, 3], folder / "pytorch_model.bin")
    code, err = run("convert", str(folder), "--out", str(tmp_path / "out"))
    assert code == 2 and "no plain {name: tensor} state dict" in err and err.count("\n") == 2  # warning + error
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.partial")]

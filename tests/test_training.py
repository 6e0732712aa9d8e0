"""Training data loaders, the fixed split, augmentation and a resumable fine-tune run."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import random_image
from vitgender.data import age_bucket, load_labelled, parse_utkface_name, split_of, split_samples
from vitgender.training.finetune import TrainConfig, augment
from vitgender.training.recipe import canonical_key, read_pack, run_training


@pytest.mark.parametrize(
    "name,expected",
    [
        ("26_1_0_20170116171048641.jpg.chip.jpg", ("female", "White", "26", "20-29")),
        ("8_0_2_20170109201406416.jpg.chip.jpg", ("male", "Asian", "8", "3-9")),
        ("91_0_4_20170109201406416.jpg.chip.jpg", ("male", "Other", "91", "70+")),
        ("24_0_1_20170116220224657 .jpg.chip.jpg", None),  # stray space (in the real data)
        ("39_1_20170116174525125.jpg.chip.jpg", None),  # missing field
        ("55_0_0_20170116232725357jpg.chip.jpg", None),  # missing dot
        ("30_2_0_20170116232725357.jpg.chip.jpg", None),  # gender out of range
    ],
)
def test_utkface_names(name, expected):
    sample = parse_utkface_name(name)
    if expected is None:
        assert sample is None
    else:
        g = sample.groups
        assert (sample.label, g["race"], g["age"], g["age_bucket"]) == expected


def test_age_buckets_cover_every_age():
    assert [age_bucket(a) for a in (0, 2, 3, 19, 69, 70, 116)] == ["0-2", "0-2", "3-9", "10-19", "60-69", "70+", "70+"]


def make_utk(folder: Path, n: int = 24) -> Path:
    folder.mkdir(parents=True)
    for i in range(n):
        random_image(i, size=(50, 50)).save(folder / f"{20 + i}_{i % 2}_{i % 5}_2017010{i:02d}.jpg.chip.jpg")
    (folder / "39_1_20170116174525125.jpg.chip.jpg").write_bytes(b"x")
    return folder


def test_loaders_agree_on_labels(tmp_path):
    with pytest.warns(UserWarning, match="skipped 1 UTKFace"):
        utk, skipped = load_labelled(make_utk(tmp_path / "utk"))
    assert skipped == ["39_1_20170116174525125.jpg.chip.jpg"] and len(utk) == 24
    tree = tmp_path / "tree"
    for s in utk:
        (tree / s.label).mkdir(parents=True, exist_ok=True)
        shutil.copy(s.path, tree / s.label / s.path.name)
    folder, _ = load_labelled(tree)
    table = tmp_path / "labels.csv"
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "race", "age"])
        for s in utk:
            writer.writerow([f"utk/{s.path.name}", s.label, s.groups["race"], s.groups["age"]])
    rows, _ = load_labelled(table)
    assert sorted(s.label for s in folder) == sorted(s.label for s in utk) == sorted(s.label for s in rows)
    assert rows[0].groups["age_bucket"] == utk[0].groups["age_bucket"]


def test_split_is_by_content_so_duplicates_never_straddle(tmp_path):
    folder = make_utk(tmp_path / "utk", n=40)
    samples, _ = load_labelled(folder)
    first = samples[0].path
    twin = folder / "99_0_0_20990101000000000.jpg.chip.jpg"
    shutil.copy(first, twin)
    assert split_of(first) == split_of(twin)
    splits = split_samples(samples)
    assert len(splits["train"]) + len(splits["val"]) == 40 and splits["val"]
    assert split_samples(list(reversed(samples)))["val"] == list(reversed(splits["val"]))


def test_augment_keeps_shape_and_range():
    batch = torch.randint(0, 256, (4, 28, 28, 3), dtype=torch.uint8)
    out = augment(batch, torch.Generator().manual_seed(0))
    assert out.shape == (4, 3, 28, 28) and out.min() >= 0 and out.max() <= 1
    assert not torch.allclose(out, batch.permute(0, 3, 1, 2).float() / 255)


def test_transformers5_key_names_are_canonicalised():
    assert canonical_key("vit.layers.3.attention.q_proj.weight") == "vit.encoder.layer.3.attention.attention.query.weight"
    assert canonical_key("vit.layers.0.mlp.fc2.bias") == "vit.encoder.layer.0.output.dense.bias"
    assert canonical_key("classifier.weight") == "classifier.weight"


def test_finetune_runs_resumes_and_writes_a_loadable_checkpoint(tmp_path, tiny_model):
    from vitgender.checkpoint import load_model, verify_sha256sums

    data = make_utk(tmp_path / "utk", n=24)
    out, run_dir, pack = tmp_path / "model", tmp_path / "run", tmp_path / "pack.zip"
    logs = []
    cfg = TrainConfig(epochs=1, batch_size=8)
    with pytest.warns(UserWarning):
        run_training(data, out, image_size=32, init=tiny_model, cfg=cfg, run_dir=run_dir, pack=pack, log=logs.append)
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= set(verify_sha256sums(out))
    assert load_model(out).config.id2label == {0: "female", 1: "male"}
    assert json.loads((run_dir / "log.json").read_text())["epochs"][0]["epoch"] == 1
    arrays = read_pack(pack)
    assert sum(len(s) for _, s in arrays.values()) == 24
    # A second run with more epochs continues from the checkpoint instead of starting over.
    run_training(pack, out, image_size=32, init=tiny_model, cfg=TrainConfig(epochs=2, batch_size=8),
                 run_dir=run_dir, log=logs.append)
    assert any("resumed" in line and "after epoch 1" in line for line in logs)
    assert [e["epoch"] for e in json.loads((run_dir / "log.json").read_text())["epochs"]] == [1, 2]

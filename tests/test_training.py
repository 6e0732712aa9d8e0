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
from vitgender.errors import UsageError
from vitgender.training.finetune import TrainConfig, augment
from vitgender.training.recipe import canonical_key, read_pack, run_training


@pytest.mark.parametrize(
    ("name", "expected"),
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
    assert (
        canonical_key("vit.layers.3.attention.q_proj.weight") == "vit.encoder.layer.3.attention.attention.query.weight"
    )
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
    run_training(
        pack,
        out,
        image_size=32,
        init=tiny_model,
        cfg=TrainConfig(epochs=2, batch_size=8),
        run_dir=run_dir,
        log=logs.append,
    )
    assert any("resumed" in line and "after epoch 1" in line for line in logs)
    assert [e["epoch"] for e in json.loads((run_dir / "log.json").read_text())["epochs"]] == [1, 2]


def test_balanced_weights_give_every_cell_the_same_weight_per_adult_face():
    from vitgender.data import parse_utkface_name
    from vitgender.training.sampling import balanced_weights

    names = [
        f"{age}_{g}_{r}_20170101000000000.jpg.chip.jpg"
        for age, g, r, copies in [(30, 0, 0, 6), (30, 0, 4, 1), (5, 0, 4, 1), (40, 1, 2, 2)]
        for _ in range(copies)
    ]
    samples = [parse_utkface_name(n) for n in names]
    w = balanced_weights(samples, ("race", "gender"), min_age=10)
    cells = {}
    for s, weight in zip(samples, w.tolist(), strict=False):
        cells.setdefault((s.groups["race"], s.groups["gender"]), []).append(weight)
    # a cell's adults share a total of 1; the child in (Other, male) comes on top instead of diluting it
    assert cells[("White", "male")] == [pytest.approx(1 / 6)] * 6
    assert cells[("Other", "male")] == [1.0, 1.0]
    assert sum(cells[("Asian", "female")]) == pytest.approx(1.0)
    with pytest.raises(UsageError, match="no image carries the group"):
        balanced_weights(samples, ("skin",), min_age=10)


def test_holdout_follows_pixels_so_duplicates_stay_on_one_side():
    from vitgender.training.sampling import holdout_mask

    images = torch.randint(0, 256, (400, 8, 8, 3), dtype=torch.uint8)
    images[200:] = images[:200]  # the same pictures again, as UTKFace's duplicate files under other names
    held = holdout_mask(images, 0.25)
    assert torch.equal(held[:200], held[200:]) and 20 < int(held[:200].sum()) < 80
    assert torch.equal(holdout_mask(images, 0.25), held)  # fixed, not random


def test_refit_top_blocks_freezes_the_rest_reuses_its_cache_and_folds_a_temperature(tmp_path, tiny_model):
    from vitgender.checkpoint import load_model, verify_sha256sums
    from vitgender.training.recipe import run_refit
    from vitgender.training.top_blocks import TopBlocksConfig

    data = make_utk(tmp_path / "utk", n=40)
    out, logs = tmp_path / "refit", []
    cfg = TopBlocksConfig(trainable=1, epochs=2, batch_size=8, lr=1e-3, head_lr=1e-2, holdout_fraction=0.3)
    with pytest.warns(UserWarning):
        run_refit(data, out, init=tiny_model, cfg=cfg, log=logs.append)
    verify_sha256sums(out)
    before, after = load_model(tiny_model).state_dict(), load_model(out).state_dict()
    frozen = [k for k in before if ".encoder.layer.0." in k or ".embeddings." in k]
    refit = [k for k in before if ".encoder.layer.1." in k]
    # fp16 storage rounds, so "unchanged" means within fp16 precision
    assert all(torch.allclose(before[k], after[k], rtol=1e-3, atol=1e-4) for k in frozen)
    assert any(not torch.allclose(before[k], after[k], rtol=1e-2, atol=1e-3) for k in refit)
    log = json.loads((tmp_path / "refit.run" / "log.json").read_text())
    assert [e["epoch"] for e in log["epochs"]] == [1, 2] and "holdout_accuracy" in log["epochs"][0]
    train_split = len(split_samples(load_labelled(data)[0])["train"])
    assert log["holdout_images"] > 0 and log["holdout_images"] + log["fit_images"] == train_split
    assert "temperature" in log
    # a second run reuses the cached tokens; --no-resume or another starting model recomputes them
    with pytest.warns(UserWarning):
        run_refit(data, tmp_path / "again", init=tiny_model, cfg=cfg, run_dir=tmp_path / "refit.run", log=logs.append)
    assert sum("reusing cached tokens" in line for line in logs) == 2
    with pytest.warns(UserWarning):
        run_refit(data, tmp_path / "third", init=out, cfg=cfg, run_dir=tmp_path / "refit.run", log=logs.append)
    assert sum("reusing cached tokens" in line for line in logs) == 2
    with pytest.raises(UsageError, match="between 1 and 1"):
        run_refit(data, tmp_path / "bad", init=tiny_model, cfg=TopBlocksConfig(trainable=2), log=logs.append)


def test_temperature_fit_recovers_a_known_scale_and_folds_into_the_head(tiny_model):
    from vitgender.checkpoint import load_model
    from vitgender.training.calibration import fit_temperature, fold_temperature

    g = torch.Generator().manual_seed(0)
    true_logits = torch.randn(4000, 2, generator=g) * 3
    labels = torch.multinomial(true_logits.softmax(1), 1, generator=g).squeeze(1)
    assert fit_temperature(true_logits * 2.0, labels) == pytest.approx(2.0, rel=0.1)
    assert fit_temperature(true_logits * 0.8, labels) == pytest.approx(0.8, rel=0.1)
    model = load_model(tiny_model).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        plain = model(pixel_values=x).logits
        fold_temperature(model, 1.7)
        torch.testing.assert_close(model(pixel_values=x).logits, plain / 1.7)


def test_full_recipe_with_balance_and_holdout_logs_and_calibrates_on_the_holdout(tmp_path, tiny_model):
    from vitgender.checkpoint import load_model

    data = make_utk(tmp_path / "utk", n=40)
    out, logs = tmp_path / "model", []
    cfg = TrainConfig(epochs=1, batch_size=8, balance=("race", "gender"), holdout_fraction=0.3)
    with pytest.warns(UserWarning):
        run_training(data, out, image_size=32, init=tiny_model, cfg=cfg, log=logs.append)
    assert any(line.startswith("train ") and ", holdout " in line for line in logs)  # not the validation split
    assert "holdout_accuracy" in json.loads((tmp_path / "model.run" / "log.json").read_text())["epochs"][0]
    assert (tmp_path / "model.run" / "temperature.json").exists()
    assert load_model(out).config.id2label == {0: "female", 1: "male"}
    # resuming with other sampling would mix two different draws of the data: refused
    with pytest.warns(UserWarning), pytest.raises(UsageError, match="balance"):
        run_training(
            data,
            out,
            image_size=32,
            init=tiny_model,
            cfg=TrainConfig(epochs=2, batch_size=8, holdout_fraction=0.3),
            log=logs.append,
        )


def test_refit_without_a_holdout_folds_no_temperature(tmp_path, tiny_model):
    from vitgender.training.recipe import run_refit
    from vitgender.training.top_blocks import TopBlocksConfig

    cfg = TopBlocksConfig(trainable=1, epochs=1, batch_size=8, holdout_fraction=0.0)
    with pytest.warns(UserWarning):
        run_refit(make_utk(tmp_path / "utk", n=24), tmp_path / "refit", init=tiny_model, cfg=cfg, log=lambda _: None)
    log = json.loads((tmp_path / "refit.run" / "log.json").read_text())
    assert log["holdout_images"] == 0 and "temperature" not in log and "holdout_accuracy" not in log["epochs"][0]

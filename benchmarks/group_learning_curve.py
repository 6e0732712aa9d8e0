"""Would more data close the worst-group gap? Learning curves per race x gender cell.

The default model's weakest cells (Other male, Asian male) are its rarest and the ones with the
most young children. A fine-tuned model cannot be re-trained at many data sizes on a 2-core
CPU, so this measures the same question on a model that can: a logistic-regression probe on
*frozen* DINOv2 ViT-S/14 features (the backbone the default model starts from, never trained
on UTKFace, so no face in either split has been seen). Two curves, both on the project's
validation split (UTKFace, non-commercial research licence):

1. **All data**: train on a random fraction (1/16 ... 1) of the training split, 3 seeds;
   accuracy overall, for ages >= 15, and per race x gender cell.
2. **One cell**: keep every other face, train with 0, 1/4, 1/2 or all of the training faces of
   one cell (default: Other male, then Asian male): how that cell's accuracy responds to its own data.

The probe is weaker than fine-tuning (89.6% against 93.5% with all training faces), so read the
*slopes*, not the levels.

    .venv/bin/python benchmarks/group_learning_curve.py --json artifacts/evaluations/group_learning_curve.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from vitgender.data import Sample, load_labelled, split_samples
from vitgender.preprocess import PreprocessConfig, Preprocessor, decode_image

REPO = Path(__file__).resolve().parent.parent
FRACTIONS = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)
CELL_FRACTIONS = (0.0, 0.25, 0.5, 1.0)


def cell(sample: Sample) -> str:
    return f"{sample.groups['race']} {sample.groups['gender']}"


def features(samples: list[Sample], cache: Path, batch: int = 64) -> np.ndarray:
    """[CLS, mean of patch tokens] after the final LayerNorm of frozen DINOv2 at 140 px (cached)."""
    if cache.exists():
        cached = np.load(cache)
        if len(cached) == len(samples):  # else another data set was cached there: recompute
            return cached
    from vitgender.training.backbone import IMAGENET_MEAN, IMAGENET_STD, fetch_backbone_onnx, import_backbone

    model = import_backbone(
        fetch_backbone_onnx(Path.home() / ".cache" / "vitgender"), 140, {0: "female", 1: "male"}
    ).eval()
    pre = Preprocessor(
        PreprocessConfig(height=140, width=140, resample=2, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
    )
    out = []
    with torch.inference_mode():
        for start in range(0, len(samples), batch):
            pixels = pre.normalize(np.stack([pre.resize(decode_image(s.path)) for s in samples[start : start + batch]]))
            hidden = model.vit(pixel_values=torch.from_numpy(pixels)).last_hidden_state
            out.append(torch.cat([hidden[:, 0], hidden[:, 1:].mean(1)], 1).numpy())
    array = np.concatenate(out)
    np.save(cache, array)
    return array


def fit_probe(x: np.ndarray, y: np.ndarray, weight_decay: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-regularised logistic regression (full-batch L-BFGS) on standardised features."""
    xt, yt = torch.from_numpy(x), torch.from_numpy(y).float()
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xt @ w + b, yt) + weight_decay * (w @ w)
        loss.backward()
        return loss

    optimizer.step(closure)
    return w.detach(), b.detach()


def scores(w, b, x: np.ndarray, y: np.ndarray, samples: list[Sample]) -> dict:
    correct = (torch.from_numpy(x) @ w + b > 0).numpy().astype(int) == y
    cells: dict[str, list[bool]] = {}
    adult_cells: dict[str, list[bool]] = {}
    for ok, s in zip(correct, samples, strict=False):
        cells.setdefault(cell(s), []).append(bool(ok))
        if int(s.groups["age"]) >= 15:
            adult_cells.setdefault(cell(s), []).append(bool(ok))
    adult = np.array([int(s.groups["age"]) >= 15 for s in samples])
    return {
        "accuracy": float(correct.mean()),
        "ages_15_plus": float(correct[adult].mean()),
        "cells": {k: float(np.mean(v)) for k, v in sorted(cells.items())},
        "cells_15_plus": {k: float(np.mean(v)) for k, v in sorted(adult_cells.items())},
    }


def mean_over_seeds(runs: list[dict]) -> dict:
    out = {key: float(np.mean([r[key] for r in runs])) for key in ("accuracy", "ages_15_plus")}
    for key in ("cells", "cells_15_plus"):
        out[key] = {k: float(np.mean([r[key][k] for r in runs])) for k in runs[0][key]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "utkface")
    parser.add_argument("--work", type=Path, default=Path("/tmp/vitgender-learning-curve"))
    parser.add_argument(
        "--cell",
        action="append",
        help="A cell for curve 2 ('RACE gender'); repeatable " "(default: Other male and Asian male, the two weakest).",
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    began = time.time()
    args.work.mkdir(parents=True, exist_ok=True)
    splits = split_samples(load_labelled(args.data)[0])
    train, val = splits["train"], splits["val"]
    xtr, xva = features(train, args.work / "train.npy"), features(val, args.work / "val.npy")
    mean, std = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xva = ((xtr - mean) / std).astype(np.float32), ((xva - mean) / std).astype(np.float32)
    ytr = np.array([s.label == "male" for s in train], dtype=int)
    yva = np.array([s.label == "male" for s in val], dtype=int)
    train_cells = np.array([cell(s) for s in train])
    cells = args.cell or ["Other male", "Asian male"]

    all_data = []
    for fraction in FRACTIONS:
        runs = []
        for seed in range(args.seeds if fraction < 1 else 1):
            pick = np.random.default_rng(seed).permutation(len(train))[: int(fraction * len(train))]
            runs.append(scores(*fit_probe(xtr[pick], ytr[pick]), xva, yva, val))
        row = {"fraction": fraction, "train_images": int(fraction * len(train)), **mean_over_seeds(runs)}
        all_data.append(row)
        print(
            f"all data x{fraction:<7.4g} n={row['train_images']:>5}  val {100 * row['accuracy']:.1f}%  "
            f"15+ {100 * row['ages_15_plus']:.1f}%  " + "  ".join(f"{c} {100 * row['cells'][c]:.1f}%" for c in cells)
        )

    one_cell = {}
    for name in cells:
        in_cell, others = np.flatnonzero(train_cells == name), np.flatnonzero(train_cells != name)
        rows = one_cell[name] = []
        for fraction in CELL_FRACTIONS:
            runs = []
            for seed in range(args.seeds if 0 < fraction < 1 else 1):
                keep = np.random.default_rng(seed).permutation(in_cell)[: int(fraction * len(in_cell))]
                pick = np.concatenate([others, keep])
                runs.append(scores(*fit_probe(xtr[pick], ytr[pick]), xva, yva, val))
            rows.append(
                {"cell_fraction": fraction, "cell_train_images": int(fraction * len(in_cell)), **mean_over_seeds(runs)}
            )
            print(
                f"{name} x{fraction:<5.3g} n={rows[-1]['cell_train_images']:>4}  {name} "
                f"{100 * rows[-1]['cells'][name]:.1f}% (ages 15+ {100 * rows[-1]['cells_15_plus'][name]:.1f}%)  "
                f"overall {100 * rows[-1]['accuracy']:.1f}%"
            )

    val_n = {k: int(sum(cell(s) == k for s in val)) for k in sorted({cell(s) for s in val})}
    report = {
        "probe": "logistic regression on frozen DINOv2 ViT-S/14 [CLS, mean patch] at 140 px",
        "data": {
            "source": str(args.data),
            "train_images": len(train),
            "val_images": len(val),
            "val_cell_n": val_n,
            "licence": "UTKFace: non-commercial research only",
        },
        "seeds": args.seeds,
        "all_data": all_data,
        "one_cell": one_cell,
        "seconds": round(time.time() - began, 1),
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

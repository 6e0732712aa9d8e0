"""Deletion test of `vitgender explain`'s maps on UTKFace validation faces: which method is faithful?

For each of the first `--images` validation faces (sorted by file name; the split is
`vitgender.data.split_of`'s content-hash split) the default model's predicted class is explained
by each method; then k = 0, 10, ..., 90% of the 10x10 patches are replaced by the image's
per-channel mean (normalised pixel space) in three orders: the map's most salient first, its
least salient first, and random (the mean over `--seeds` seeded permutations, shared by both
methods since it ignores the maps). The predicted class's probability after each removal gives
one deletion curve per order; its area (trapezoid over k in [0, 0.9], divided by 0.9: the mean
probability over the range) is lower when the curve drops faster. A faithful map has
salient-first AUC well below random, and least-salient-first above it. The paired difference
random - salient is reported per method with a 95% confidence interval over images.

UTKFace (Zhang, Song, Qi, CVPR 2017) is licensed for non-commercial research only; it is read
from ../shared/data/utkface beside the repository and never copied or redistributed.

    .venv/bin/python benchmarks/explain_deletion.py --images 300 --json /tmp/explain-deletion.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from vitgender.checkpoint import open_checkpoint
from vitgender.data import split_samples, utkface_samples
from vitgender.explain.deletion import FRACTIONS, curve_auc, deletion_curves, patch_order, torch_predict
from vitgender.explain.maps import METHODS, explain_pixels
from vitgender.machine import machine
from vitgender.preprocess import Preprocessor, decode_image

REPO = Path(__file__).resolve().parent.parent
UTKFACE = REPO.parent / "shared" / "data" / "utkface"


def validation_faces(root: Path, count: int) -> list[Path]:
    samples, _ = utkface_samples(root)
    val = sorted(split_samples(samples)["val"], key=lambda s: s.path.name)
    return [s.path for s in val[:count]]


def paired(a: np.ndarray, b: np.ndarray) -> dict:
    """Mean of a - b over images with a normal-approximation 95% CI, and the share where a > b."""
    diff = np.asarray(a) - np.asarray(b)
    half = 1.96 * diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
    return {
        "mean": float(diff.mean()),
        "ci95": [float(diff.mean() - half), float(diff.mean() + half)],
        "share_positive": float((diff > 0).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300, help="first N validation faces (sorted by name)")
    parser.add_argument("--seeds", type=int, default=3, help="random orders averaged per image")
    parser.add_argument("--data", type=Path, default=UTKFACE)
    parser.add_argument("--model", default=None, help="checkpoint (default: the embedded model)")
    parser.add_argument("--chunk", type=int, default=10, help="images explained per forward pass")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import torch

    info = machine()
    print(
        f"machine: {info['cpu']}, {info['cores']} cores; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        flush=True,
    )
    checkpoint = open_checkpoint(args.model)
    model = checkpoint.load_model().float()
    preprocessor = Preprocessor(checkpoint.preprocess)
    patch = int(model.config.patch_size)
    predict = torch_predict(model)
    faces = validation_faces(args.data, args.images)
    print(
        f"{len(faces)} UTKFace validation faces, {args.seeds} random seeds, k = "
        f"{', '.join(f'{f:.0%}' for f in FRACTIONS)}",
        flush=True,
    )

    rngs = [np.random.default_rng(seed) for seed in range(args.seeds)]
    curves: dict[str, list[np.ndarray]] = {"random": []}
    for method in METHODS:
        curves[f"{method}/salient"], curves[f"{method}/least"] = [], []
    peak_share: dict[str, list[np.ndarray]] = {m: [] for m in METHODS}
    map_seconds = {m: 0.0 for m in METHODS}
    started = time.perf_counter()
    for start in range(0, len(faces), args.chunk):
        pixels = preprocessor([decode_image(p) for p in faces[start : start + args.chunk]])
        base_probs = predict(pixels)
        target = base_probs.argmax(1)
        base = base_probs[np.arange(len(target)), target]
        for method in METHODS:
            tick = time.perf_counter()
            result = explain_pixels(model, pixels, method, target=target)
            map_seconds[method] += time.perf_counter() - tick
            flat = result.maps.reshape(len(target), -1)
            peak_share[method].append(np.sort(flat, 1)[:, -5:].sum(1))  # mass on the 5 hottest patches
            for order in ("salient", "least"):
                curves[f"{method}/{order}"].append(
                    deletion_curves(predict, pixels, patch_order(result.maps, order), target, patch, base=base)
                )
        randoms = [
            deletion_curves(
                predict,
                pixels,
                patch_order(np.zeros((len(target), pixels.shape[2] // patch, pixels.shape[3] // patch)), "random", rng),
                target,
                patch,
                base=base,
            )
            for rng in rngs
        ]
        curves["random"].append(np.mean(randoms, axis=0))
        done = min(start + args.chunk, len(faces))
        print(f"  {done}/{len(faces)} faces, {time.perf_counter() - started:.0f} s", flush=True)
    seconds = time.perf_counter() - started

    stacked = {name: np.concatenate(parts) for name, parts in curves.items()}
    aucs = {name: curve_auc(c) for name, c in stacked.items()}
    print(
        f"\n{len(faces)} faces in {seconds:.0f} s; maps: "
        + ", ".join(f"{m} {1000 * map_seconds[m] / len(faces):.0f} ms/image" for m in METHODS)
    )
    print("\n| method | order | AUC | " + " | ".join(f"k={f:.0%}" for f in FRACTIONS) + " |")
    print("|---|---|---|" + "---|" * len(FRACTIONS))
    for name in [*(f"{m}/{o}" for m in METHODS for o in ("salient", "least")), "random"]:
        method, _, order = name.partition("/")
        label = f"| {method} | {order or 'random'}" if order else "| (either) | random"
        print(f"{label} | {aucs[name].mean():.3f} | " + " | ".join(f"{v:.3f}" for v in stacked[name].mean(0)) + " |")
    comparisons = {}
    print()
    for method in METHODS:
        faster = comparisons[f"{method}: random - salient"] = paired(aucs["random"], aucs[f"{method}/salient"])
        slower = comparisons[f"{method}: least - random"] = paired(aucs[f"{method}/least"], aucs["random"])
        print(
            f"{method}: random - salient AUC {faster['mean']:+.3f} (95% CI {faster['ci95'][0]:+.3f} to "
            f"{faster['ci95'][1]:+.3f}; salient-first lower on {faster['share_positive']:.0%} of faces); "
            f"least - random {slower['mean']:+.3f} ({slower['ci95'][0]:+.3f} to {slower['ci95'][1]:+.3f}); "
            f"mass on the 5 hottest patches {np.concatenate(peak_share[method]).mean():.1%}"
        )
    versus = comparisons["rollout - attribution (salient AUC)"] = paired(
        aucs["rollout/salient"], aucs["attribution/salient"]
    )
    print(
        f"rollout - attribution salient-first AUC {versus['mean']:+.3f} (95% CI {versus['ci95'][0]:+.3f} to "
        f"{versus['ci95'][1]:+.3f}; attribution lower on {versus['share_positive']:.0%} of faces)"
    )
    if args.json:
        report = {
            "machine": info,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "model": str(checkpoint.directory),
            "images": len(faces),
            "seeds": args.seeds,
            "seconds": round(seconds, 1),
            "map_ms_per_image": {m: round(1000 * map_seconds[m] / len(faces), 1) for m in METHODS},
            "fractions": list(FRACTIONS),
            "mean_curves": {name: [round(float(v), 5) for v in c.mean(0)] for name, c in stacked.items()},
            "auc": {name: round(float(a.mean()), 5) for name, a in aucs.items()},
            "comparisons": comparisons,
            "peak5_share": {m: round(float(np.concatenate(v).mean()), 5) for m, v in peak_share.items()},
            "faces": [p.name for p in faces],
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

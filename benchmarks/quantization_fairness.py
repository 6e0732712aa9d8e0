"""Does quantization hurt one group more than another? Every artifact against PyTorch, per group.

Runs PyTorch and every artifact of an export (default: the int8 ones) on the whole UTKFace
validation split (non-commercial research data; the training split's faces are never used),
decoded and preprocessed once. For each artifact: accuracy change overall, top-1 agreement with
PyTorch, McNemar's p that it is worse, and the accuracy change of every race x gender cell and
every age bucket with its n. The goal it checks (issue #17): overall change within 0.3 pt and no
race x gender or age cell with n >= 200 moving more than 0.5 pt.

    .venv/bin/python benchmarks/quantization_fairness.py --json artifacts/evaluations/quantization_fairness.json

One artifact of another export (a machine's int8 kernels decide its flips, so the JSON names the CPU):

    .venv/bin/python benchmarks/quantization_fairness.py --export EXPORT --artifacts executorch-int8-dynamic --json F

An artifact in a runtime setting (its row is named ARTIFACT@SPEC):

    .venv/bin/python benchmarks/quantization_fairness.py --export EXPORT --artifacts pt2-int8 \
        --runtime inductor:precision=bf16 --json F
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from vitgender.data import load_labelled, split_samples
from vitgender.errors import UsageError
from vitgender.evaluation.metrics import Prediction, accuracy_cell
from vitgender.machine import machine
from vitgender.manifest import read_manifest, verify_artifact
from vitgender.precision import Precision
from vitgender.preprocess import Preprocessor, decode_image
from vitgender.runtimes import check_runtime_spec, open_runner, runtime_for
from vitgender.validators.compare import group_deltas
from vitgender.validators.metrics import paired_accuracy
from vitgender.validators.parity import run_chunked

REPO = Path(__file__).resolve().parent.parent
UTKFACE = REPO.parent / "shared" / "data" / "utkface"
CELL_N, CELL_PT, OVERALL_PT = 200, 0.5, 0.3


def predictions(logits: np.ndarray, labels: tuple[str, ...], samples) -> list[Prediction]:
    top = logits.argmax(1)
    return [Prediction(str(s.path), s.label, labels[k], 1.0, s.groups) for s, k in zip(samples, top, strict=False)]


def summarise(name: str, ref: list[Prediction], art: list[Prediction], agreement: float) -> dict:
    deltas = group_deltas(ref, art, ("female", "male"))  # the default model's tables
    cells = [d for d in deltas if set(d["group"]) in ({"race", "gender"}, {"age_bucket"})]
    big = [d for d in cells if d["n"] >= CELL_N]
    worst = max(big, key=lambda d: abs(d["delta"]), default=None)
    paired = paired_accuracy([p.correct for p in ref], [p.correct for p in art])
    overall_pt = -100 * paired["accuracy_drop"]
    return {
        "name": name,
        "accuracy": accuracy_cell(art)["accuracy"],
        "delta_pt": overall_pt,
        "top1_agreement": agreement,
        "accuracy_worse_p": paired["accuracy_worse_p"],
        "worst_cell": worst and {"group": worst["group"], "n": worst["n"], "delta_pt": 100 * worst["delta"]},
        "meets_goal": abs(overall_pt) <= OVERALL_PT and all(abs(100 * d["delta"]) <= CELL_PT for d in big),
        "cells": cells,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", type=Path, default=REPO / "artifacts" / "vitgender-default")
    parser.add_argument("--all", action="store_true", help="every artifact, not only the int8 ones")
    parser.add_argument("--artifacts", help="comma list of artifact names (default: the int8 ones)")
    parser.add_argument("--runtime", help="a runtime spec for the artifacts it opens (inductor:precision=bf16)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.runtime:
        try:  # before the reference pass, not after it
            check_runtime_spec(args.runtime)
        except UsageError as exc:
            parser.error(str(exc))

    samples, _ = load_labelled(UTKFACE)
    val = split_samples(samples)["val"]
    torch_runner = open_runner("torch", read_manifest(args.export)["model"]["source"])
    pre = Preprocessor(torch_runner.info.preprocess)
    resized = np.stack([pre.resize(decode_image(s.path)) for s in val])
    pixels = pre.normalize(resized)
    ref_logits = run_chunked(torch_runner, pixels)
    ref = predictions(ref_logits, torch_runner.info.labels, val)
    wanted = set(args.artifacts.split(",")) if args.artifacts else None
    rows = []
    for entry in read_manifest(args.export)["artifacts"]:
        if wanted is not None and entry["name"] not in wanted:
            continue
        if wanted is None and not (args.all or Precision.parse(entry["precision"]).is_int8):
            continue
        path = verify_artifact(args.export, entry)
        spec = runtime_for(path, args.runtime)
        runner = open_runner(spec, path)
        logits = run_chunked(runner, resized if runner.info.raw_input else pixels)
        art = predictions(logits, runner.info.labels, val)
        agreement = float(np.mean([a.predicted == r.predicted for a, r in zip(art, ref, strict=False)]))
        name = entry["name"] if spec == runtime_for(path) else f"{entry['name']}@{spec}"
        rows.append(summarise(name, ref, art, agreement))
        print(f"{entry['name']}: done", flush=True)
    report = {
        "machine": machine(),
        "faces": len(val),
        "torch_accuracy": accuracy_cell(ref)["accuracy"],
        "goal": {"overall_pt": OVERALL_PT, "cell_pt": CELL_PT, "cell_min_n": CELL_N},
        "artifacts": rows,
    }
    print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


def table(report: dict) -> str:
    lines = [
        f"{report['faces']} UTKFace validation faces; PyTorch accuracy {report['torch_accuracy']:.2%}",
        "",
        "| artifact | accuracy | Δ vs PyTorch | top-1 agreement | McNemar p (worse) | largest cell change (n ≥ 200) "
        "| goal met |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["artifacts"]:
        w = r["worst_cell"]
        cell = f"{' '.join(w['group'].values())} {w['delta_pt']:+.2f} pt (n={w['n']})" if w else "-"
        lines.append(
            f"| {r['name']} | {r['accuracy']:.2%} | {r['delta_pt']:+.2f} pt | {r['top1_agreement']:.2%} | "
            f"{r['accuracy_worse_p']:.3g} | {cell} | {'yes' if r['meets_goal'] else 'no'} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()

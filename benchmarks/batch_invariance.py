"""Does each artifact answer the same for an image alone and inside batches of other faces?

Runs `vitgender.validators.batching.batch_variation` on `--groups` disjoint groups of 40 UTKFace
validation faces (non-commercial research data; not the bundled reference faces): 8 probes per
group, alone and inside two batches of 32 with different companions. Prints, per artifact, the
worst and median largest |Δlogit| and the decisions that changed. The gate's budget for it
(`batch_max_rel_logit_diff`) is fitted with the others by `vitgender validate --fit-budgets`.

    .venv/bin/python benchmarks/batch_invariance.py --json artifacts/evaluations/batch_invariance.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from vitgender.data import load_labelled, split_samples
from vitgender.manifest import read_manifest, verify_artifact
from vitgender.precision import Precision
from vitgender.runtimes import open_runner, runtime_for
from vitgender.validators.batching import batch_variation
from vitgender.validators.parity import _runner_inputs

REPO = Path(__file__).resolve().parent.parent
UTKFACE = REPO.parent / "shared" / "data" / "utkface"
REFERENCE = REPO / "vitgender" / "reference" / "utkface-val-50"
GROUP = 40


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", type=Path, default=REPO / "artifacts" / "vitgender-default")
    parser.add_argument("--groups", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    samples, _ = load_labelled(UTKFACE)
    reference = {p.name for p in REFERENCE.iterdir()}
    val = [s for s in split_samples(samples)["val"] if s.path.name not in reference]
    rng = np.random.default_rng(1)
    faces = [val[i].path for i in rng.choice(len(val), args.groups * GROUP, replace=False)]
    candidates = [("torch-eager", "torch", REPO / "vitgender" / "default_model", Precision.FP32)]
    for entry in read_manifest(args.export)["artifacts"]:
        path = verify_artifact(args.export, entry)
        candidates.append((entry["name"], runtime_for(path), path, Precision.parse(entry["precision"])))
    report = {"faces": len(faces), "groups": args.groups, "artifacts": {}}
    for name, runtime, path, precision in candidates:
        runner = open_runner(runtime, path)
        inputs = _runner_inputs(faces, runner.info.preprocess, runner.info.raw_input)
        runs = [batch_variation(runner.run, inputs[i : i + GROUP]) for i in range(0, len(faces), GROUP)]
        worst = [r["batch_max_abs_logit_diff"] for r in runs]
        report["artifacts"][name] = {
            "precision": precision.value,
            "worst": max(worst),
            "median": float(np.median(worst)),
            "flips": sum(r["batch_flips"] for r in runs),
            "probes": 2 * sum(r["batch_probes"] for r in runs),
        }
        row = report["artifacts"][name]
        print(
            f"{name:<22} {precision.value:<13} worst {row['worst']:.3g}  median {row['median']:.3g}  "
            f"decisions changed {row['flips']}/{row['probes']}",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""How good is the parity gate? A thin use of `vitgender.validators.gate_fit`, for the project's own defaults.

Two jobs:

1. Fit and measure the gate for the default model on UTKFace validation faces (non-commercial
   research data) that are not in the bundled reference set — exactly what a user's
   `vitgender validate ARTIFACTS --images FACES --fit-budgets FILE` does for their model:

       .venv/bin/vitgender export --out artifacts/vitgender-default --formats all
       .venv/bin/python benchmarks/gate_quality.py fit --faces 2000 --out runs/gate-quality/default.toml

   With `--runtime openvino:precision=bf16` the fp32 ONNX artifacts run with OpenVINO's bf16 hint:
   that fits the bf16 budget.

2. Merge the fitted budgets of several models (each a `*.gate-quality.json` written by a fit) into
   the shipped scale-free defaults, the largest fitted value per precision and metric, so that a
   correct export of any of those models passes without a fitted file (docs/gate.md has the
   per-model table):

       .venv/bin/python benchmarks/gate_quality.py defaults runs/gate-quality/*.gate-quality.json --write
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from vitgender.data import load_labelled, split_samples
from vitgender.reporting import gate_quality
from vitgender.validators import gate_fit

REPO = Path(__file__).resolve().parent.parent
UTKFACE = REPO.parent / "shared" / "data" / "utkface"
REFERENCE = REPO / "vitgender" / "reference" / "utkface-val-50"
DEFAULTS_FILE = REPO / "vitgender" / "validators" / "default_budgets.json"


def fit_default_model(export: Path, faces: int, out: Path, runtime: str | None = None) -> dict:
    """The default model's fit on `faces` validation faces (not the bundled ones), linked into a scratch folder.

    `runtime` opens the artifacts it reads (`openvino:precision=bf16` fits the bf16 budget)."""
    samples, _ = load_labelled(UTKFACE)
    reference = {p.name for p in REFERENCE.iterdir()}
    val = [s for s in split_samples(samples)["val"] if s.path.name not in reference][:faces]
    with tempfile.TemporaryDirectory(prefix="gate-quality-") as scratch:
        for s in val:
            (Path(scratch) / s.path.name).symlink_to(s.path.resolve())
        report, files = gate_fit.fit_command(
            export,
            out,
            images=Path(scratch),
            labels="auto",
            command=f"benchmarks/gate_quality.py fit --faces {faces}" + (f" --runtime {runtime}" if runtime else ""),
            on_step=lambda step: print(f"[fit] {step}", flush=True),
            render_markdown=gate_quality.markdown,
            runtime=runtime,
        )
    print(gate_quality.markdown(report))
    print(f"wrote {files['budgets']} {files['md']} {files['json']}")
    return report


def merged_defaults(
    reports: list[Path], start: dict[str, dict[str, float]] | None = None
) -> dict[str, dict[str, float]]:
    """The largest fitted budget per precision and metric over the models' fit reports (and `start`)."""
    merged: dict[str, dict[str, float]] = {k: dict(v) for k, v in (start or {}).items()}
    for path in reports:
        for precision, budget in json.loads(path.read_text())["budgets"].items():
            for metric, value in budget.items():
                merged.setdefault(precision, {})[metric] = max(value, merged.get(precision, {}).get(metric, value))
    return merged


def main() -> None:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    fit = commands.add_parser("fit", help="fit and measure the gate for the default model")
    fit.add_argument("--export", type=Path, default=REPO / "artifacts" / "vitgender-default")
    fit.add_argument("--faces", type=int, default=2000)
    fit.add_argument("--out", type=Path, default=REPO / "runs" / "gate-quality" / "default.toml")
    fit.add_argument("--runtime", help="open the artifacts it reads with this runtime (openvino:precision=bf16)")
    defaults = commands.add_parser("defaults", help="merge fitted budgets of several models into the defaults")
    defaults.add_argument("reports", type=Path, nargs="+", help="*.gate-quality.json files written by fits")
    defaults.add_argument(
        "--with-current",
        action="store_true",
        help="also keep the current defaults where larger "
        "(models whose fit reports are not at hand, e.g. the default model's)",
    )
    defaults.add_argument("--write", action="store_true", help=f"write {DEFAULTS_FILE}")
    args = parser.parse_args()
    if args.command == "fit":
        fit_default_model(args.export, args.faces, args.out, args.runtime)
        return
    previous = json.loads(DEFAULTS_FILE.read_text())
    merged = merged_defaults(args.reports, previous["budgets"] if args.with_current else None)
    print(json.dumps(merged, indent=2))
    if args.write:
        models = [json.loads(p.read_text())["provenance"]["model_source"] for p in args.reports]
        DEFAULTS_FILE.write_text(
            json.dumps(
                {
                    "provenance": "benchmarks/gate_quality.py defaults: the largest budget fitted (vitgender validate "
                    f"--fit-budgets) per precision and metric over {len(models)} models: "
                    + ", ".join(Path(m).name for m in models)
                    + (
                        "; and the previous defaults where larger: " + previous["provenance"]
                        if args.with_current
                        else ""
                    ),
                    **{k: v for k, v in previous.items() if k.endswith("_provenance")},
                    "budgets": merged,
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()

"""`vitgender evaluate`: accuracy with CIs, calibration and per-group fairness on a labelled set."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from vitgender.cli.app import app
from vitgender.cli.common import TTA_HELP, progress_bar
from vitgender.explain.api import DEFAULT_METHOD


@app.command()
def evaluate(
    model: Optional[str] = typer.Argument(None, metavar="MODEL", help="Checkpoint, hub id, or an artifact (.onnx, .tflite, SavedModel dir)."),
    data: Path = typer.Option(..., "--data", metavar="DATA", help="Labelled images: UTKFace-named folder, ImageFolder tree or CSV."),
    runtime: Optional[str] = typer.Option(None, metavar="RUNTIME", help="Force a runtime (torch, onnx, tflite, savedmodel); default: by file type."),
    split: str = typer.Option("all", metavar="SPLIT", help="all, or the project's fixed content-hash split: train or val."),
    min_age: Optional[int] = typer.Option(None, metavar="N", help="Only images whose age label is at least this."),
    min_confidence: Optional[float] = typer.Option(None, metavar="X", min=0.0, max=1.0,
                                                   help="Also report coverage/accuracy when answering only above this."),
    batch_size: int = typer.Option(16, metavar="N", min=1),
    tta: str = typer.Option("none", metavar="MODE", help=TTA_HELP),
    json_out: Optional[Path] = typer.Option(None, "--json", metavar="FILE", help="Write the full report as JSON."),
    html_out: Optional[Path] = typer.Option(None, "--html", metavar="FILE", help="Write a self-contained HTML page with charts."),
    explain: int = typer.Option(0, "--explain", metavar="N", min=0, help="Add, per race x gender cell, the mean "
                                "attention map of up to N right and N wrong answers (PyTorch checkpoints only)."),
    explain_method: str = typer.Option(DEFAULT_METHOD, metavar="METHOD", help="Map method for --explain: attribution "
                                       "(the default) or rollout; see docs/explain.md."),
) -> None:
    """Accuracy with 95% CIs, calibration and per-group fairness on a labelled set."""
    from rich.console import Console

    from vitgender.errors import UsageError
    from vitgender.evaluate import predict_samples, report_of, select
    from vitgender.output_folders import atomic_file, check_file_target
    from vitgender.reporting import evaluation
    from vitgender.runtimes import open_runner, runtime_for

    for target in (json_out, html_out):
        if target is not None:
            check_file_target(target)  # before any work, not after the evaluation
    runner = open_runner(runtime or runtime_for(model), model, tta=tta)
    if explain and runner.info.runtime != "torch":
        raise UsageError("--explain", "maps explain the PyTorch model: evaluate its checkpoint, not an exported artifact")
    samples, skipped = select(data, split, min_age)
    with progress_bar("evaluating", total=len(samples)) as advance:
        predictions, errors = predict_samples(runner, samples, batch_size=batch_size, advance=advance)
    report = report_of(runner, predictions, errors, skipped, min_confidence=min_confidence)
    runner.close()  # the ExecuTorch worker, if any, ends here
    report["data"] = {"source": str(data), "split": split, "min_age": min_age, "images": len(samples)}
    if explain:
        from vitgender.explain import Explainer
        from vitgender.explain.cells import cell_maps

        with progress_bar("explaining") as step:
            cells = cell_maps(Explainer(model), predictions, explain, explain_method, advance=step)
        report["explain"] = {"method": explain_method, "per_cell": explain, "cells": cells}
    evaluation.terminal(report, Console(stderr=False))
    if json_out is not None:
        with atomic_file(json_out) as handle:
            handle.write(json.dumps(report, indent=2) + "\n")
    if html_out is not None:
        with atomic_file(html_out) as handle:
            handle.write(evaluation.html(report, f"vitgender evaluation: {runner.info.source}"))

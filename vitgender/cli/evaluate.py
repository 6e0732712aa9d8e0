"""`vitgender evaluate`: accuracy with CIs per label and per group, and calibration, on a labelled set."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from vitgender.cli.app import app
from vitgender.cli.common import ALPHA_HELP, TTA_HELP, AlphaPolicy, only_with, progress_bar
from vitgender.explain.api import DEFAULT_METHOD


@app.command()
def evaluate(
    ctx: typer.Context,
    model: Optional[str] = typer.Argument(
        None, metavar="MODEL", help="Checkpoint, hub id, or an artifact (.onnx, .tflite, SavedModel dir)."
    ),
    data: Path = typer.Option(
        ...,
        "--data",
        metavar="DATA",
        help="Labelled images: class folders (one per model "
        "label), a CSV (path,label[,group columns]) or a folder of UTKFace-named files.",
    ),
    label_field: Optional[str] = typer.Option(
        None,
        metavar="FIELD",
        help="Which field is the label: a UTKFace "
        "file-name field (gender, race, age, age_bucket; default: the one whose "
        "values are the model's labels) or a CSV column (default: label).",
    ),
    group_by: Optional[str] = typer.Option(
        None,
        metavar="FIELDS",
        help="Per-group tables from fields the data has "
        "(UTKFace fields, CSV columns): race,age = one table each; race+age = one "
        "crossed table. Default: per label only (the default model: its model "
        "card's tables).",
    ),
    runtime: Optional[str] = typer.Option(
        None, metavar="RUNTIME", help="Force a runtime (torch, onnx, tflite, savedmodel); default: by file type."
    ),
    split: str = typer.Option(
        "all", metavar="SPLIT", help="all, or the project's fixed content-hash split: train or val."
    ),
    min_age: Optional[int] = typer.Option(None, metavar="N", help="Only images whose age label is at least this."),
    min_confidence: Optional[float] = typer.Option(
        None, metavar="X", min=0.0, max=1.0, help="Also report coverage/accuracy when answering only above this."
    ),
    batch_size: int = typer.Option(16, metavar="N", min=1),
    tta: str = typer.Option("none", metavar="MODE", help=TTA_HELP),
    alpha: Optional[AlphaPolicy] = typer.Option(None, "--alpha", metavar="POLICY", help=ALPHA_HELP),
    json_out: Optional[Path] = typer.Option(None, "--json", metavar="FILE", help="Write the full report as JSON."),
    html_out: Optional[Path] = typer.Option(
        None, "--html", metavar="FILE", help="Write a self-contained HTML page with charts."
    ),
    explain: int = typer.Option(
        0,
        "--explain",
        metavar="N",
        min=0,
        help="Add, per cell of the finest reported "
        "table of at most two fields (per label without group tables), the mean attention "
        "map of up to N right and N wrong answers (PyTorch checkpoints only).",
    ),
    explain_method: str = typer.Option(
        DEFAULT_METHOD,
        metavar="METHOD",
        help="Map method for --explain: attribution " "(the default) or rollout; see docs/explain.md.",
    ),
) -> None:
    """Accuracy with 95% CIs per label and per group of the data, and calibration, on a labelled set."""
    alpha = alpha.value if alpha is not None else None
    from rich.console import Console

    from vitgender.errors import UsageError
    from vitgender.evaluate import predict_samples, report_of, select
    from vitgender.evaluation.metrics import default_groupings, parse_group_by
    from vitgender.evaluation.task import describe_task
    from vitgender.output_folders import atomic_file, check_file_target
    from vitgender.reporting import evaluation
    from vitgender.runtimes import open_runner, runtime_for

    only_with(ctx, explain > 0, "--explain N", "explain_method")
    only_with(
        ctx,
        not explain or tta == "none",
        "the model as it is (--explain maps the model without test-time " "augmentation)",
        "tta",
    )
    for target in (json_out, html_out):
        if target is not None:
            check_file_target(target)  # before any work, not after the evaluation
    runner = open_runner(runtime or runtime_for(model), model, tta=tta, alpha=alpha)
    if explain and runner.info.runtime != "torch":
        raise UsageError(
            "--explain", "maps explain the PyTorch model: evaluate its checkpoint, not an exported artifact"
        )
    labelled = select(data, split, min_age, labels=runner.info.labels, label_field=label_field)
    groupings = (
        parse_group_by(group_by, labelled.fields)
        if group_by is not None
        else default_groupings(runner.info.labels, labelled.fields)
    )
    with progress_bar("evaluating", total=len(labelled.samples)) as advance:
        predictions, errors = predict_samples(runner, labelled.samples, batch_size=batch_size, advance=advance)
    report = report_of(
        runner, predictions, errors, labelled.skipped, min_confidence=min_confidence, groupings=groupings
    )
    runner.close()  # the ExecuTorch worker, if any, ends here
    report["data"] = {
        "source": str(data),
        "split": split,
        "min_age": min_age,
        "images": len(labelled.samples),
        "labels": labelled.source.to_dict(),
    }
    report["task"] = describe_task(model, runner.info.labels)
    if explain:
        from vitgender.explain import Explainer
        from vitgender.explain.cells import cell_keys, cell_maps

        with progress_bar("explaining") as step:
            keys = cell_keys(groupings)
            cells = cell_maps(Explainer(model, alpha=alpha), predictions, explain, explain_method, keys, advance=step)
        report["explain"] = {"method": explain_method, "per_cell": explain, "keys": list(keys), "cells": cells}
    evaluation.terminal(report, Console(stderr=False))
    if json_out is not None:
        with atomic_file(json_out) as handle:
            handle.write(json.dumps(report, indent=2) + "\n")
    if html_out is not None:
        with atomic_file(html_out) as handle:
            handle.write(evaluation.html(report, f"vitgender evaluation: {runner.info.source}"))

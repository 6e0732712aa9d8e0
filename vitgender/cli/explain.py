"""`vitgender explain`: heat maps of what the model looked at, one PNG per image and an HTML sheet."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from vitgender.cli.app import app
from vitgender.cli.common import ALPHA_HELP, MODEL_HELP, PICKLE_HELP, AlphaPolicy, error, only_with, progress_bar
from vitgender.explain.api import DEFAULT_METHOD


class Method(str, Enum):
    rollout = "rollout"
    attribution = "attribution"


@app.command()
def explain(
    ctx: typer.Context,
    paths: list[str] = typer.Argument(..., metavar="IMAGES", help="Image files, folders (recursive) or glob patterns."),
    out: Path = typer.Option(
        ...,
        "--out",
        "-o",
        metavar="DIR",
        help="Folder for the overlays and index.html " "(written complete or not at all).",
    ),
    model: Optional[str] = typer.Option(None, "--model", "-m", metavar="MODEL", help=MODEL_HELP),
    method: Method = typer.Option(
        Method(DEFAULT_METHOD),
        help="attribution: gradient-weighted attention rollout "
        "(Chefer et al. 2021), the default, most faithful in the deletion test "
        "(docs/explain.md); rollout: attention rollout (Abnar & Zuidema 2020).",
    ),
    faces: bool = typer.Option(
        False,
        "--faces",
        help="Face-first: detect faces, explain each crop, draw its map " "inside its box on the original photo.",
    ),
    detector: str = typer.Option(
        "haar", metavar="NAME", help="Face detector for --faces: haar (default) or blazeface."
    ),
    max_faces: int = typer.Option(
        20, metavar="N", min=1, help="With --faces, explain at most this many faces per image."
    ),
    min_confidence: Optional[float] = typer.Option(
        None,
        metavar="X",
        min=0.0,
        max=1.0,
        help="Flag answers below this "
        "score as uncertain, and put flagged images (uncertain, "
        "contradicting the label the data states, or without a face "
        "under --faces) first.",
    ),
    labels_csv: Optional[Path] = typer.Option(
        None,
        "--labels",
        metavar="CSV",
        help="Expected labels: a CSV with "
        "path,label columns (paths relative to the CSV). Without it, a parent "
        "folder named after a model label, or a UTKFace file name's field.",
    ),
    label_field: Optional[str] = typer.Option(
        None,
        metavar="FIELD",
        help="Which field states the expected label: "
        "a column of --labels, or a UTKFace file-name field (gender, race, "
        "age, age_bucket; default: the one whose values are the model's "
        "labels).",
    ),
    alpha: Optional[AlphaPolicy] = typer.Option(None, "--alpha", metavar="POLICY", help=ALPHA_HELP),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Replace --out when it holds an earlier explain output "
        "(an index.html); any other non-empty folder is refused.",
    ),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help=PICKLE_HELP),
    batch_size: int = typer.Option(8, "--batch-size", "-b", metavar="N", min=1, help="Images per forward pass."),
) -> None:
    """Explain the PyTorch model's predictions: a heat map over the patch grid per image (or face),
    overlaid on the image with its label and score, plus one self-contained index.html.

    A bad input never aborts the run: it is listed on the sheet as an error and on stderr, and the
    exit code is 2 if any input failed, 0 otherwise.
    """
    alpha = alpha.value if alpha is not None else None
    from vitgender.data import ExpectedLabels
    from vitgender.explain.api import Explainer
    from vitgender.inputs import expand_inputs
    from vitgender.output_folders import atomic_dir
    from vitgender.reporting.explanations import SheetWriter, is_explain_output

    only_with(ctx, faces, "--faces", "detector", "max_faces")
    only_with(ctx, not faces, "whole images (with --faces, each image's faces form one batch)", "batch_size")
    failures = 0
    with atomic_dir(out, "explain", overwrite=overwrite, recognise=is_explain_output) as folder:  # checked first
        explainer = Explainer(model, allow_pickle=allow_pickle, alpha=alpha)
        expected = ExpectedLabels(explainer.labels, csv_path=labels_csv, label_field=label_field)
        face_detector = None
        if faces:
            from vitgender.faces import open_detector

            face_detector = open_detector(detector)
        sheet = SheetWriter(folder, explainer, method=method.value, faces=faces, min_confidence=min_confidence)
        with progress_bar("explaining") as advance:
            for item in explainer.stream(
                expand_inputs(paths),
                method.value,
                detector=face_detector,
                max_faces=max_faces,
                batch_size=batch_size,
                expected=expected,
            ):
                if item.error is not None:
                    failures += 1
                    error(f"{item.name}: {item.error}")
                sheet.add(item)
                advance()
        sheet.close(model or "embedded default model")
    typer.echo(f"{sheet.written} overlays and {out / 'index.html'} written ({failures} inputs failed)")
    if failures:
        raise typer.Exit(2)

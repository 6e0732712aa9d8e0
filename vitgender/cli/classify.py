"""`vitgender classify`: images in, one streamed result per input out."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from vitgender.cli.app import app
from vitgender.cli.common import MODEL_HELP, RUNTIME_HELP, closed_pipe_ends_quietly, error, progress_bar
from vitgender.cli.output import OutputFormat, ResultWriter, atomic_output


def _batch_size(value: str) -> int | str:
    if value == "auto":
        return value
    if not value.isdigit() or int(value) < 1:
        raise typer.BadParameter("a positive integer or 'auto'")
    return int(value)


@app.command()
def classify(
    paths: list[str] = typer.Argument(..., metavar="IMAGES", help="Image files, folders (recursive) or glob patterns."),
    model: Optional[str] = typer.Option(None, "--model", "-m", metavar="MODEL", help=MODEL_HELP),
    runtime: Optional[str] = typer.Option(None, metavar="RUNTIME", help=RUNTIME_HELP),
    batch_size: str = typer.Option("8", "--batch-size", "-b", metavar="N", help="Images per forward pass, or 'auto' (from free memory)."),
    top_k: Optional[int] = typer.Option(None, "--top-k", "-k", metavar="N", min=1, help="Keep the K best labels (default: all)."),
    fmt: OutputFormat = typer.Option(OutputFormat.jsonl, "--format", "-f", help="jsonl (one object per input), csv or json."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", metavar="FILE", help="Write here instead of stdout (atomically)."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Accept .bin/.pt weights (loaded weights_only)."),
    min_confidence: Optional[float] = typer.Option(None, metavar="X", min=0.0, max=1.0, help="Answers whose top score is below "
                                                   "this start with the label 'uncertain' (scored with that top "
                                                   "score), followed by the ranked labels."),
    faces: bool = typer.Option(False, "--faces", help="Face-first: detect faces, classify each crop, return boxes."),
    detector: str = typer.Option("haar", metavar="NAME", help="Face detector for --faces: haar (default, best measured recall) or blazeface (faster)."),
    max_faces: int = typer.Option(20, metavar="N", min=1, help="With --faces, classify at most this many faces per image."),
) -> None:
    """Classify images in batches, streaming one result per input.

    A bad input never aborts the run: it gets an error record and a stderr line, and the exit
    code is 2 if any input failed, 0 otherwise.
    """
    from vitgender.classify import auto_batch_size, load_classifier
    from vitgender.inputs import expand_inputs
    from vitgender.runtimes import runtime_for

    size = _batch_size(batch_size)
    classifier = load_classifier(model, runtime=runtime or runtime_for(model), allow_pickle=allow_pickle)
    from vitgender.faces import FaceCropHint, open_detector

    face_detector = open_detector(detector) if faces else None
    hint = None if faces else FaceCropHint(lambda line: error(line))
    if size == "auto":
        size = auto_batch_size(classifier.runner)
    failures = 0
    with closed_pipe_ends_quietly(), atomic_output(output) as handle, progress_bar("classifying") as advance:
        writer = ResultWriter(fmt, handle)
        for result in classifier.stream(expand_inputs(paths), batch_size=size, top_k=top_k,
                                        min_confidence=min_confidence, detector=face_detector, max_faces=max_faces,
                                        inspect=hint):
            if result.error is not None:
                failures += 1
                error(f"{result.image}: {result.error}")
            writer.write(result.to_dict())
            advance()
        writer.close()
    if hint is not None:
        hint.finish()
    if failures:
        raise typer.Exit(2)

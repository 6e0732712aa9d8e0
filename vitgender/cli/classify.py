"""`vitgender classify`: images in, one streamed result per input out."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from vitgender.cli.app import app
from vitgender.cli.common import (
    ALPHA_HELP,
    MODEL_HELP,
    PICKLE_HELP,
    RUNTIME_HELP,
    TTA_HELP,
    AlphaPolicy,
    closed_pipe_ends_quietly,
    error,
    only_with,
    progress_bar,
)
from vitgender.cli.result_writers import OutputFormat, ResultWriter
from vitgender.output_folders import atomic_file


def _batch_size(value: str) -> int | str:
    if value == "auto":
        return value
    if not value.isdigit() or int(value) < 1:
        raise typer.BadParameter("a positive integer or 'auto'")
    return int(value)


@app.command()
def classify(
    ctx: typer.Context,
    paths: list[str] = typer.Argument(
        ...,
        metavar="IMAGES",
        help="Image files, folders (recursive) or glob patterns; "
        "with --ray also URIs (s3://, gs://, file://) and path lists (.txt, or a "
        ".csv/.parquet column).",
    ),
    model: Optional[str] = typer.Option(None, "--model", "-m", metavar="MODEL", help=MODEL_HELP),
    runtime: Optional[str] = typer.Option(None, metavar="RUNTIME", help=RUNTIME_HELP),
    batch_size: Optional[str] = typer.Option(
        None,
        "--batch-size",
        "-b",
        metavar="N",
        help="Images per forward pass " "(default 8; 64 with --ray), or 'auto' (from free memory).",
    ),
    top_k: Optional[int] = typer.Option(
        None, "--top-k", "-k", metavar="N", min=1, help="Keep the K best labels (default: all)."
    ),
    fmt: Optional[OutputFormat] = typer.Option(
        None,
        "--format",
        "-f",
        help="jsonl (one object per input; the default), "
        "csv or json; with --ray: parquet (the default) or jsonl shards.",
    ),
    output: Optional[str] = typer.Option(
        None,
        "--output",
        "-o",
        metavar="FILE",
        help="Write here instead of stdout " "(atomically); with --ray, the folder (or URI) of the result shards.",
    ),
    tta: str = typer.Option("none", metavar="MODE", help=TTA_HELP),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help=PICKLE_HELP),
    alpha: Optional[AlphaPolicy] = typer.Option(None, "--alpha", metavar="POLICY", help=ALPHA_HELP),
    min_confidence: Optional[float] = typer.Option(
        None,
        metavar="X",
        min=0.0,
        max=1.0,
        help="Answers whose top score is below "
        "this start with the label 'uncertain' (scored with that top "
        "score), followed by the ranked labels.",
    ),
    faces: bool = typer.Option(False, "--faces", help="Face-first: detect faces, classify each crop, return boxes."),
    detector: str = typer.Option(
        "haar",
        metavar="NAME",
        help="Face detector for --faces: haar (default, best measured recall) or blazeface (faster).",
    ),
    max_faces: int = typer.Option(
        20, metavar="N", min=1, help="With --faces, classify at most this many faces per image."
    ),
    ray: bool = typer.Option(
        False,
        "--ray",
        help="Scale out on Ray Data: decode in CPU tasks, infer in an actor "
        "pool, write sharded results to --output DIR.",
    ),
    ray_address: Optional[str] = typer.Option(
        None,
        metavar="ADDRESS",
        help="With --ray: 'auto' or HOST:PORT of a " "running cluster (default: start a local one).",
    ),
    actors_per_node: int = typer.Option(1, metavar="N", min=1, help="With --ray: model actors per node."),
    num_cpus_per_actor: float = typer.Option(
        1.0,
        metavar="X",
        min=0.1,
        help="With --ray: CPUs each actor reserves " "(its runtime's thread count, rounded up).",
    ),
    resume: bool = typer.Option(
        False, "--resume", help="With --ray: skip inputs whose results are already in a " "committed shard of --output."
    ),
    path_column: str = typer.Option(
        "path", metavar="NAME", help="With --ray: the column of paths in a CSV/Parquet " "input list."
    ),
    rows_per_shard: int = typer.Option(10_000, metavar="N", min=1, help="With --ray: results per output shard."),
) -> None:
    """Classify images in batches, streaming one result per input.

    A bad input never aborts the run: it gets an error record and a stderr line, and the exit
    code is 2 if any input failed, 0 otherwise.
    """
    alpha = alpha.value if alpha is not None else None
    from vitgender.runtimes import runtime_for

    runtime = runtime or runtime_for(model)
    only_with(
        ctx,
        ray,
        "--ray",
        "ray_address",
        "actors_per_node",
        "num_cpus_per_actor",
        "resume",
        "path_column",
        "rows_per_shard",
    )
    only_with(ctx, faces, "--faces", "detector", "max_faces")
    only_with(ctx, runtime == "torch", f"PyTorch checkpoints (not the {runtime} runtime)", "allow_pickle")
    only_with(
        ctx, ray or not faces, "whole images or --ray (with --faces, each image's faces form one batch)", "batch_size"
    )
    only_with(
        ctx,
        not ray or batch_size != "auto",
        "one machine ('auto' reads this machine's free memory; give " "--ray a number)",
        "batch_size",
    )
    size = _batch_size(batch_size or ("64" if ray else "8"))
    if ray:
        from vitgender.batch.ray_classify import RayClassifyOptions

        if output is None:
            raise typer.BadParameter("--ray writes sharded results: give --output DIR", param_hint="--output")
        if fmt not in (None, OutputFormat.jsonl, OutputFormat.parquet):
            raise typer.BadParameter("with --ray: parquet or jsonl", param_hint="--format")
        options = RayClassifyOptions(
            address=ray_address,
            batch_size=64 if size == "auto" else size,
            actors_per_node=actors_per_node,
            num_cpus_per_actor=num_cpus_per_actor,
            output_format=(fmt or OutputFormat.parquet).value,
            rows_per_shard=rows_per_shard,
            resume=resume,
            path_column=path_column,
            top_k=top_k,
            min_confidence=min_confidence,
            faces=faces,
            detector=detector,
            max_faces=max_faces,
            tta=tta,
            alpha=alpha,
            allow_pickle=allow_pickle,
        )
        _classify_on_ray(paths, output, model, runtime, options)
        return
    if fmt is OutputFormat.parquet:
        raise typer.BadParameter(
            "parquet output is for --ray (sharded); choose jsonl, csv or json", param_hint="--format"
        )
    _classify_here(
        paths,
        model,
        runtime,
        size,
        top_k,
        fmt or OutputFormat.jsonl,
        Path(output) if output else None,
        allow_pickle,
        min_confidence,
        faces,
        detector,
        max_faces,
        tta,
        alpha,
    )


def _classify_on_ray(paths: list[str], output: str, model: str | None, runtime: str | None, options) -> None:
    from vitgender.batch.ray_classify import classify_on_ray
    from vitgender.cli.common import show_progress

    summary = classify_on_ray(
        paths, output, model=model, runtime=runtime, options=options, show_progress=show_progress(), on_error=error
    )
    typer.echo(summary.line(), err=True)
    if summary.errors:
        raise typer.Exit(2)


def _classify_here(
    paths: list[str],
    model: str | None,
    runtime: str,
    size: int | str,
    top_k: int | None,
    fmt: OutputFormat,
    output: Path | None,
    allow_pickle: bool,
    min_confidence: float | None,
    faces: bool,
    detector: str,
    max_faces: int,
    tta: str,
    alpha: str | None,
) -> None:
    from vitgender.classify import auto_batch_size, load_classifier
    from vitgender.inputs import expand_inputs

    with load_classifier(model, runtime=runtime, allow_pickle=allow_pickle, tta=tta, alpha=alpha) as classifier:
        from vitgender.faces import FaceCropHint, open_detector

        face_detector = open_detector(detector) if faces else None
        hint = None if faces else FaceCropHint(lambda line: error(line))
        if size == "auto":
            size = auto_batch_size(classifier.runner)
        failures = 0
        with closed_pipe_ends_quietly(), atomic_file(output) as handle, progress_bar("classifying") as advance:
            writer = ResultWriter(fmt, handle)
            for result in classifier.stream(
                expand_inputs(paths),
                batch_size=size,
                top_k=top_k,
                min_confidence=min_confidence,
                detector=face_detector,
                max_faces=max_faces,
                inspect=hint,
            ):
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

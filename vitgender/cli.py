"""The `vitgender` command. Each subcommand is a thin layer over the Python API.

Every user-caused failure is a `VitgenderError`: one line `vitgender: <what>: <why>` on stderr
and exit code 2 (1 is reserved for "ran fine, but a gate failed"), never a traceback.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import IO, Iterator, Optional

import typer

from vitgender import __version__
from vitgender.errors import UsageError, VitgenderError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Classify, verify, export and parity-check ViT image classifiers (default: the embedded female/male model).",
)

MODEL_HELP = "Checkpoint directory or hub id owner/name[@revision]; default: the embedded model."


def _error(message: str) -> None:
    typer.echo(f"vitgender: {message}", err=True)


def show_progress() -> bool:
    """Progress bars on an interactive terminal only; CI logs stay clean."""
    return sys.stderr.isatty() and not os.environ.get("CI")


@contextmanager
def progress_bar(description: str, total: int | None = None) -> Iterator:
    """Yields `advance(n)`; a rich progress bar on a terminal, a no-op elsewhere."""
    if not show_progress():
        yield lambda n=1: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vitgender {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """vitgender: ViT classifiers from checkpoint to phone, browser and server, with proof of parity."""


class OutputFormat(str, Enum):
    jsonl = "jsonl"
    csv = "csv"
    json = "json"


class _Writer:
    """Streams results in the chosen format; a file target is renamed into place at the end."""

    def __init__(self, fmt: OutputFormat, handle: IO[str]) -> None:
        self.fmt, self.handle, self.count = fmt, handle, 0
        if fmt is OutputFormat.csv:
            self.csv = csv.writer(handle)
            self.csv.writerow(["image", "face", "box", "rank", "label", "score", "uncertain", "error"])
        elif fmt is OutputFormat.json:
            handle.write("[")

    def write(self, record: dict) -> None:
        if self.fmt is OutputFormat.jsonl:
            self.handle.write(json.dumps(record) + "\n")
        elif self.fmt is OutputFormat.json:
            self.handle.write(("," if self.count else "") + "\n  " + json.dumps(record))
        elif "error" in record:
            self.csv.writerow([record["image"], "", "", "", "", "", "", record["error"]])
        else:
            groups = ([(i, " ".join(map(str, f["box"])), f) for i, f in enumerate(record["faces"])]
                      if "faces" in record else [("", "", record)])
            for face, box, item in groups:
                for rank, prediction in enumerate(item["predictions"], 1):
                    self.csv.writerow([record["image"], face, box, rank, prediction["label"],
                                       f"{prediction['score']:.6f}", item.get("uncertain", ""), ""])
        self.count += 1
        self.handle.flush()

    def close(self) -> None:
        if self.fmt is OutputFormat.json:
            self.handle.write("\n]\n" if self.count else "]\n")


@contextmanager
def _output(path: Optional[Path]) -> Iterator[IO[str]]:
    if path is None:
        yield sys.stdout
        return
    if path.parent and not path.parent.exists():
        raise UsageError(str(path), "output folder does not exist")
    partial = path.with_name(f".{path.name}.partial")
    try:
        with partial.open("w") as handle:
            yield handle
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def _batch_size(value: str) -> int | str:
    if value == "auto":
        return value
    if not value.isdigit() or int(value) < 1:
        raise typer.BadParameter("a positive integer or 'auto'")
    return int(value)


@app.command()
def classify(
    paths: list[str] = typer.Argument(..., help="Image files, folders (recursive) or glob patterns."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    runtime: Optional[str] = typer.Option(None, help="torch, onnx, tflite or savedmodel (default: by --model's type)."),
    batch_size: str = typer.Option("8", "--batch-size", "-b", help="Images per forward pass, or 'auto' (from free memory)."),
    top_k: Optional[int] = typer.Option(None, "--top-k", "-k", min=1, help="Keep the K best labels (default: all)."),
    fmt: OutputFormat = typer.Option(OutputFormat.jsonl, "--format", "-f", help="jsonl (one object per input), csv or json."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write here instead of stdout (atomically)."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Accept .bin/.pt weights (loaded weights_only)."),
    min_confidence: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="Mark answers whose top score is "
                                                   "below this as \"uncertain\": true instead of trusting the guess."),
    faces: bool = typer.Option(False, "--faces", help="Face-first: detect faces, classify each crop, return boxes."),
    detector: str = typer.Option("haar", help="Face detector for --faces: haar (default, best measured recall) or blazeface (faster)."),
    max_faces: int = typer.Option(20, min=1, help="With --faces, classify at most this many faces per image."),
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
    face_detector = None
    if faces:
        from vitgender.faces import open_detector

        face_detector = open_detector(detector)
    if size == "auto":
        size = auto_batch_size(classifier.runner)
    failures = 0
    with _output(output) as handle, progress_bar("classifying") as advance:
        writer = _Writer(fmt, handle)
        for result in classifier.stream(expand_inputs(paths), batch_size=size, top_k=top_k,
                                        min_confidence=min_confidence, detector=face_detector, max_faces=max_faces):
            if result.error is not None:
                failures += 1
                _error(f"{result.image}: {result.error}")
            writer.write(result.to_dict())
            advance()
        writer.close()
    if failures:
        raise typer.Exit(2)


@app.command()
def verify(
    directory: Path = typer.Argument(..., help="Checkpoint directory."),
    write: bool = typer.Option(False, "--write", help="Create or refresh SHA256SUMS instead of checking it."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Accept .bin/.pt weights."),
) -> None:
    """Check a checkpoint: SHA256SUMS, safetensors headers, config. Exit 0 only if all pass."""
    from vitgender import checkpoint

    if not directory.is_dir():
        raise UsageError(str(directory), "not a directory")
    if write:
        target = checkpoint.write_manifest(directory)
        typer.echo(f"wrote {target} ({len(checkpoint.read_manifest(directory))} files)")
        return
    if not (directory / checkpoint.MANIFEST).is_file():
        raise UsageError(str(directory), f"no {checkpoint.MANIFEST}; create one with 'vitgender verify --write'")
    files, config = checkpoint.check(directory, allow_pickle=allow_pickle)
    names = checkpoint.read_manifest(directory)
    typer.echo(f"OK {directory}: {len(names)} files match {checkpoint.MANIFEST}; "
               f"{len(files.weights)} weight file(s) valid; model_type={config['model_type']}, "
               f"labels={list(config['id2label'].values())}")


@app.command()
def train(
    data: Path = typer.Option(..., "--data", help="UTKFace-named folder, ImageFolder tree, CSV (path,label) or a pack .zip."),
    out: Path = typer.Option(..., "--out", help="Where to write the fine-tuned checkpoint directory."),
    image_size: int = typer.Option(140, help="Input resolution (multiple of 14); the model ships at it."),
    epochs: int = typer.Option(30, min=1),
    batch_size: int = typer.Option(128, min=1),
    lr: float = typer.Option(1e-4, help="Peak learning rate of the last block (earlier blocks decay by 0.75 per block)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    init: Optional[Path] = typer.Option(None, help="Start from this checkpoint instead of the imported DINOv2 backbone."),
    resume: bool = typer.Option(True, help="Continue from OUT.run/checkpoint.pt if present."),
    pack: Optional[Path] = typer.Option(None, help="Also write the resized data as a compact pack .zip (for another machine)."),
) -> None:
    """Fine-tune a ViT gender classifier (the recipe that built the default model)."""
    from vitgender.training.finetune import TrainConfig
    from vitgender.training.recipe import run_training

    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr)

    def rich_iter(items):
        with progress_bar("decoding", total=len(items)) as advance:
            for item in items:
                yield item
                advance()

    written = run_training(data, out, image_size=image_size, init=init, cfg=cfg, device=device,
                           resume=resume, pack=pack, progress=rich_iter, log=lambda m: typer.echo(m, err=True))
    typer.echo(f"wrote {written}")


@app.command("export")
def export_cmd(
    model: Optional[str] = typer.Argument(None, help=MODEL_HELP),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output directory (default artifacts/<model-name>/)."),
    formats: str = typer.Option("onnx", "--formats", help="Comma list of formats, or all / onnx-all / tf. "
                                "Formats: onnx, onnx-fp16, onnx-int8-dynamic, onnx-int8-static, savedmodel, tflite, "
                                "tflite-fp16, tflite-int8-dynamic, tflite-int8."),
    calibration: Optional[Path] = typer.Option(None, help="Image folder for int8 calibration (default: the bundled "
                                               "64 UTKFace training-split faces)."),
    calibration_method: str = typer.Option("minmax", help="ORT static int8 calibration: minmax, entropy or percentile."),
    quant_preset: str = typer.Option("safe", help="ORT static int8: 'safe' keeps LayerNorm/Softmax/GELU/residual "
                                     "adds in float, 'full' quantizes every op ORT can."),
    opset: int = typer.Option(20, min=17, help="ONNX opset (20+ keeps GELU a single op, which the TFLite path needs)."),
    tflite_int8_io: bool = typer.Option(False, help="Full-integer TFLite takes and returns int8 instead of float."),
) -> None:
    """Export a checkpoint to ONNX / ORT-quantized / SavedModel / TFLite artifacts with a manifest."""
    from vitgender.exporters import ExportOptions, main_export
    from vitgender.exporters.quantize import CALIBRATION_METHODS, PRESETS

    if calibration_method not in CALIBRATION_METHODS:
        raise UsageError(calibration_method, f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}")
    if quant_preset not in PRESETS:
        raise UsageError(quant_preset, f"quant preset must be one of {', '.join(PRESETS)}")
    options = ExportOptions(opset=opset, calibration_method=calibration_method, quant_preset=quant_preset,
                            tflite_int8_io=tflite_int8_io)
    if calibration is not None:
        options.calibration = calibration
    written = main_export(model, out, formats, options, on_step=lambda name: typer.echo(f"[export] {name}", err=True))
    from vitgender.exporters.manifest import read_manifest

    for entry in read_manifest(written)["artifacts"]:
        typer.echo(f"{entry['name']:<20} {entry['precision']:<13} {entry['bytes'] / 2**20:8.1f} MiB "
                   f"{entry['seconds']:7.1f} s  {entry['path']}")
    typer.echo(f"wrote {written}/manifest.json")


@app.command()
def validate(
    artifact_dir: Path = typer.Argument(..., help="A directory written by 'vitgender export' (has manifest.json)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="PyTorch reference (default: the manifest's model)."),
    images: Optional[Path] = typer.Option(None, help="Reference image folder (default: the bundled reference set)."),
    reference: Optional[str] = typer.Option(None, help="Name of a bundled reference set (default utkface-val-50)."),
    labels: str = typer.Option("auto", help="auto (UTKFace names / class folders), none, or a CSV path,label file."),
    budget: Optional[Path] = typer.Option(None, help="TOML/JSON overriding tolerance budgets per precision or artifact."),
    baseline: Optional[Path] = typer.Option(None, help="An earlier report.json: fail on drift beyond a margin."),
    write_baseline: Optional[Path] = typer.Option(None, help="Also save this run's report.json here as a baseline."),
    report_dir: Optional[Path] = typer.Option(None, help="Where report.json/.md/.html go (default ARTIFACT_DIR/validation)."),
    junit: Optional[Path] = typer.Option(None, help="Write JUnit XML (one testcase per artifact x check)."),
    only: Optional[str] = typer.Option(None, help="Comma list of artifact names to validate (default: all)."),
) -> None:
    """Prove every artifact matches PyTorch on the same images. Exit 0 pass, 1 parity regression, 2 usage error."""
    import json

    from vitgender.validators import parity, report as reports

    result = parity.validate(artifact_dir, model=model, images=images, reference=reference, labels=labels,
                             budget_file=budget, only=only.split(",") if only else None,
                             on_artifact=lambda name: typer.echo(f"[validate] {name}", err=True))
    if baseline is not None:
        try:
            parity.compare_baseline(result, json.loads(baseline.read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise UsageError(str(baseline), f"cannot read baseline ({exc})") from None
    written = reports.write_reports(result, report_dir or artifact_dir / "validation")
    if write_baseline is not None:
        write_baseline.parent.mkdir(parents=True, exist_ok=True)
        write_baseline.write_text(written["json"].read_text())
    if junit is not None:
        junit.write_text(reports.junit(result))
    typer.echo(reports.markdown(result))
    typer.echo(f"reports: {written['md']} {written['html']} {written['json']}", err=True)
    if not result["passed"]:
        raise typer.Exit(1)


@app.command()
def evaluate(
    model: Optional[str] = typer.Argument(None, help="Checkpoint, hub id, or an artifact (.onnx, .tflite, SavedModel dir)."),
    data: Path = typer.Option(..., "--data", help="Labelled images: UTKFace-named folder, ImageFolder tree or CSV."),
    runtime: Optional[str] = typer.Option(None, help="Force a runtime (torch, onnx, tflite, savedmodel); default: by file type."),
    split: str = typer.Option("all", help="all, or the project's fixed content-hash split: train or val."),
    min_age: Optional[int] = typer.Option(None, help="Only images whose age label is at least this."),
    min_confidence: Optional[float] = typer.Option(None, min=0.0, max=1.0,
                                                   help="Also report coverage/accuracy when answering only above this."),
    batch_size: int = typer.Option(16, min=1),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the full report as JSON."),
    html_out: Optional[Path] = typer.Option(None, "--html", help="Write a self-contained HTML page with charts."),
) -> None:
    """Accuracy with 95% CIs, calibration and per-group fairness on a labelled set."""
    import json

    from rich.console import Console

    from vitgender.evaluate import evaluate_samples, select
    from vitgender.runtimes import open_runner, runtime_for
    from vitgender.validators import fairness_report

    runner = open_runner(runtime or runtime_for(model), model)
    samples, skipped = select(data, split, min_age)
    with progress_bar("evaluating", total=len(samples)) as advance:
        report = evaluate_samples(runner, samples, skipped, min_confidence=min_confidence, batch_size=batch_size,
                                  advance=advance)
    report["data"] = {"source": str(data), "split": split, "min_age": min_age, "images": len(samples)}
    fairness_report.terminal(report, Console(stderr=False))
    if json_out is not None:
        json_out.write_text(json.dumps(report, indent=2) + "\n")
    if html_out is not None:
        html_out.write_text(fairness_report.html(report, f"vitgender evaluation: {runner.info.source}"))


@app.command()
def serve(
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP + " Or an artifact file."),
    runtime: Optional[str] = typer.Option(None, help="torch, onnx, tflite or savedmodel (default: by --model's type)."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind (0.0.0.0 exposes it to the network)."),
    port: int = typer.Option(8080, min=1, max=65535),
    max_batch_size: int = typer.Option(16, min=1, help="Most images per Runner call."),
    max_wait_ms: float = typer.Option(5.0, min=0, help="How long the first request of a batch waits for company."),
    max_queue: int = typer.Option(256, min=1, help="Images allowed to wait; beyond it requests get 429."),
    max_body_mb: float = typer.Option(2.0, min=0.01, help="Largest accepted request body (413 above)."),
    threads: Optional[int] = typer.Option(None, min=1, help="Intra-op threads for the runtime."),
    detector: str = typer.Option("haar", help="Face detector for requests with parameters.faces = true (haar or blazeface)."),
    max_faces: int = typer.Option(20, min=1, help="Most faces classified per image in face-first requests."),
    ray: bool = typer.Option(False, "--ray", help="Deploy on Ray Serve with autoscaling instead of one process."),
    ray_address: Optional[str] = typer.Option(None, help="Ray cluster address ('auto' to join a running cluster)."),
    min_replicas: int = typer.Option(1, min=0),
    max_replicas: int = typer.Option(4, min=1),
    target_ongoing_requests: float = typer.Option(4.0, min=0.1, help="Autoscaling target per replica."),
) -> None:
    """Serve the model over an HTTP API compatible with the HF Inference API (image-classification)."""
    from vitgender.runtimes import runtime_for

    chosen = runtime or runtime_for(model)
    if ray:
        import time

        import ray as ray_module
        from ray import serve as ray_serve

        from vitgender.serving.ray_app import RayServeOptions, build_app

        ray_module.init(address=ray_address, ignore_reinit_error=True)
        ray_serve.start(http_options={"host": host, "port": port})
        options = RayServeOptions(min_replicas=min_replicas, max_replicas=max_replicas,
                                  target_ongoing_requests=target_ongoing_requests, max_batch_size=max_batch_size,
                                  batch_wait_timeout_s=max_wait_ms / 1000)
        ray_serve.run(build_app(model, chosen, options, int(max_body_mb * 1024 * 1024), detector, max_faces),
                      route_prefix="/")
        typer.echo(f"Ray Serve deployment running on http://{host}:{port}/ (Ctrl-C to stop)", err=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            ray_serve.shutdown()
        return
    import uvicorn

    from vitgender.serving.app import ServeSettings, create_app

    settings = ServeSettings(model=model, runtime=chosen, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms,
                             max_queue=max_queue, max_body_bytes=int(max_body_mb * 1024 * 1024), threads=threads,
                             detector=detector, max_faces=max_faces)
    uvicorn.run(create_app(settings), host=host, port=port, log_level="warning", timeout_graceful_shutdown=30)


@app.command()
def bench(
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    artifacts: Optional[Path] = typer.Option(None, help="An export directory: benchmark every artifact in it too."),
    batch_sizes: str = typer.Option("1,8,32", help="Comma list of batch sizes."),
    threads: int = typer.Option(len(os.sched_getaffinity(0)), min=1, help="Threads for every runtime (equal for all)."),
    seconds: float = typer.Option(3.0, min=0.1, help="Timed seconds per candidate and batch size (after warm-up)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results (schema 1) as JSON."),
    plot: Optional[Path] = typer.Option(None, help="Write an SVG: images/s vs batch size, agreement vs speed."),
) -> None:
    """Throughput, latency, memory and size of PyTorch, the HF pipeline and every artifact, as ratios."""
    import json

    from vitgender.bench import plot_svg, run_benchmark, table

    try:
        sizes = [int(b) for b in batch_sizes.split(",") if b.strip()]
    except ValueError:
        raise UsageError(batch_sizes, "batch sizes must be a comma list of integers") from None
    if not sizes or min(sizes) < 1:
        raise UsageError(batch_sizes, "batch sizes must be positive")
    report = run_benchmark(model, artifacts, sizes, threads, seconds,
                           on_candidate=lambda name: typer.echo(f"[bench] {name}", err=True))
    m = report["machine"]
    typer.echo(f"machine: {m['cpu']}, {m['cores']} cores, ISA {' '.join(m['isa'])}, fp32 peak ~{m['peak_gflops']} "
               f"GFLOP/s ({m['peak_assumption']}); threads {report['threads']}; "
               f"{report['gflop_per_image']} GFLOP/image")
    typer.echo(table(report))
    if json_out is not None:
        json_out.write_text(json.dumps(report, indent=2) + "\n")
    if plot is not None:
        plot.write_text(plot_svg(report))


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    _error(f"warning: {message}")


def main() -> None:
    import warnings

    warnings.showwarning = _show_warning
    os.environ.setdefault("USE_TF", "0")  # transformers imports TensorFlow otherwise (slow, unused)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ log noise on every import
    try:
        app()
    except VitgenderError as exc:
        _error(str(exc))
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _error("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()

"""Batch classification that outgrows one machine: `vitgender classify --ray` on Ray Data.

The pipeline is the single-machine one cut at its natural seams:

    paths (driver) -> read + decode + resize (CPU tasks, uint8 numpy batches)
          -> Runner.run (an actor pool; each actor opens the model once)
          -> rank/uncertainty (driver) -> whole shards (`vitgender.batch.shards`)

Images cross the object store as resized uint8 arrays (3 x 140 x 140 bytes each), never as PIL
objects or Python lists; what reaches the driver is one score row per image, so one driver can
write the results of a large cluster. Any runtime the Runner registry opens works (PyTorch,
ONNX, TFLite, SavedModel, ExecuTorch), because the actor only calls `open_runner` and `run`.
A bad input becomes an `error` row (same text as `vitgender classify`); it never fails the job.

Multi-node: the vitgender package must be installed on every node and `--model` must be a
path every node can read (shared storage or the same path), or omitted (the embedded model).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from vitgender.batch.shards import ShardSink
from vitgender.errors import ImageError, UsageError
from vitgender.inputs import IMAGE_SUFFIXES, expand_inputs
from vitgender.preprocess import DEFAULT_MAX_PIXELS, PreprocessConfig, Preprocessor
from vitgender.scoring import Result, apply_function, rank, with_uncertainty

LIST_SUFFIXES = (".txt", ".csv", ".parquet")


@dataclass
class RayClassifyOptions:
    address: str | None = None  # None: start a local Ray; "auto" or HOST:PORT: join a cluster
    batch_size: int = 64  # images per Runner call inside an actor
    actors_per_node: int = 1
    num_cpus_per_actor: float = 1.0  # also the actor's runtime thread count (rounded up)
    # Logical CPUs a decode task reserves. 0: the actors own the cores and decoding (a few percent
    # of the work) runs beside them. With 0.5, killing one of two 1-CPU nodes deadlocked the job: the
    # surviving node's CPU was held by an actor while lost decode outputs waited to be recomputed.
    decode_cpus: float = 0.0
    decode_tasks_per_node: int = 2  # concurrency cap for the decode tasks (they reserve no CPU)
    output_format: str = "parquet"
    rows_per_shard: int = 10_000
    resume: bool = False
    path_column: str = "path"  # the column of paths in a CSV/Parquet input list
    top_k: int | None = None
    function_to_apply: str = "softmax"
    min_confidence: float | None = None
    faces: bool = False
    detector: str = "haar"
    max_faces: int = 20
    max_pixels: int = DEFAULT_MAX_PIXELS
    tta: str | None = None  # "flip": horizontal-flip test-time averaging in every actor
    alpha: str | None = None  # replaces the model's alpha policy (white, black, drop)
    allow_pickle: bool = False  # PyTorch checkpoints with .bin/.pt weights, in the driver and every actor

    def runner_options(self) -> dict:
        """What `open_runner` takes, the same in the driver and in every actor."""
        return {"tta": self.tta, "alpha": self.alpha, **({"allow_pickle": True} if self.allow_pickle else {})}


@dataclass
class RaySummary:
    images: int  # rows written by this run
    errors: int
    skipped: int  # already committed by an earlier run (--resume)
    seconds: float
    nodes: int
    actors: int
    shards: list[str] = field(default_factory=list)
    startup_seconds: float = 0.0  # until the first results reached the driver (Ray, actors, model loads)
    first_batch: int = 0  # images in those first results

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

    @property
    def steady_images_per_second(self) -> float:
        """After start-up: what a long job runs at (the end-to-end figure includes the fixed start-up)."""
        running = self.seconds - self.startup_seconds
        return (self.images - self.first_batch) / running if running > 0 else 0.0

    def line(self) -> str:
        return (
            f"classified {self.images} images ({self.errors} errors, {self.skipped} skipped as done) "
            f"in {self.seconds:.1f} s: {self.images_per_second:.1f} images/s on {self.nodes} node(s), "
            f"{self.actors} actor(s)"
        )


# ---- inputs ------------------------------------------------------------------------------------


def _is_uri(spec: str) -> bool:
    return "://" in spec


def _listed(spec: str, column: str) -> Iterator[str | tuple[str, str]]:
    """Paths from a .txt (one per line), .csv or .parquet list; relative ones are relative to the list."""
    path = Path(spec)
    try:
        if path.suffix.lower() == ".txt":
            entries = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
        elif path.suffix.lower() == ".csv":
            rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig"), newline="")))
            if rows and column not in rows[0]:
                yield spec, f"no column '{column}' (columns: {', '.join(rows[0])}); choose one with --path-column"
                return
            entries = [row[column] for row in rows]
        else:
            import pyarrow.parquet as pq

            table = pq.read_table(str(path))
            if column not in table.column_names:
                yield (
                    spec,
                    (
                        f"no column '{column}' (columns: {', '.join(table.column_names)}); "
                        "choose one with --path-column"
                    ),
                )
                return
            entries = [str(v) for v in table.column(column).to_pylist() if v is not None]
    except (UnicodeDecodeError, csv.Error, OSError, ValueError) as exc:
        yield spec, f"cannot read the list ({str(exc).splitlines()[0][:200]})"
        return
    for entry in entries:
        if entry:
            yield entry if _is_uri(entry) or Path(entry).is_absolute() else str(path.parent / entry)


def _remote(spec: str) -> Iterator[str | tuple[str, str]]:
    """A file or (recursively) a folder on any filesystem pyarrow understands."""
    from pyarrow import fs

    try:
        filesystem, root = fs.FileSystem.from_uri(spec)
        info = filesystem.get_file_info(root)
        scheme = spec.split("://", 1)[0]
        if info.type == fs.FileType.File:
            yield spec
        elif info.type == fs.FileType.Directory:
            found = sorted(
                f.path
                for f in filesystem.get_file_info(fs.FileSelector(root, recursive=True))
                if f.type == fs.FileType.File and Path(f.base_name).suffix.lower() in IMAGE_SUFFIXES
            )
            if not found:
                yield spec, "directory contains no images"
            for path in found:
                yield f"{scheme}://{path}" if scheme != "file" else f"file://{path}"
        else:
            yield spec, "no such file or directory"
    except (OSError, ValueError) as exc:
        yield spec, f"cannot list it ({str(exc).splitlines()[0][:200]})"


def list_inputs(specs: Iterable[str], path_column: str = "path") -> Iterator[str | tuple[str, str]]:
    """Image paths (or `(spec, why)` for a spec that failed) from files, folders, globs, URIs and
    lists of paths (.txt one per line, or a CSV/Parquet column)."""
    for spec in specs:
        if _is_uri(spec):
            yield from _remote(spec)
        elif Path(spec).suffix.lower() in LIST_SUFFIXES and Path(spec).is_file():
            yield from _listed(spec, path_column)
        else:
            yield from expand_inputs([spec])


def read_image_bytes(source: str) -> bytes | str:
    """A local path is returned as is (decode_image reads it and words its errors); a URI is read."""
    if not _is_uri(source):
        return source
    from pyarrow import fs

    filesystem, path = fs.FileSystem.from_uri(source)
    with filesystem.open_input_stream(path) as handle:
        return handle.read()


# ---- the Ray stages (run in Ray workers) ------------------------------------------------------


def _why(exc: ImageError | OSError) -> str:
    """The error text of an input row: `classify`'s words for an image, the OS reason for a read."""
    return exc.why if isinstance(exc, ImageError) else f"cannot read it ({exc.strerror or type(exc).__name__})"


def decode_batch(batch: dict[str, np.ndarray], preprocess: PreprocessConfig, max_pixels: int) -> dict[str, np.ndarray]:
    """Ray task: paths -> resized uint8 NHWC pixels, or an error string per path."""
    preprocessor = Preprocessor(preprocess)
    paths = batch["image"]
    pixels = np.zeros((len(paths), preprocess.height, preprocess.width, 3), dtype=np.uint8)
    errors = []
    for i, source in enumerate(paths):
        try:
            pixels[i] = preprocessor.load(read_image_bytes(str(source)), max_pixels)
            errors.append("")
        except (ImageError, OSError) as exc:
            errors.append(_why(exc))
    return {"image": paths, "pixels": pixels, "error": np.array(errors, dtype=object)}


class Predict:
    """Ray actor: one Runner per actor, loaded once; scores (NaN rows for errors) per batch."""

    def __init__(
        self, model: str | None, runtime: str, threads: int, function_to_apply: str, runner_options: dict | None = None
    ) -> None:
        from vitgender.runtimes import open_runner

        self.runner = open_runner(runtime, model, threads=threads, **(runner_options or {}))
        self.function_to_apply = function_to_apply

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from vitgender.runtimes import runner_input

        ok = np.array([not e for e in batch["error"]], dtype=bool)
        scores = np.full((len(ok), len(self.runner.info.labels)), np.nan, dtype=np.float32)
        if ok.any():
            logits = self.runner.run(runner_input(self.runner, batch["pixels"][ok]))
            scores[ok] = apply_function(logits, self.function_to_apply)
        return {"image": batch["image"], "error": batch["error"], "scores": scores}


class PredictFaces:
    """Ray actor for face-first mode: detection needs the full image, so decoding happens here."""

    def __init__(self, model: str | None, runtime: str, threads: int, options: RayClassifyOptions) -> None:
        from vitgender.classify import Classifier
        from vitgender.faces import open_detector
        from vitgender.runtimes import open_runner

        self.classifier = Classifier(
            open_runner(runtime, model, threads=threads, **options.runner_options()), max_pixels=options.max_pixels
        )
        self.detector = open_detector(options.detector)
        self.options = options

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        faces, errors = [], []
        o = self.options
        for source in batch["image"]:
            try:
                found = self.classifier.classify_faces(
                    read_image_bytes(str(source)),
                    self.detector,
                    max_faces=o.max_faces,
                    top_k=o.top_k,
                    function_to_apply=o.function_to_apply,
                    min_confidence=o.min_confidence,
                )[0]
                faces.append(json.dumps(found))
                errors.append("")
            except (ImageError, OSError) as exc:
                faces.append("")
                errors.append(_why(exc))
        return {
            "image": batch["image"],
            "error": np.array(errors, dtype=object),
            "faces": np.array(faces, dtype=object),
        }


# ---- the driver --------------------------------------------------------------------------------


def _rows(batch: dict[str, np.ndarray], labels: Sequence[str], options: RayClassifyOptions) -> Iterator[dict]:
    for i, image in enumerate(batch["image"]):
        if batch["error"][i]:
            yield Result(str(image), error=str(batch["error"][i])).to_dict()
        elif options.faces:
            yield Result(str(image), faces=json.loads(batch["faces"][i])).to_dict()
        else:
            ranked = rank(batch["scores"][i], labels, options.top_k)
            yield Result(str(image), predictions=with_uncertainty(ranked, options.min_confidence)).to_dict()


def _cpu_nodes(ray) -> list[dict]:
    return [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]


def _quiet_ray(show_progress: bool) -> None:
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = show_progress
    context.print_on_execution_start = False
    if not show_progress:  # also silences "Progress bars disabled" on every run
        logging.getLogger("ray.data").setLevel(logging.ERROR)


def classify_on_ray(
    inputs: Sequence[str],
    output: str | Path,
    *,
    model: str | None = None,
    runtime: str | None = None,
    options: RayClassifyOptions | None = None,
    show_progress: bool = False,
    on_error: Callable[[str], None] = lambda line: None,
) -> RaySummary:
    """Classify every input on a Ray cluster and write sharded results to `output`.

    Without `options.resume`, `output` must hold no committed shards (results are never mixed
    by accident); with it, inputs already in a committed shard are skipped (see `vitgender.batch.shards`).
    """
    import ray

    from vitgender.runtimes import read_metadata, runtime_for

    options = options or RayClassifyOptions()
    if options.batch_size < 1 or options.actors_per_node < 1 or options.num_cpus_per_actor <= 0:
        raise UsageError("--ray", "batch size, actors per node and CPUs per actor must be positive")
    runtime = runtime or runtime_for(model)
    began = time.perf_counter()
    sink = ShardSink(output, options.output_format, options.rows_per_shard)
    sink.discard_interrupted()
    if sink.committed() and not options.resume:
        raise UsageError(
            str(output),
            "already holds results; pass --resume to add the missing ones, or use an " "empty output directory",
        )
    done = sink.done_images() if options.resume else set()
    listed = list(list_inputs(inputs, options.path_column))
    failed = [item for item in listed if isinstance(item, tuple) and item[0] not in done]
    todo = list(dict.fromkeys(item for item in listed if isinstance(item, str) and item not in done))
    skipped = sum(1 for item in listed if (item[0] if isinstance(item, tuple) else item) in done)

    from vitgender.runtimes.tta import check_tta

    check_tta(options.tta)
    if options.allow_pickle and runtime != "torch":
        raise UsageError("--allow-pickle", f"only with PyTorch checkpoints (not the {runtime} runtime)")
    # From the model's metadata; the actors open the runners.
    labels, preprocess = read_metadata(runtime, model, allow_pickle=options.allow_pickle)
    if options.alpha is not None:
        preprocess = replace(preprocess, alpha=options.alpha)
    for spec, why in failed:
        on_error(f"{spec}: {why}")
    sink.add(Result(spec, error=why).to_dict() for spec, why in failed)
    errors = len(failed)

    ray.init(
        address=options.address,
        ignore_reinit_error=True,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    _quiet_ray(show_progress)
    nodes = _cpu_nodes(ray)
    actors = options.actors_per_node * max(1, len(nodes))
    threads = max(1, math.ceil(options.num_cpus_per_actor))
    startup, first_batch = 0.0, 0
    if todo:
        import pyarrow as pa

        # One block per batch: blocks are Ray Data's unit of parallelism and of streaming, so a single
        # block would be decoded by one task and reach the driver only when all of it is done.
        step = options.batch_size
        dataset = ray.data.from_arrow([pa.table({"image": todo[i : i + step]}) for i in range(0, len(todo), step)])
        if not options.faces:
            dataset = dataset.map_batches(
                decode_batch,
                fn_kwargs={"preprocess": preprocess, "max_pixels": options.max_pixels},
                batch_size=options.batch_size,
                batch_format="numpy",
                num_cpus=options.decode_cpus,
                concurrency=options.decode_tasks_per_node * max(1, len(nodes)),
            )
            predictor, arguments = (
                Predict,
                (model, runtime, threads, options.function_to_apply, options.runner_options()),
            )
        else:
            predictor, arguments = PredictFaces, (model, runtime, threads, options)
        dataset = dataset.map_batches(
            predictor,
            fn_constructor_args=arguments,
            batch_size=options.batch_size,
            batch_format="numpy",
            num_cpus=options.num_cpus_per_actor,
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors),
        )
        for batch in dataset.iter_batches(batch_format="numpy", batch_size=None):
            rows = list(_rows(batch, labels, options))
            if not startup:
                startup, first_batch = time.perf_counter() - began, len(rows)
            for row in rows:
                if "error" in row:
                    errors += 1
                    on_error(f"{row['image']}: {row['error']}")
            sink.add(rows)
    sink.commit()
    return RaySummary(
        images=sink.rows,
        errors=errors,
        skipped=skipped,
        seconds=time.perf_counter() - began,
        nodes=len(nodes),
        actors=actors,
        shards=sink.committed(),
        startup_seconds=startup,
        first_batch=first_batch,
    )

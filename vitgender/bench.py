"""`vitgender bench`: throughput, latency, memory, size and agreement of every runtime, as ratios.

Each candidate runs in its own child process (so peak RSS and load time are its own), with the
same thread count, on the same random pixel batches; every number is measured in one run on
this machine, nothing is assumed or copied from another report:
- the machine's fp32/fp16/int8 GEMM roofs (`vitgender.roofs`), and each row's achieved GOP/s as a
  share of the roof for the arithmetic it really computes in;
- each candidate's top-1 agreement with PyTorch on the bundled reference faces, PyTorch and the
  transformers pipeline included (computed, so a pipeline that drifts shows it).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitgender.machine import machine
from vitgender.precision import Precision
from vitgender.runtimes import parse_runtime
from vitgender.runtimes.profiling import breakdown, kind_shares
from vitgender.toolchains.processes import child_env, job_main, run_job

SCHEMA = 3
PROFILED_RUNS = 3  # runs under the engine's profiler, after the timed ones


def arithmetic(runtime: str, precision: str) -> str:
    """The GEMM arithmetic a candidate runs, whose roof it is judged against.

    int8 artifacts run uint8 x int8 GEMMs; PyTorch (and so the pipeline) runs a float16 model in
    float16; ORT and LiteRT run fp16 artifacts in fp32 on x86 (they upcast the weights). Each
    runtime declares which (`Runtime.fp16_arithmetic`); the transformers pipeline runs PyTorch.
    """
    from vitgender.runtimes import get_runtime

    if Precision(precision).is_int8:
        return "int8"
    if precision == Precision.BF16:  # a runtime's bf16 setting (OpenVINO's hint): bf16 GEMMs
        return "bf16"
    native = get_runtime("torch" if runtime == "pipeline" else runtime).fp16_arithmetic
    return "fp16" if precision == Precision.FP16 and native else "fp32"


def _rss_peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class _Opened:
    run: Callable[[np.ndarray], object]  # one timed batch
    answer: Callable[[dict], list[str]]  # top-1 label of each reference image
    bytes: int
    raw_input: bool  # takes resized uint8 NHWC instead of pixel_values
    precision: Precision  # what it really computes in
    close: Callable[[], None] = lambda: None
    # (op type, seconds) per engine op over some runs (`vitgender.runtimes.profiling`); None: no profiler
    op_times: Callable[[np.ndarray, int], list[tuple[str, float]]] | None = None


def _open(candidate: dict, threads: int) -> _Opened:
    from vitgender.runtimes import open_runner

    if candidate["runtime"] == "pipeline":
        import torch
        from PIL import Image
        from transformers import pipeline

        torch.set_num_threads(threads)
        pipe = pipeline("image-classification", model=candidate["path"], device="cpu")
        images = {}

        def run(pixels: np.ndarray):
            batch = len(pixels)
            if batch not in images:  # the pipeline decodes/preprocesses itself: feed it PIL images
                images[batch] = [
                    Image.fromarray((np.random.default_rng(i).random((200, 200, 3)) * 255).astype("uint8"))
                    for i in range(batch)
                ]
            return pipe(images[batch], batch_size=batch)

        def answer(reference: dict) -> list[str]:
            images = [Image.open(p).convert("RGB") for p in reference["images"]]
            return [top[0]["label"] for top in pipe(images, top_k=1)]

        # what the pipeline really computes in (it follows the config's dtype, else the stored weights')
        computes_in = Precision.FP16 if pipe.model.dtype == torch.float16 else Precision.FP32
        return _Opened(run, answer, _size(Path(candidate["path"]) / "model.safetensors"), False, computes_in)
    runner = open_runner(candidate["runtime"], candidate["path"], threads=threads, tta=candidate.get("tta"))

    def answer(reference: dict) -> list[str]:
        logits = runner.run(np.load(reference["resized" if runner.info.raw_input else "pixels"]))
        return [runner.info.labels[i] for i in logits.argmax(1)]

    weights = Path(candidate["path"])
    if candidate["runtime"] == "torch":
        weights = weights / "model.safetensors"
    return _Opened(
        runner.run,
        answer,
        _size(weights),
        runner.info.raw_input,
        runner.info.computes_in,
        runner.close,
        getattr(runner, "op_times", None),
    )


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _worker(job: dict) -> dict:
    """Child process: measure the roofs, or load one candidate, answer the reference images, time each batch size."""
    if "roofs" in job:
        from vitgender.roofs import measure_roofs

        return measure_roofs(**job["roofs"])
    began = time.perf_counter()
    opened = _open(job["candidate"], job["threads"])
    load_seconds = time.perf_counter() - began
    run, raw = opened.run, opened.raw_input
    answers = opened.answer(job["reference"])
    shape = job["shape"]
    rows = []
    for batch in job["batch_sizes"]:
        rng = np.random.default_rng(batch)
        pixels = (
            rng.integers(0, 256, (batch, shape[1], shape[2], shape[0]), dtype=np.uint8)
            if raw
            else rng.normal(size=(batch, *shape)).astype(np.float32)
        )
        for _ in range(job["warmup"]):
            run(pixels)
        latencies = []
        stop = time.perf_counter() + job["seconds"]
        while time.perf_counter() < stop or len(latencies) < 3:
            t = time.perf_counter()
            run(pixels)
            latencies.append(time.perf_counter() - t)
        p50, p90 = float(np.median(latencies)), float(np.percentile(latencies, 90))
        rows.append(
            {
                "batch_size": batch,
                "p50_ms": round(p50 * 1000, 2),
                "p90_ms": round(p90 * 1000, 2),
                "images_per_s": round(batch / p50, 2),
                "runs": len(latencies),
            }
        )
    shares = None
    if opened.op_times is not None:  # where the time goes, at the largest batch (the last timed)
        shares = kind_shares(opened.op_times(pixels, PROFILED_RUNS))
    opened.close()
    return {
        "load_seconds": round(load_seconds, 2),
        "bytes": opened.bytes,
        "peak_rss_mb": round(_rss_peak_mb(), 1),
        "precision": opened.precision,
        "answers": answers,
        "rows": rows,
        "op_shares": shares,
    }


def candidates(model_dir: Path, artifacts: Path | None, tta: str | None = None, peers: bool = True) -> list[dict]:
    """PyTorch, the HF pipeline and every artifact, again in each other setting its runtime offers on
    this CPU (`NAME@inductor:precision=bf16`); with `tta`, each runner again wrapped in it
    (named `NAME+flip`), so the cost of test-time averaging is a ratio measured in the same run.

    With `peers`, each artifact again on every installed peer engine that reads its file, in the
    settings that engine's `Runtime.bench_settings` names for its precision (OpenVINO: fp32 and int8
    files, fp32 also with the bf16 hint where the CPU has bf16 arithmetic), named
    `NAME@RUNTIME[:SETTINGS]` and marked `peer`: another engine on the same file, not another artifact."""
    found = [
        {"name": "torch-eager", "runtime": "torch", "path": model_dir.absolute()},
        {"name": "transformers-pipeline", "runtime": "pipeline", "path": model_dir.absolute()},
    ]
    if artifacts is not None:
        from vitgender.manifest import read_manifest, verify_artifact
        from vitgender.runtimes import peer_runtimes, runtime_for, setting_runtimes

        for entry in read_manifest(artifacts)["artifacts"]:
            path = verify_artifact(artifacts, entry)
            file = {"path": path.absolute(), "sha256": entry.get("sha256")}
            found.append({"name": entry["name"], "runtime": runtime_for(path), **file})
            found += [
                {"name": f"{entry['name']}@{spec}", "runtime": spec, **file}
                for spec in setting_runtimes(path, Precision(entry["precision"]))
            ]
            if peers:
                found += [
                    {"name": f"{entry['name']}@{spec}", "runtime": spec, **file, "peer": True}
                    for spec in peer_runtimes(path, Precision(entry["precision"]))
                ]
    if tta in (None, "none"):
        return found
    return found + [
        {**c, "name": f"{c['name']}+{tta}", "tta": tta}
        for c in found
        if c["runtime"] != "pipeline" and not c.get("peer")
    ]


def _in_child(label: str, job: dict, threads: int) -> dict:
    """Run one worker job in a fresh process (its own RSS, no state shared between candidates)."""
    env = child_env(OMP_NUM_THREADS=str(threads), CUDA_VISIBLE_DEVICES="")
    return run_job("vitgender.bench", job, what=f"{label}: benchmark worker failed", env=env)


def _reference(ckpt, folder: Path, work: Path) -> dict:
    """The bundled reference faces, decoded once, as every kind of runner takes them (files the workers load)."""
    from vitgender.inputs import IMAGE_SUFFIXES
    from vitgender.preprocess import Preprocessor, decode_image

    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    pre = Preprocessor(ckpt.preprocess)
    resized = np.stack([pre.resize(decode_image(p)) for p in images])
    np.save(work / "resized.npy", resized)
    np.save(work / "pixels.npy", pre.normalize(resized))
    return {
        "images": [str(p) for p in images],
        "resized": str(work / "resized.npy"),
        "pixels": str(work / "pixels.npy"),
    }


def run_benchmark(
    model: str | None,
    artifacts: Path | None,
    batch_sizes: list[int],
    threads: int,
    seconds: float,
    on_candidate: Callable[[str], None] = lambda name: None,
    roof_seconds: float = 1.0,
    tta: str | None = None,
    peers: bool = True,
) -> dict:
    from vitgender import checkpoint
    from vitgender.validators.parity import DEFAULT_REFERENCE, REFERENCE_ROOT

    ckpt = checkpoint.open_checkpoint(model)
    model_dir, pre, arch = ckpt.directory, ckpt.preprocess, ckpt.architecture
    flops = arch.flops(pre.height, pre.width)
    on_candidate("roofs: GEMMs per arithmetic")
    roofs = _in_child(
        "roofs",
        {
            "roofs": {
                "hidden": arch.hidden_size,
                "intermediate": arch.intermediate_size,
                "tokens": arch.tokens(pre.height, pre.width),
                "batch": max(batch_sizes),
                "threads": threads,
                "seconds": roof_seconds,
            }
        },
        threads,
    )
    results, answers = [], {}
    with tempfile.TemporaryDirectory(prefix="vitgender-bench-") as work:
        reference = _reference(ckpt, REFERENCE_ROOT / DEFAULT_REFERENCE, Path(work))
        for candidate in candidates(model_dir, artifacts, tta, peers):
            on_candidate(candidate["name"])
            job = {
                "candidate": candidate,
                "threads": threads,
                "batch_sizes": batch_sizes,
                "seconds": seconds,
                "warmup": 2,
                "shape": [arch.num_channels, pre.height, pre.width],
                "reference": reference,
            }
            measured = _in_child(candidate["name"], job, threads)
            answers[candidate["name"]] = measured["answers"]
            compute = arithmetic(candidate["runtime"], measured["precision"])
            passes = 2 if candidate.get("tta") == "flip" else 1  # each image runs twice, mirrored
            largest, profiled = max(batch_sizes), measured["op_shares"]
            for row in measured["rows"]:
                gflops = row["images_per_s"] * passes * flops / 1e9
                roof = roofs["roofs"][compute]["gops"]
                shares = profiled if row["batch_size"] == largest else None  # profiled at the largest batch
                results.append(
                    {
                        "name": candidate["name"],
                        "runtime": candidate["runtime"],
                        "peer": candidate.get("peer", False),
                        **({"sha256": candidate["sha256"]} if candidate.get("sha256") else {}),
                        "precision": measured["precision"],
                        "arithmetic": compute,
                        **row,
                        "peak_rss_mb": measured["peak_rss_mb"],
                        "load_seconds": measured["load_seconds"],
                        "bytes": measured["bytes"],
                        "gflops": round(gflops, 2),
                        "pct_of_roof": round(100 * gflops / roof, 1),
                        "breakdown": breakdown(
                            shares,
                            1000 / row["images_per_s"],
                            1000 * passes * flops / (roof * 1e9),
                            parse_runtime(candidate["runtime"])[0] if shares else None,
                        ),
                    }
                )
    baseline = {r["batch_size"]: r["images_per_s"] for r in results if r["name"] == "torch-eager"}
    torch_answers = answers["torch-eager"]
    for r in results:
        r["ratio_vs_torch"] = round(r["images_per_s"] / baseline[r["batch_size"]], 3)
        same = [a == b for a, b in zip(answers[r["name"]], torch_answers, strict=True)]
        r["top1_agreement"] = round(sum(same) / len(same), 4)
    return {
        "schema": SCHEMA,
        "machine": machine(),
        "threads": threads,
        "model": str(model_dir),
        "gflop_per_image": round(flops / 1e9, 3),
        "roofs": roofs,
        "reference": {"set": DEFAULT_REFERENCE, "images": len(torch_answers)},
        "results": results,
    }


if __name__ == "__main__":
    job_main(_worker)

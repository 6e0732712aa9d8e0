"""`vitgender bench`: throughput, latency, memory and size of every runtime, as ratios to PyTorch.

Each candidate runs in its own child process (so peak RSS and load time are its own), with the
same thread count, on the same random pixel batches; every number is measured in one run on
this machine. Achieved GFLOP/s is compared with the machine's fp32 peak, estimated from the
detected ISA (FMA width), core count and clock, and stated as an estimate.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from vitgender.errors import ExitCode, ToolchainError, UsageError, VitgenderError
from vitgender.precision import Precision
from vitgender.processes import child_env, die_with_parent

SCHEMA = 1


def available_cores() -> int:
    """CPUs this process may run on (the affinity mask where the OS has one, else all)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity API
        return os.cpu_count() or 1


def machine() -> dict:
    info = {"cpu": platform.processor() or "unknown", "cores": available_cores(), "isa": [],
            "mhz": None}
    try:
        text = Path("/proc/cpuinfo").read_text()
        model = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
        flags = set((re.search(r"^flags\s*:\s*(.+)$", text, re.M) or [None, ""])[1].split())
        mhz = re.search(r"^cpu MHz\s*:\s*([\d.]+)$", text, re.M)
        info["cpu"] = model[1].strip() if model else info["cpu"]
        info["isa"] = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8")
                       if f in flags]
        info["mhz"] = float(mhz[1]) if mhz else None
    except OSError:
        pass
    lanes = 16 if "avx512f" in info["isa"] else 8 if "avx2" in info["isa"] else 4
    # Two FMA pipes per core (true of the Xeon/EPYC server cores this runs on); a vCPU counts as a core.
    flops_per_cycle = lanes * 2 * 2
    if info["mhz"]:
        info["peak_gflops"] = round(info["cores"] * info["mhz"] / 1000 * flops_per_cycle, 1)
    else:
        info["peak_gflops"] = None
    info["peak_assumption"] = (f"{info['cores']} cores x {info['mhz']} MHz x {flops_per_cycle} fp32 FLOP/cycle "
                               f"({lanes}-lane FMA, 2 pipes)")
    return info


def _rss_peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _open(candidate: dict, threads: int):
    """(run(pixels) -> Any, bytes on disk, takes raw uint8 NHWC, precision it computes in) for one candidate."""
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
                images[batch] = [Image.fromarray((np.random.default_rng(i).random((200, 200, 3)) * 255).astype("uint8"))
                                 for i in range(batch)]
            return pipe(images[batch], batch_size=batch)

        # what the pipeline really computes in (it follows the config's dtype, else the stored weights')
        computes_in = Precision.FP16 if pipe.model.dtype == torch.float16 else Precision.FP32
        return run, _size(Path(candidate["path"]) / "model.safetensors"), False, computes_in
    runner = open_runner(candidate["runtime"], candidate["path"], threads=threads)
    weights = Path(candidate["path"]) / "model.safetensors" if candidate["runtime"] == "torch" else Path(candidate["path"])
    return runner.run, _size(weights), runner.info.raw_input, runner.info.precision


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _worker(job: dict) -> dict:
    """Child process: load one candidate, time it at each batch size."""
    began = time.perf_counter()
    run, size, raw, precision = _open(job["candidate"], job["threads"])
    load_seconds = time.perf_counter() - began
    shape = job["shape"]
    rows = []
    for batch in job["batch_sizes"]:
        rng = np.random.default_rng(batch)
        pixels = (rng.integers(0, 256, (batch, shape[1], shape[2], shape[0]), dtype=np.uint8) if raw
                  else rng.normal(size=(batch, *shape)).astype(np.float32))
        for _ in range(job["warmup"]):
            run(pixels)
        latencies = []
        stop = time.perf_counter() + job["seconds"]
        while time.perf_counter() < stop or len(latencies) < 3:
            t = time.perf_counter()
            run(pixels)
            latencies.append(time.perf_counter() - t)
        p50, p90 = float(np.median(latencies)), float(np.percentile(latencies, 90))
        rows.append({"batch_size": batch, "p50_ms": round(p50 * 1000, 2), "p90_ms": round(p90 * 1000, 2),
                     "images_per_s": round(batch / p50, 2), "runs": len(latencies)})
    return {"load_seconds": round(load_seconds, 2), "bytes": size, "peak_rss_mb": round(_rss_peak_mb(), 1),
            "precision": precision, "rows": rows}


def candidates(model_dir: Path, artifacts: Path | None) -> list[dict]:
    found = [{"name": "torch-eager", "runtime": "torch", "path": str(model_dir)},
             {"name": "transformers-pipeline", "runtime": "pipeline", "path": str(model_dir)}]
    if artifacts is not None:
        from vitgender.exporters.manifest import read_manifest, verify_artifact
        from vitgender.runtimes import runtime_for

        for entry in read_manifest(artifacts)["artifacts"]:
            path = verify_artifact(artifacts, entry)
            found.append({"name": entry["name"], "runtime": runtime_for(path), "path": str(path)})
    return found


def run_benchmark(model: str | None, artifacts: Path | None, batch_sizes: list[int], threads: int,
                  seconds: float, on_candidate=lambda name: None) -> dict:
    from vitgender import checkpoint

    ckpt = checkpoint.open_checkpoint(model)
    model_dir, pre = ckpt.directory, ckpt.preprocess
    flops = ckpt.architecture.flops(pre.height, pre.width)
    info = machine()
    agreement = {}
    report_path = artifacts / "validation" / "report.json" if artifacts else None
    if report_path and report_path.is_file():
        agreement = {a["name"]: a["metrics"]["top1_agreement"] for a in json.loads(report_path.read_text())["artifacts"]}
    results = []
    for candidate in candidates(model_dir, artifacts):
        on_candidate(candidate["name"])
        job = {"candidate": candidate, "threads": threads, "batch_sizes": batch_sizes, "seconds": seconds,
               "warmup": 2, "shape": [3, pre.height, pre.width]}
        env = child_env(OMP_NUM_THREADS=str(threads), CUDA_VISIBLE_DEVICES="")
        try:
            proc = subprocess.run([sys.executable, "-m", "vitgender.bench", json.dumps(job)], capture_output=True,
                                  text=True, env=env)
        except OSError as exc:
            raise ToolchainError(candidate["name"], f"cannot start the benchmark worker ({exc.strerror})") from None
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
            # the worker exits 2 for input it refused (a corrupt artifact), anything else is a crash
            error = UsageError if proc.returncode == ExitCode.USAGE else ToolchainError
            raise error(candidate["name"], f"benchmark worker failed: {last.removeprefix('vitgender: ')[:300]}")
        measured = json.loads(proc.stdout.strip().splitlines()[-1])
        for row in measured["rows"]:
            results.append({"name": candidate["name"], "runtime": candidate["runtime"],
                            "precision": measured["precision"], **row, "peak_rss_mb": measured["peak_rss_mb"],
                            "load_seconds": measured["load_seconds"], "bytes": measured["bytes"],
                            "gflops": round(row["images_per_s"] * flops / 1e9, 2),
                            # measured by `vitgender validate`; None where no report has it (PyTorch itself)
                            "top1_agreement": agreement.get(candidate["name"])})
    baseline = {r["batch_size"]: r["images_per_s"] for r in results if r["name"] == "torch-eager"}
    for r in results:
        r["ratio_vs_torch"] = round(r["images_per_s"] / baseline[r["batch_size"]], 3)
        r["pct_of_peak"] = round(100 * r["gflops"] / info["peak_gflops"], 1) if info.get("peak_gflops") else None
    return {"schema": SCHEMA, "machine": info, "threads": threads, "model": str(model_dir),
            "gflop_per_image": round(flops / 1e9, 3), "results": results}


if __name__ == "__main__":
    die_with_parent()
    try:
        print(json.dumps(_worker(json.loads(sys.argv[1]))))
    except VitgenderError as exc:
        print(f"vitgender: {exc}", file=sys.stderr)
        sys.exit(int(exc.exit_code))

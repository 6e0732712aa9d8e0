"""`classify --ray` vs plain `classify` vs bare Runner inference, and 1 vs 2 Ray nodes, in one run.

    .venv/bin/python benchmarks/ray_scaling.py --images 2000 \
        --model artifacts/vitgender-default/model_int8_static.onnx --json artifacts/evaluations/ray_scaling.json

Everything is measured here, on the same images, one after another (ratios only mean something
within one run on one machine; the CPU model and flags are printed with them):
1. bare Runner: pixels already decoded and resized in memory, `runner.run` in batches;
2. plain `classify` (one process: decode + preprocess + Runner, batch 64);
3. `classify --ray` on a local one-node Ray (all cores), for two actor layouts;
4. `classify --ray` on a local two-node cluster (1 CPU each) — the nodes share this machine's
   cores, so this shows the job spreads and the output stays exact, not a speed-up;
5. the parts of a cost model for N machines: per-actor throughput (bare Runner at the actor's
   thread count), the driver's per-row cost (ranking + shard writing, measured alone) and the
   object-store cost of one batch of resized pixels (put + get).

Images: UTKFace crops from ../shared (non-commercial research licence) when present, else the
50 bundled reference faces repeated.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.local_ray_cluster import LocalCluster  # noqa: E402


def pick_images(count: int, workdir: Path) -> list[str]:
    shared = REPO.parent / "shared" / "data" / "utkface"
    found = sorted(shared.glob("*.jpg"))[:count] if shared.is_dir() else []
    if len(found) < count:  # repeat the bundled faces under distinct names
        bundled = sorted((REPO / "vitgender" / "reference" / "utkface-val-50").glob("*.jpg"))
        for i in range(count - len(found)):
            target = workdir / f"{i:06d}.jpg"
            target.write_bytes(bundled[i % len(bundled)].read_bytes())
            found.append(target)
    return [str(p) for p in found]


def timed(fn) -> tuple[float, object]:
    began = time.perf_counter()
    value = fn()
    return time.perf_counter() - began, value


def bare_runner(model: str, paths: list[str], threads: int, batch: int) -> float:
    from vitgender.preprocess import Preprocessor, decode_image
    from vitgender.runtimes import open_runner, runner_input, runtime_for

    runner = open_runner(runtime_for(model), model, threads=threads)
    pre = Preprocessor(runner.info.preprocess)
    pixels = runner_input(runner, np.stack([pre.resize(decode_image(p)) for p in paths]))
    runner.run(pixels[:batch])  # warm-up
    seconds, _ = timed(lambda: [runner.run(pixels[i : i + batch]) for i in range(0, len(pixels), batch)])
    return len(paths) / seconds


def plain_classify(model: str, paths: list[str], batch: int) -> dict:
    """End to end as the CLI runs it (model load included), and steady state after a warm-up."""
    from vitgender.classify import load_classifier
    from vitgender.runtimes import runtime_for

    def load_and_run():
        classifier = load_classifier(model, runtime=runtime_for(model))
        return classifier, list(classifier.stream(paths, batch_size=batch))

    end_to_end, (classifier, results) = timed(load_and_run)
    assert len(results) == len(paths)
    steady, _ = timed(lambda: list(classifier.stream(paths, batch_size=batch)))
    return {
        "end_to_end_images_per_s": round(len(paths) / end_to_end, 1),
        "steady_images_per_s": round(len(paths) / steady, 1),
    }


def on_ray(
    model: str,
    paths: list[str],
    out: Path,
    address: str | None,
    batch: int,
    actors_per_node: int,
    cpus_per_actor: float,
) -> dict:
    """Two runs on one Ray session (the first also starts Ray itself); the second is reported:
    end to end (listing, actor start-up and model loads included) and steady state after start-up."""
    import ray

    from vitgender.batch.ray_classify import RayClassifyOptions, classify_on_ray

    options = RayClassifyOptions(
        address=address, batch_size=batch, actors_per_node=actors_per_node, num_cpus_per_actor=cpus_per_actor
    )
    first = classify_on_ray(paths, out / "first", model=model, options=options)
    run = classify_on_ray(paths, out / "second", model=model, options=options)
    ray.shutdown()
    assert run.images == len(paths) and run.errors == 0
    return {
        "end_to_end_images_per_s": round(run.images_per_second, 1),
        "steady_images_per_s": round(run.steady_images_per_second, 1),
        "startup_s": round(run.startup_seconds, 2),
        "first_run_startup_s": round(first.startup_seconds, 2),
        "nodes": run.nodes,
        "actors": run.actors,
        "cpus_per_actor": cpus_per_actor,
        "seconds": round(run.seconds, 2),
    }


def driver_row_cost(labels: tuple[str, ...], rows: int, out: Path) -> float:
    """Seconds per result row on the driver: ranking a score row and writing it into Parquet shards."""
    from vitgender.batch.ray_classify import RayClassifyOptions, _rows
    from vitgender.batch.shards import ShardSink

    batch = {
        "image": np.array([f"/data/{i:08d}.jpg" for i in range(rows)], dtype=object),
        "error": np.array([""] * rows, dtype=object),
        "scores": np.random.default_rng(0).random((rows, len(labels))).astype(np.float32),
    }
    sink = ShardSink(out, "parquet", 10_000)
    seconds, _ = timed(lambda: (sink.add(_rows(batch, labels, RayClassifyOptions())), sink.commit()))
    return seconds / rows


def object_store_cost(batch: int, height: int, width: int) -> float:
    """Seconds per image to put a batch of resized uint8 pixels into the object store and get it back."""
    import ray

    ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    pixels = np.random.default_rng(0).integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
    ray.get(ray.put(pixels))
    repeats = 50
    seconds, _ = timed(lambda: [ray.get(ray.put(pixels.copy())) for _ in range(repeats)])
    ray.shutdown()
    return seconds / (repeats * batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(REPO / "artifacts" / "vitgender-default" / "model_int8_static.onnx"))
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from vitgender.machine import available_cores, machine
    from vitgender.runtimes import open_runner, runtime_for

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local throwaway clusters only
    cores = available_cores()
    work = Path(tempfile.mkdtemp(prefix="ray-bench-"))
    paths = pick_images(args.images, work)
    info = open_runner(runtime_for(args.model), args.model).info
    result: dict = {"machine": machine(), "model": args.model, "images": len(paths), "batch": args.batch}
    print(json.dumps(result["machine"]))
    result["bare_runner"] = {
        f"threads_{t}": round(bare_runner(args.model, paths, t, args.batch), 1) for t in (1, cores)
    }
    result["plain_classify"] = plain_classify(args.model, paths, args.batch)
    result["ray_local"] = [
        on_ray(args.model, paths, work / f"local-{a}", None, args.batch, a, cores / a) for a in (1, cores)
    ]
    cluster = LocalCluster()
    cluster.start(nodes=1)
    try:
        result["ray_one_node_1cpu"] = on_ray(args.model, paths, work / "n1", cluster.address, args.batch, 1, 1.0)
        cluster.add_node()
        result["ray_two_nodes_1cpu_each"] = on_ray(args.model, paths, work / "n2", cluster.address, args.batch, 1, 1.0)
    finally:
        cluster.stop()
    result["driver_seconds_per_row"] = driver_row_cost(info.labels, 20_000, work / "driver")
    result["object_store_seconds_per_image"] = object_store_cost(
        args.batch, info.preprocess.height, info.preprocess.width
    )
    best = max(result["ray_local"], key=lambda r: r["steady_images_per_s"])
    plain = result["plain_classify"]
    result["ratios"] = {
        "ray_vs_plain_classify_steady": round(best["steady_images_per_s"] / plain["steady_images_per_s"], 3),
        "ray_vs_plain_classify_end_to_end": round(
            best["end_to_end_images_per_s"] / plain["end_to_end_images_per_s"], 3
        ),
        "ray_vs_bare_runner_steady": round(best["steady_images_per_s"] / result["bare_runner"][f"threads_{cores}"], 3),
        "two_nodes_vs_one_node_steady": round(
            result["ray_two_nodes_1cpu_each"]["steady_images_per_s"]
            / result["ray_one_node_1cpu"]["steady_images_per_s"],
            3,
        ),
    }
    per_actor = result["bare_runner"]["threads_1"]
    result["model_for_n_machines"] = {
        "per_actor_images_per_s": per_actor,
        "efficiency_vs_bare": result["ratios"]["ray_vs_bare_runner_steady"],
        "startup_s": best["startup_s"],
        "driver_rows_per_s": round(1 / result["driver_seconds_per_row"]),
        "object_store_images_per_s_per_node": round(1 / result["object_store_seconds_per_image"]),
        "formula": "images/s(N) ~= min(N x actors_per_node x per_actor x efficiency, driver_rows_per_s); "
        "wall time ~= startup_s + images / images/s(N)",
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

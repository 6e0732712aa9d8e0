"""`classify --ray`: a real two-node Ray cluster on this machine, no mocks.

The cluster (`benchmarks/local_ray_cluster.py`) is `ray start --head` plus a second
`ray start --address` node, 1 CPU each, on their own ports and temp dir, stopped at the end by
killing exactly the processes it started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("ray.data", reason="classify --ray needs the ray extra: pip install .[ray]")
pytest.importorskip("psutil")

pytestmark = pytest.mark.ray

from conftest import TINY_TYPES  # noqa: E402

from benchmarks.local_ray_cluster import LocalCluster  # noqa: E402
from vitgender.batch.ray_classify import RayClassifyOptions, classify_on_ray, list_inputs  # noqa: E402
from vitgender.batch.shards import COMMITTED_PREFIX, ShardSink, read_results  # noqa: E402

CLI = [sys.executable, "-m", "vitgender.cli"]
BAD = {"empty.jpg": b"", "garbage.png": b"not an image at all", "truncated.jpg": None}


@pytest.fixture(scope="module")
def cluster():
    local = LocalCluster().start(nodes=2)
    previous = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = local.env["RAY_AUTH_MODE"]  # this process joins it too (classify_on_ray)
    yield local
    import ray

    ray.shutdown()
    local.stop()
    if previous is None:
        os.environ.pop("RAY_AUTH_MODE", None)
    else:
        os.environ["RAY_AUTH_MODE"] = previous


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """1,000 small face-sized JPEGs and PNGs plus three files that are not images."""
    folder = tmp_path_factory.mktemp("ray-images")
    rng = np.random.default_rng(0)
    for i in range(1000):
        pixels = rng.integers(0, 256, size=(48 + i % 17, 40 + i % 13, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:04d}.{'png' if i % 5 == 0 else 'jpg'}")
    for name, content in BAD.items():
        if content is None:
            content = (folder / "img0001.jpg").read_bytes()[:200]
        (folder / name).write_bytes(content)
    return folder


def in_order(rows: list[dict]) -> dict[str, dict]:
    counts = Counter(row["image"] for row in rows)
    assert max(counts.values()) == 1, [k for k, v in counts.items() if v > 1][:5]
    return {row["image"]: row for row in rows}


def test_two_nodes_match_single_machine_classify(cluster, images, tiny_model, tmp_path):
    from vitgender.classify import load_classifier
    from vitgender.inputs import expand_inputs

    out = tmp_path / "out"
    options = RayClassifyOptions(address=cluster.address, batch_size=32, rows_per_shard=300)
    summary = classify_on_ray([str(images)], out, model=str(tiny_model), options=options)
    assert summary.nodes == 2 and summary.images == 1003 and summary.errors == 3
    assert len(summary.shards) == 4  # 300 + 300 + 300 + 103 rows, each committed whole
    rows = in_order(read_results(out))
    single = {r.image: r.to_dict() for r in load_classifier(str(tiny_model)).stream(expand_inputs([str(images)]))}
    assert rows.keys() == single.keys()
    for name, expected in single.items():
        got = rows[name]
        if "error" in expected:
            assert got == expected  # the same words as `vitgender classify`
            continue
        assert [p["label"] for p in got["predictions"]] == [p["label"] for p in expected["predictions"]]
        assert np.allclose(
            [p["score"] for p in got["predictions"]], [p["score"] for p in expected["predictions"]], atol=1e-5
        )
    assert {Path(k).name for k, v in rows.items() if "error" in v} == set(BAD)


def test_any_artifact_runs_in_the_actor_pool(cluster, images, tiny_model, tmp_path):
    """The actors only open a Runner: exported ONNX and TFLite files work like the checkpoint."""
    from vitgender.classify import load_classifier
    from vitgender.exporters import main_export
    from vitgender.runtimes import runtime_for

    exported = main_export(tiny_model, tmp_path / "export", "onnx,tflite")
    subset = sorted(images.glob("img00*"))[:100]
    for name in ("model.onnx", "model_float32.tflite"):
        artifact = str(exported / name)
        options = RayClassifyOptions(address=cluster.address, batch_size=16, rows_per_shard=1000)
        summary = classify_on_ray([str(p) for p in subset], tmp_path / name, model=artifact, options=options)
        assert summary.images == 100 and summary.errors == 0
        rows = in_order(read_results(tmp_path / name))
        single = load_classifier(artifact, runtime=runtime_for(artifact)).classify([str(p) for p in subset])
        for path, expected in zip(subset, single, strict=False):
            got = rows[str(path)]["predictions"]
            assert np.allclose([p["score"] for p in got], [p["score"] for p in expected], atol=1e-5)


def test_actor_stages_load_pickle_weights_and_decode_under_the_alpha_policy(tiny_model, tmp_path):
    """The stages each Ray worker runs, called in-process: what the options say reaches them."""
    from tests.conftest import pickled_copy
    from vitgender.batch.ray_classify import Predict, PredictFaces, decode_batch
    from vitgender.classify import load_classifier
    from vitgender.runtimes import open_runner

    pickled = pickled_copy(tiny_model, tmp_path / "pickled")
    pixels = np.random.default_rng(5).integers(0, 256, size=(40, 40, 4), dtype=np.uint8)
    pixels[..., 3] = np.where(np.arange(40)[:, None] < 20, 0, 255)
    png = tmp_path / "alpha.png"
    Image.fromarray(pixels, "RGBA").save(png)
    options = RayClassifyOptions(alpha="drop", allow_pickle=True)
    info = open_runner("torch", str(pickled), **options.runner_options()).info  # what the driver hands the tasks
    decoded = decode_batch({"image": np.array([str(png)], dtype=object)}, info.preprocess, options.max_pixels)
    scores = Predict(str(pickled), "torch", 1, "softmax", options.runner_options())(decoded)["scores"][0]
    expected = load_classifier(str(pickled), allow_pickle=True, alpha="drop").classify(str(png))[0]
    assert np.allclose(sorted(scores, reverse=True), [p["score"] for p in expected], atol=1e-6)
    pytest.importorskip("cv2", reason="the face actor's haar detector needs OpenCV")
    faces = PredictFaces(str(pickled), "torch", 1, options)  # opens its Classifier with the same options
    assert faces.classifier.preprocessor.config.alpha == "drop"


def test_face_first_mode_on_ray_matches_single_machine(cluster, tiny_model, tmp_path):
    pytest.importorskip("cv2", reason="face-first mode needs the faces extra: pip install .[faces]")
    from benchmarks.scenes import make_scene
    from vitgender.classify import load_classifier
    from vitgender.data import Sample, parse_utkface_name
    from vitgender.faces import open_detector

    reference = sorted(
        (Path(__file__).resolve().parent.parent / "vitgender" / "reference" / "utkface-val-50").glob("*.jpg")
    )
    pool = [Sample(p, parse_utkface_name(p.name).label, parse_utkface_name(p.name).groups) for p in reference[:8]]
    rng = np.random.default_rng(0)
    paths = []
    for i in range(0, len(pool), 2):
        paths.append(tmp_path / f"scene{i}.png")
        make_scene(pool[i : i + 2], rng).image.save(paths[-1])
    (tmp_path / "empty.jpg").write_bytes(b"")
    inputs = [str(p) for p in [*paths, tmp_path / "empty.jpg"]]
    options = RayClassifyOptions(address=cluster.address, batch_size=2, faces=True, detector="haar")
    summary = classify_on_ray(inputs, tmp_path / "out", model=str(tiny_model), options=options)
    assert summary.images == 5 and summary.errors == 1
    rows = in_order(read_results(tmp_path / "out"))
    single = load_classifier(str(tiny_model)).classify_faces([str(p) for p in paths], open_detector("haar"))
    assert sum(len(f) for f in single) > 0  # the scenes do hold detectable faces
    for path, faces in zip(paths, single, strict=False):
        got = rows[str(path)]["faces"]
        assert [f["box"] for f in got] == [f["box"] for f in faces]
        for mine, theirs in zip(got, faces, strict=False):
            assert np.allclose(
                [p["score"] for p in mine["predictions"]], [p["score"] for p in theirs["predictions"]], atol=1e-5
            )
    assert rows[str(tmp_path / "empty.jpg")] == {
        "image": str(tmp_path / "empty.jpg"),
        "error": "not an image (0 bytes)",
    }


def run_cli(*args: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [*CLI, "classify", "--ray", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(process: subprocess.Popen, timeout: float) -> str:
    """Its stderr once it exits; killed (and the test failed) if it does not within `timeout`."""
    try:
        return process.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"classify --ray did not finish in {timeout:.0f} s: {process.communicate()[1][-2000:]}")


def wait_for_shard(out: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not (out.is_dir() and any(p.name.startswith(COMMITTED_PREFIX) for p in out.iterdir())):
        assert process.poll() is None, process.communicate()[1][-2000:]
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("no shard committed in time")
        time.sleep(0.2)


@pytest.mark.slow
def test_resume_after_an_interrupted_run_writes_only_the_missing_rows(cluster, images, tmp_path):
    """The default model (slow enough to interrupt); the driver is killed after its first shard."""
    out = tmp_path / "out"
    args = [
        str(images),
        "--output",
        str(out),
        "--ray-address",
        cluster.address,
        "--rows-per-shard",
        "100",
        "--batch-size",
        "16",
    ]
    first = run_cli(*args, env=cluster.env)
    wait_for_shard(out, first)
    first.send_signal(signal.SIGKILL)
    first.wait()
    committed_before = {p.name: p.read_bytes() for p in out.iterdir() if p.name.startswith(COMMITTED_PREFIX)}
    done_before = ShardSink(out).done_images()
    assert 0 < len(done_before) < 1003
    second = run_cli(*args, "--resume", env=cluster.env)
    stderr = finish(second, 600)
    assert second.returncode == 2, stderr[-2000:]  # the three bad files
    assert f"{len(done_before)} skipped as done" in stderr
    for name, content in committed_before.items():  # earlier shards untouched
        assert (out / name).read_bytes() == content
    rows = in_order(read_results(out))  # exactly once, across both runs
    assert len(rows) == 1003
    new = [p for p in out.iterdir() if p.name.startswith(COMMITTED_PREFIX) and p.name not in committed_before]
    rewritten = {row["image"] for row in read_results_of(new)}
    assert not rewritten & done_before and len(rewritten) == 1003 - len(done_before)
    assert not [p for p in out.iterdir() if not p.name.startswith(COMMITTED_PREFIX)]  # no temp file left


def read_results_of(paths: list[Path]) -> list[dict]:
    import pyarrow.parquet as pq

    return [row for path in paths for row in pq.read_table(path).to_pylist()]


@pytest.mark.slow
def test_job_survives_losing_a_node(cluster, images, tmp_path):
    """SIGKILL the second node's raylet and workers mid-job: every input still appears exactly once.
    Runs last in this module: the cluster has one node afterwards."""
    out = tmp_path / "out"
    job = run_cli(
        str(images),
        "--output",
        str(out),
        "--ray-address",
        cluster.address,
        "--rows-per-shard",
        "100",
        "--batch-size",
        "16",
        env=cluster.env,
    )
    wait_for_shard(out, job)
    assert cluster.kill_node(1) > 0
    stderr = finish(job, 600)
    assert job.returncode == 2, stderr[-2000:]
    rows = in_order(read_results(out))
    assert len(rows) == 1003 and sum("error" in r for r in rows.values()) == 3


def test_shards_are_whole_or_absent_and_resume_reads_them(tmp_path):
    sink = ShardSink(tmp_path / "out", "jsonl", rows_per_shard=2)
    sink.add([{"image": "a", "predictions": []}, {"image": "b", "error": "x"}, {"image": "c", "predictions": []}])
    assert len(sink.committed()) == 1 and sink.pending  # "c" waits for its shard to fill or close
    (tmp_path / "out" / "_tmp-interrupted.jsonl").write_text('{"image": "d"}\n{"ima')  # a run killed mid-write
    assert sink.done_images() == {"a", "b"}
    assert ShardSink(tmp_path / "out").discard_interrupted() == 1
    sink.commit()
    assert ShardSink(tmp_path / "out").done_images() == {"a", "b", "c"}
    parquet = ShardSink(tmp_path / "pq")
    parquet.add(
        [
            {"image": "a", "predictions": [{"label": "female", "score": 0.75}]},
            {"image": "b", "error": "bad"},
            {"image": "c", "faces": [{"box": [1, 2, 3, 4], "detector_score": 0.9, "predictions": []}]},
        ]
    )
    parquet.commit()
    assert read_results(tmp_path / "pq") == [
        {"image": "a", "predictions": [{"label": "female", "score": 0.75}]},
        {"image": "b", "error": "bad"},
        {"image": "c", "faces": [{"box": [1, 2, 3, 4], "detector_score": 0.9, "predictions": []}]},
    ]


def test_inputs_from_lists_columns_and_uris(images, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = ["img0002.jpg", "img0003.jpg"]
    (tmp_path / "list.txt").write_text("\n".join(str(images / n) for n in names) + "\n")
    (tmp_path / "list.csv").write_text("path,other\n" + "".join(f"{images / n},x\n" for n in names))
    pq.write_table(pa.table({"file": [str(images / n) for n in names]}), tmp_path / "list.parquet")
    expected = [str(images / n) for n in names]
    assert list(list_inputs([str(tmp_path / "list.txt")])) == expected
    assert list(list_inputs([str(tmp_path / "list.csv")])) == expected
    assert list(list_inputs([str(tmp_path / "list.parquet")], path_column="file")) == expected
    assert "no column 'path'" in next(iter(list_inputs([str(tmp_path / "list.parquet")])))[1]
    uri = list(list_inputs([f"file://{images}"]))
    assert len(uri) == 1003 and all(u.startswith("file:///") for u in uri)
    assert list(list_inputs(["file:///no/such/place"])) == [("file:///no/such/place", "no such file or directory")]


def test_cli_refuses_ray_without_output_and_reused_output(images, tmp_path):
    result = subprocess.run([*CLI, "classify", "--ray", str(images)], capture_output=True, text=True)
    assert result.returncode == 2 and "--output" in result.stderr and "Traceback" not in result.stderr
    sink = ShardSink(tmp_path / "out", rows_per_shard=1)
    sink.add([{"image": "x", "error": "y"}])
    result = subprocess.run(
        [*CLI, "classify", "--ray", str(images), "--output", str(tmp_path / "out")], capture_output=True, text=True
    )
    assert result.returncode == 2 and "--resume" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "variant", [v if v == "deit-distilled" else pytest.param(v, marks=pytest.mark.slow) for v in TINY_TYPES]
)  # one fast: an actor pool per type costs 10-30 s
def test_every_model_type_runs_in_the_actor_pool(cluster, images, variant, tmp_path):
    """The driver reads labels from the checkpoint's metadata; the actors load each type's own class."""
    from conftest import make_tiny

    from vitgender.classify import load_classifier

    model = make_tiny(variant, tmp_path / variant)
    subset = [str(p) for p in sorted(images.glob("img00*"))[:20]]
    options = RayClassifyOptions(address=cluster.address, batch_size=8, rows_per_shard=1000)
    summary = classify_on_ray(subset, tmp_path / "out", model=str(model), options=options)
    assert summary.images == 20 and summary.errors == 0
    rows = in_order(read_results(tmp_path / "out"))
    with load_classifier(str(model)) as classifier:
        single = classifier.classify(subset)
    for path, expected in zip(subset, single, strict=False):
        assert [p["label"] for p in rows[path]["predictions"]] == [p["label"] for p in expected]

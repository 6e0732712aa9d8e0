"""Ray Serve scale-out: the same contract, and autoscaling that rises under load and falls back."""

from __future__ import annotations

import base64
import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest

ray = pytest.importorskip("ray", reason="Ray Serve needs the ray extra: pip install .[ray]")
from ray import serve  # noqa: E402

pytestmark = pytest.mark.ray

from vitgender.serving.ray_app import RayServeOptions, build_app  # noqa: E402

EXAMPLE = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.jpg"))[0]


def _running_replicas() -> int:
    status = serve.status()
    deployment = next(iter(status.applications["default"].deployments.values()))
    return deployment.replica_states.get("RUNNING", 0)


@pytest.mark.slow
def test_ray_serve_autoscales_up_and_down(tiny_model):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp = tempfile.mkdtemp(prefix="vgray-")  # short: Ray's unix socket paths must stay under 108 bytes
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True, _temp_dir=temp)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        options = RayServeOptions(
            min_replicas=1,
            max_replicas=3,
            target_ongoing_requests=1,
            max_batch_size=4,
            upscale_delay_s=1,
            downscale_delay_s=4,
            num_cpus_per_replica=0.5,
        )
        serve.run(build_app(str(tiny_model), "torch", options), route_prefix="/", name="default")
        url = f"http://127.0.0.1:{port}/"
        first = httpx.post(url, content=EXAMPLE.read_bytes(), timeout=30)
        assert first.status_code == 200 and {p["label"] for p in first.json()} == {"female", "male"}
        assert httpx.post(url, content=b"nope", timeout=30).status_code == 400
        payload = {"inputs": base64.b64encode(EXAMPLE.read_bytes()).decode(), "parameters": {"top_k": 1}}
        assert len(httpx.post(url, json=payload, timeout=30).json()) == 1  # same protocol as `vitgender serve`
        assert _running_replicas() == 1

        stop = threading.Event()
        peak = [1]

        def load():
            with httpx.Client(timeout=30) as client:
                while not stop.is_set():
                    client.post(url, content=EXAMPLE.read_bytes())

        workers = [threading.Thread(target=load) for _ in range(12)]
        for worker in workers:
            worker.start()
        deadline = time.time() + 90
        while time.time() < deadline and peak[0] <= 1:
            time.sleep(1)
            peak[0] = max(peak[0], _running_replicas())
        stop.set()
        for worker in workers:
            worker.join()
        assert peak[0] > 1, "replicas never rose above min_replicas under load"

        deadline = time.time() + 90
        while time.time() < deadline and _running_replicas() > 1:
            time.sleep(1)
        assert _running_replicas() == 1, "replicas did not fall back to min_replicas after the load stopped"
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_serve_ray_keys_reload_on_sighup_and_it_stops_on_sigterm(tiny_model, tmp_path):
    """`serve --ray --api-key-file`: 401 without the key, SIGHUP swaps keys on the replicas, SIGTERM undeploys.

    Process managers and Kubernetes stop services with SIGTERM: it must undeploy, not be logged and ignored.
    """
    import signal
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    key, other = "k" * 20, "o" * 20
    keys = tmp_path / "keys.txt"
    keys.write_text(key + "\n")
    temp = tempfile.mkdtemp(prefix="vgray-")
    env = {**os.environ, "RAY_TMPDIR": temp}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vitgender.cli",
            "serve",
            "--ray",
            "--model",
            str(tiny_model),
            "--port",
            str(port),
            "--max-replicas",
            "1",
            "--api-key-file",
            str(keys),
            "--threads",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    url = f"http://127.0.0.1:{port}/"

    def post(token: str | None) -> int:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return httpx.post(url, content=EXAMPLE.read_bytes(), headers=headers, timeout=30).status_code

    try:
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            try:
                if post(key) == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            pytest.fail(f"serve --ray never answered: {proc.stderr.read()[-2000:] if proc.poll() is not None else ''}")
        assert post(None) == 401 and post(other) == 401
        keys.write_text(other + "\n")
        proc.send_signal(signal.SIGHUP)
        deadline = time.time() + 30
        while time.time() < deadline and post(other) != 200:
            time.sleep(0.5)
        assert post(other) == 200 and post(key) == 401
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
        stderr = proc.stderr.read()
        assert "SIGHUP: reloaded 1 key(s)" in stderr and "stopping" in stderr, stderr[-2000:]
        assert "Traceback" not in stderr and key not in stderr and other not in stderr, stderr[-2000:]
        with pytest.raises(httpx.HTTPError):
            httpx.post(url, content=EXAMPLE.read_bytes(), timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_ray_serve_with_a_key_rejects_requests_without_one(tiny_model):
    """Same gate as the single-process server; a key-store update reaches the replicas without a restart."""
    from vitgender.serving.auth import digest
    from vitgender.serving.ray_app import KEYS_NAMESPACE, KEYS_REFRESH_S, KeyStore

    key, other = "k" * 20, "o" * 20
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp = tempfile.mkdtemp(prefix="vgray-")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True, _temp_dir=temp)
    try:
        store = KeyStore.options(name="vitgender-keys-test", namespace=KEYS_NAMESPACE).remote([digest(key)])
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        options = RayServeOptions(
            min_replicas=1,
            max_replicas=1,
            max_batch_size=4,
            num_cpus_per_replica=0.5,
            threads=1,
            max_queued_requests=64,
        )
        serve.run(
            build_app(
                str(tiny_model), "torch", options, key_store="vitgender-keys-test", digests=frozenset({digest(key)})
            ),
            route_prefix="/",
            name="default",
        )
        url = f"http://127.0.0.1:{port}/"
        image = EXAMPLE.read_bytes()
        refused = httpx.post(url, content=image, timeout=30)
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
        assert "error" in refused.json()
        assert (
            httpx.post(url, content=image, headers={"authorization": "Bearer " + other}, timeout=30).status_code == 401
        )
        assert httpx.post(url, content=image, headers={"authorization": "Bearer"}, timeout=30).status_code == 401
        answered = httpx.post(url, content=image, headers={"authorization": "Bearer " + key}, timeout=30)
        assert answered.status_code == 200 and {p["label"] for p in answered.json()} == {"female", "male"}
        assert httpx.get(url + "health/ready", timeout=30).json() == {"status": "ready"}
        assert httpx.get(url + "info", timeout=30).status_code == 401

        ray.get(store.replace.remote([digest(other)]))  # what SIGHUP does on the driver
        time.sleep(KEYS_REFRESH_S + 0.5)
        httpx.post(url, content=image, timeout=30)  # replicas refresh on their next request
        assert httpx.post(url, content=image, headers={"authorization": "Bearer " + key}, timeout=30).status_code == 401
        assert (
            httpx.post(url, content=image, headers={"authorization": "Bearer " + other}, timeout=30).status_code == 200
        )
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)

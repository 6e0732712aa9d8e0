"""The HF-compatible server: contract, errors, batching, backpressure, metrics, demo page."""

from __future__ import annotations

import asyncio
import base64
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

pytest.importorskip("fastapi", reason="serving needs the serve extra: pip install .[serve]")

from vitgender.serving.batcher import DynamicBatcher, QueueFull  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = sorted((REPO / "examples").glob("*.jpg"))[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(*args: str) -> tuple[subprocess.Popen, str]:
    """`vitgender serve` on a free port; its output goes to a file (a pipe nobody reads would fill and stall it)."""
    port = free_port()
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen([sys.executable, "-m", "vitgender.cli", "serve", "--port", str(port), *args],
                            stdout=log, stderr=log, text=True)  # uvicorn's access log goes to stdout
    proc.log = log
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/health/ready", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(server_log(proc))
        time.sleep(0.3)
    proc.kill()
    raise TimeoutError("server did not become ready")


def server_log(proc: subprocess.Popen) -> str:
    proc.log.seek(0)
    return proc.log.read()


def test_serve_says_where_what_and_when_it_stops(tiny_model):
    proc, url = start_server("--model", str(tiny_model), "--max-batch-size", "4")
    assert httpx.post(url, content=EXAMPLE.read_bytes(), timeout=30).status_code == 200
    proc.terminate()
    proc.wait(timeout=30)
    log = server_log(proc)
    assert f"vitgender serve: {url}/ model={tiny_model} runtime=torch; batching: up to 4 images" in log
    assert "vitgender serve: ready: " in log and "(torch, fp32, labels female, male)" in log
    assert '"POST / HTTP/1.1" 200' in log  # the access log
    assert "vitgender serve: stopping: draining" in log and "vitgender serve: stopped" in log


@pytest.fixture(scope="module")
def server(tiny_model):
    proc, url = start_server("--model", str(tiny_model), "--max-body-mb", "0.05")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_raw_bytes_and_base64_json_agree_with_classify(server, tiny_model):
    import vitgender

    expected = vitgender.load_classifier(tiny_model).classify(str(EXAMPLE))[0]
    raw = httpx.post(server, content=EXAMPLE.read_bytes())
    assert raw.status_code == 200 and float(raw.headers["x-compute-time"]) >= 0
    payload = {"inputs": base64.b64encode(EXAMPLE.read_bytes()).decode(), "parameters": {"top_k": 1}}
    one = httpx.post(f"{server}/models/acme/tiny", json=payload).json()
    assert [p["label"] for p in raw.json()] == [p["label"] for p in expected]
    assert np.allclose([p["score"] for p in raw.json()], [p["score"] for p in expected], atol=1e-6)
    assert one == raw.json()[:1]
    sigmoid = httpx.post(server, json={**payload, "parameters": {"function_to_apply": "none"}}).json()
    assert len(sigmoid) == 2 and not np.isclose(sum(p["score"] for p in sigmoid), 1.0)


def test_huggingface_inference_client(server, tiny_model):
    from huggingface_hub import InferenceClient

    import vitgender

    expected = vitgender.load_classifier(tiny_model).classify(str(EXAMPLE))[0]
    got = InferenceClient(model=server).image_classification(str(EXAMPLE))
    assert [(e.label, round(e.score, 5)) for e in got] == [(p["label"], round(p["score"], 5)) for p in expected]
    top = InferenceClient(model=server).image_classification(str(EXAMPLE), top_k=1)
    assert len(top) == 1


@pytest.mark.parametrize(
    "kwargs,status,message",
    [
        ({"content": b"definitely not an image"}, 400, "cannot decode image"),
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
        ({"json": {"inputs": "/etc/passwd"}}, 400, "base64"),
        ({"json": {"inputs": 42}}, 400, "base64-encoded"),
        ({"json": {"inputs": "aGVsbG8=", "parameters": {"top_k": 0}}}, 422, "top_k"),
        ({"json": {"inputs": "aGVsbG8=", "parameters": {"function_to_apply": "relu"}}}, 422, "function_to_apply"),
        ({"content": b"x" * 60_000}, 413, "limit"),
        ({"content": b""}, 400, "empty"),
    ],
)
def test_errors_follow_the_hf_contract(server, kwargs, status, message):
    response = httpx.post(server, **kwargs)
    assert response.status_code == status
    assert message in response.json()["error"]


def test_health_metrics_and_demo_page(server):
    assert httpx.get(f"{server}/health/live").json() == {"status": "alive"}
    assert httpx.get(f"{server}/health/ready").json()["labels"] == ["female", "male"]
    httpx.post(server, content=b"bad")
    text = httpx.get(f"{server}/metrics").text
    for name in ("vitgender_requests_total", "vitgender_request_seconds_bucket", "vitgender_batch_size_bucket",
                 "vitgender_queue_depth", 'vitgender_requests_total{status="400"}'):
        assert name in text
    assert "perceived binary gender" in httpx.get(server).text


def test_batcher_groups_concurrent_requests_and_rejects_when_full():
    sizes = []

    def run(batch: np.ndarray) -> np.ndarray:
        time.sleep(0.05)
        return batch.reshape(len(batch), -1)[:, :2]

    async def scenario():
        batcher = DynamicBatcher(run, max_batch_size=8, max_wait_ms=20, max_queue=4,
                                 on_batch=lambda size, seconds: sizes.append(size))
        batcher.start()
        first = await asyncio.gather(*(batcher.submit(np.full((2,), i, np.float32)) for i in range(4)))
        # Now flood: 4 queued is the limit; the rest must be refused immediately, not queued.
        tasks = [asyncio.ensure_future(batcher.submit(np.zeros((2,), np.float32))) for _ in range(20)]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await batcher.drain()
        return first, results

    first, results = asyncio.run(scenario())
    assert [row[0] for row in first] == [0, 1, 2, 3]
    assert sizes[0] == 4  # four concurrent requests, one Runner call
    refused = sum(isinstance(r, QueueFull) for r in results)
    assert refused > 0 and refused + sum(isinstance(r, np.ndarray) for r in results) == 20


def test_overload_gives_429_with_retry_after_then_recovers(tiny_model):
    proc, url = start_server("--model", str(tiny_model), "--max-queue", "2", "--max-batch-size", "1")

    async def flood():
        async with httpx.AsyncClient(timeout=30) as client:
            data = EXAMPLE.read_bytes()
            return await asyncio.gather(*(client.post(url, content=data) for _ in range(60)))

    try:
        responses = asyncio.run(flood())
        codes = [r.status_code for r in responses]
        assert 429 in codes and 200 in codes and set(codes) <= {200, 429}
        assert all(r.headers.get("retry-after") == "1" for r in responses if r.status_code == 429)
        assert httpx.post(url, content=EXAMPLE.read_bytes()).status_code == 200  # recovered
        assert 'vitgender_rejections_total{reason="queue_full"}' in httpx.get(f"{url}/metrics").text
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_loading_state_answers_503_with_estimated_time(tiny_model):
    from fastapi.testclient import TestClient

    from vitgender.runtimes import open_runner
    from vitgender.serving.app import ServeSettings, create_app

    def slow_open():
        time.sleep(2)
        return open_runner("torch", tiny_model)

    with TestClient(create_app(ServeSettings(), open_runner=slow_open)) as client:
        response = client.post("/", content=EXAMPLE.read_bytes())
        assert response.status_code == 503
        assert "loading" in response.json()["error"] and response.json()["estimated_time"] > 0
        assert client.get("/health/ready").status_code == 503
        assert client.get("/health/live").status_code == 200
        deadline = time.time() + 30
        while client.get("/health/ready").status_code != 200 and time.time() < deadline:
            time.sleep(0.2)
        assert client.post("/", content=EXAMPLE.read_bytes()).status_code == 200


@pytest.mark.parametrize("invariant, batch, warned", [(False, 16, True), (False, 1, False), (True, 16, False)])
def test_serving_a_batch_dependent_artifact_behind_the_batcher_warns(tiny_model, invariant, batch, warned):
    """Dynamic int8 answers depend on the batch: say so where an operator reads it."""
    import dataclasses

    from fastapi.testclient import TestClient

    from vitgender.runtimes import open_runner
    from vitgender.serving.app import ServeSettings, create_app

    def as_onnx():
        runner = open_runner("torch", tiny_model)
        runner.info = dataclasses.replace(runner.info, batch_invariant=invariant)
        return runner

    lines = []
    with TestClient(create_app(ServeSettings(max_batch_size=batch), open_runner=as_onnx, announce=lines.append)) as client:
        deadline = time.time() + 30
        while client.get("/health/ready").status_code != 200 and time.time() < deadline:
            time.sleep(0.1)
    assert any("depends on the other requests" in line for line in lines) == warned, lines


SLOW_SERVER = """
import sys, time
import uvicorn
from vitgender.runtimes import open_runner
from vitgender.serving.app import ServeSettings, create_app

class Slow:  # 0.25 s per Runner call, so requests are still queued when SIGTERM arrives
    def __init__(self, inner):
        self.inner, self.info = inner, inner.info
    def run(self, pixels):
        time.sleep(0.25)
        return self.inner.run(pixels)

settings = ServeSettings(model=sys.argv[1], max_batch_size=1)
app = create_app(settings, open_runner=lambda: Slow(open_runner("torch", sys.argv[1])))
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", timeout_graceful_shutdown=30)
"""


def test_graceful_shutdown_drains_in_flight_requests(tiny_model):
    """Every request received before SIGTERM is answered; the process then exits cleanly."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SERVER, str(tiny_model), str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while not _ready(url):
        assert time.time() < deadline and proc.poll() is None, "server did not start"
        time.sleep(0.2)

    async def fire():
        async with httpx.AsyncClient(timeout=60) as client:
            data = EXAMPLE.read_bytes()
            tasks = [asyncio.ensure_future(client.post(url, content=data)) for _ in range(12)]
            await asyncio.sleep(0.6)  # all 12 received; 12 x 0.25 s of inference still ahead
            sent_at = time.monotonic()
            proc.terminate()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            return results, time.monotonic() - sent_at

    results, drained_in = asyncio.run(fire())
    # uvicorn re-raises the SIGTERM it caught once shutdown is complete, so -15 is its clean exit
    assert proc.wait(timeout=60) in (0, -15), proc.stderr.read()[-2000:]
    assert "Traceback" not in proc.stderr.read()
    assert [getattr(r, "status_code", repr(r)) for r in results] == [200] * 12
    assert drained_in > 1.0  # the queue really was still full when SIGTERM came (12 x 0.25 s, 0.6 s spent)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


needs_chromium = pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                                    reason="Debian chromium + chromium-driver not installed (.ci/run installs them)")


def chromium(tmp_path):
    pytest.importorskip("selenium", reason="selenium not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path}/chrome"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


@needs_chromium
def test_demo_page_shows_hostile_labels_as_text(hostile_model, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.conftest import HOSTILE_LABEL

    proc, url = start_server("--model", str(hostile_model))
    driver = chromium(tmp_path)
    try:
        driver.get(url)
        driver.find_element(By.ID, "file").send_keys(str(EXAMPLE))
        WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "result").get_attribute("data-status") == "done")
        result = driver.find_element(By.ID, "result")
        assert HOSTILE_LABEL in result.text and "<script>x</script>" in result.text  # shown literally
        assert result.find_elements(By.CSS_SELECTOR, "img, script") == []
        assert driver.execute_script("return window.pwned") is None
    finally:
        driver.quit()
        proc.terminate()
        proc.wait(timeout=30)


@needs_chromium
def test_demo_page_in_headless_chromium(server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chromium(tmp_path)
    try:
        driver.get(server)
        driver.find_element(By.ID, "file").send_keys(str(EXAMPLE))
        WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "result").get_attribute("data-status") == "done")
        shown = {e.get_attribute("data-label"): float(e.text) for e in driver.find_elements(By.CSS_SELECTOR, ".score")}
        api = {p["label"]: p["score"] for p in httpx.post(server, content=EXAMPLE.read_bytes()).json()}
        assert shown.keys() == api.keys()
        assert all(abs(shown[k] - api[k]) < 1e-4 for k in api)
        driver.save_screenshot(str(tmp_path / "demo.png"))

        pytest.importorskip("cv2", reason="face-first needs the faces extra")
        import numpy as np

        from benchmarks.scenes import make_scene
        from vitgender.data import Sample

        faces = sorted((REPO / "vitgender" / "reference" / "utkface-val-50").glob("*.jpg"))[:2]
        scene = make_scene([Sample(f, "unused") for f in faces], np.random.default_rng(3))
        scene.image.save(tmp_path / "scene.jpg")
        driver.find_element(By.ID, "faces").click()
        driver.find_element(By.ID, "file").send_keys(str(tmp_path / "scene.jpg"))
        WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "result").get_attribute("data-status")
                                        in ("done", "error") and "classifying" not in d.find_element(By.ID, "result").text)
        sections = driver.find_elements(By.CSS_SELECTOR, "#result .face")
        assert sections and all("at [" in s.find_element(By.TAG_NAME, "h3").text for s in sections)
        assert len(driver.find_elements(By.CSS_SELECTOR, "#result .face .score")) == 2 * len(sections)
    finally:
        driver.quit()

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
    proc = subprocess.Popen(
        [sys.executable, "-m", "vitgender.cli", "serve", "--port", str(port), *args], stdout=log, stderr=log, text=True
    )  # uvicorn's access log goes to stdout
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
    ("kwargs", "status", "message"),
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
    for name in (
        "vitgender_requests_total",
        "vitgender_request_seconds_bucket",
        "vitgender_batch_size_bucket",
        "vitgender_queue_depth",
        'vitgender_requests_total{status="400"}',
    ):
        assert name in text
    info = httpx.get(f"{server}/info").json()
    assert info["labels"] == ["female", "male"] and info["responsible_use"] is True
    assert info["task"] == "Image classifier with 2 labels: female, male"  # the tiny model has no card


def test_demo_page_describes_the_served_model_not_gender(tmp_path):
    """A 3-label model's page must not call itself a gender classifier; its card's title is the task."""
    from fastapi.testclient import TestClient

    from tests.conftest import make_tiny_vit
    from vitgender.runtimes import open_runner
    from vitgender.serving.app import ServeSettings, create_app

    model = make_tiny_vit(tmp_path / "scenes", labels=("beach", "forest", "city"))
    with TestClient(create_app(ServeSettings(model=str(model)), open_runner=lambda: open_runner("torch", model))) as c:
        _wait_ready(c)
        info = c.get("/info").json()
        assert info == {**info, "task": "Image classifier with 3 labels: beach, forest, city", "responsible_use": False}
        (model / "README.md").write_text("---\nlicense: mit\n---\n\n# Scene type classifier\n\nText.\n")
        assert c.get("/info").json()["task"] == "Scene type classifier"
        page = c.get("/").text
        note = page.index('<p id="responsible-use" hidden>')  # shown by the page only if info says so
        assert page.count("perceived binary gender") == 1 and page.index("perceived binary gender") < page.index(
            "</p>", note
        )


def _wait_ready(client) -> None:
    deadline = time.time() + 60
    while client.get("/health/ready").status_code != 200 and time.time() < deadline:
        time.sleep(0.1)


def test_batcher_groups_concurrent_requests_and_rejects_when_full():
    sizes = []

    def run(batch: np.ndarray) -> np.ndarray:
        time.sleep(0.05)
        return batch.reshape(len(batch), -1)[:, :2]

    async def scenario():
        batcher = DynamicBatcher(
            run, max_batch_size=8, max_wait_ms=20, max_queue=4, on_batch=lambda size, seconds: sizes.append(size)
        )
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


@pytest.mark.parametrize(("invariant", "batch", "warned"), [(False, 16, True), (False, 1, False), (True, 16, False)])
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
    with TestClient(
        create_app(ServeSettings(max_batch_size=batch), open_runner=as_onnx, announce=lines.append)
    ) as client:
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
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_SERVER, str(tiny_model), str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
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


needs_chromium = pytest.mark.skipif(
    not (shutil.which("chromium") and shutil.which("chromedriver")),
    reason="Debian chromium + chromium-driver not installed (.ci/run installs them)",
)


def chromium(tmp_path):
    pytest.importorskip("selenium", reason="selenium not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path}/chrome",
    ):
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
        WebDriverWait(driver, 30).until(
            lambda d: d.find_element(By.ID, "result").get_attribute("data-status") == "done"
        )
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
        WebDriverWait(driver, 30).until(
            lambda d: d.find_element(By.ID, "result").get_attribute("data-status") == "done"
        )
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
        WebDriverWait(driver, 30).until(
            lambda d: d.find_element(By.ID, "result").get_attribute("data-status") in ("done", "error")
            and "classifying" not in d.find_element(By.ID, "result").text
        )
        sections = driver.find_elements(By.CSS_SELECTOR, "#result .face")
        assert sections and all("at [" in s.find_element(By.TAG_NAME, "h3").text for s in sections)
        assert len(driver.find_elements(By.CSS_SELECTOR, "#result .face .score")) == 2 * len(sections)
    finally:
        driver.quit()


# --- who may call: keys, rate limits, TLS, hostile clients ---------------------------------------

KEY_A, KEY_B = "hf_" + "a" * 30, "vg-" + "B1" * 12


def test_keys_file_and_environment(tmp_path):
    from vitgender.errors import UsageError
    from vitgender.serving.auth import digest, read_keys

    keys = tmp_path / "keys.txt"
    keys.write_text(f"# team keys\n{KEY_A}   # ci\n\n")
    assert read_keys(keys, {}) == {digest(KEY_A)}
    assert read_keys(keys, {"VITGENDER_API_KEYS": f" {KEY_B}, "}) == {digest(KEY_A), digest(KEY_B)}
    assert read_keys(None, {}) == frozenset()
    for text, why in (
        ("short\n", "at least 16"),
        ("has a space in it!!!!!!\n", "not a usable key"),
        ("# none\n", "no key"),
    ):
        keys.write_text(text)
        with pytest.raises(UsageError, match=why):
            read_keys(keys, {})
    with pytest.raises(UsageError, match="cannot read key file"):
        read_keys(tmp_path / "missing.txt", {})


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing"),
        ("", "malformed"),
        ("Bearer", "malformed"),
        ("Basic " + KEY_A, "malformed"),
        ("Bearer " + KEY_A + " x", "malformed"),
        ("Bearer caf\u00e9" + "x" * 20, "malformed"),
        ("Bearer " + "x" * 5000, "malformed"),
        ("Bearer " + KEY_B, "invalid"),
        ("bearer  " + KEY_A, None),
        ("Bearer " + KEY_A, None),
    ],
)
def test_authorization_header(header, reason):
    from vitgender.serving.auth import KeyRing, Rejection, digest, key_id

    ring = KeyRing(frozenset({digest(KEY_A)}))
    if reason is None:
        assert ring.authenticate(header).key_id == key_id(digest(KEY_A)) != KEY_A[:8]
        return
    with pytest.raises(Rejection) as info:
        ring.authenticate(header)
    assert (info.value.status, info.value.reason) == (401, reason)
    assert info.value.headers["WWW-Authenticate"].startswith("Bearer")


def test_token_bucket_refills_and_says_when():
    from vitgender.errors import UsageError
    from vitgender.serving.auth import RateLimiter, Rejection, parse_rate

    assert parse_rate("10/s") == 10 and parse_rate("120/min") == 2
    for bad in ("10", "0/s", "-1/s", "ten/s"):
        with pytest.raises(UsageError):
            parse_rate(bad)
    now = [0.0]
    limiter = RateLimiter(2, clock=lambda: now[0])
    limiter.take("k")
    limiter.take("k")  # a burst of one second's worth
    with pytest.raises(Rejection) as info:
        limiter.take("k")
    assert info.value.status == 429 and info.value.headers["Retry-After"] == "1"
    limiter.take("other")  # buckets are per caller
    now[0] = 0.5
    limiter.take("k")  # refilled one token in half a second at 2/s
    small = RateLimiter(1, max_callers=3, clock=lambda: now[0])
    for caller in "abcdef":
        small.take(caller)
    assert len(small._buckets) == 3  # memory stays bounded whatever the number of addresses


def test_rate_limit_per_key_and_per_address_gives_429_with_retry_after(tiny_model):
    from fastapi.testclient import TestClient

    from vitgender.runtimes import open_runner
    from vitgender.serving.app import ServeSettings, create_app
    from vitgender.serving.auth import Gate, KeyRing, RateLimiter, digest

    for keys, headers in (
        (
            frozenset({digest(KEY_A), digest(KEY_B)}),
            [{"authorization": f"Bearer {KEY_A}"}, {"authorization": f"Bearer {KEY_B}"}],
        ),
        (frozenset(), [{}, None]),
    ):
        gate = Gate(KeyRing(keys), RateLimiter(1 / 60))  # one request a minute
        with TestClient(
            create_app(ServeSettings(), open_runner=lambda: open_runner("torch", tiny_model), gate=gate)
        ) as client:
            _wait_ready(client)
            assert client.post("/", content=EXAMPLE.read_bytes(), headers=headers[0]).status_code == 200
            refused = client.post("/", content=EXAMPLE.read_bytes(), headers=headers[0])
            assert refused.status_code == 429 and "rate limit" in refused.json()["error"]
            assert 55 <= int(refused.headers["retry-after"]) <= 60
            if headers[1] is not None:  # another key has its own bucket
                assert client.post("/", content=EXAMPLE.read_bytes(), headers=headers[1]).status_code == 200
            assert client.get("/health/ready").status_code == 200  # health checks are never limited
            assert (
                'vitgender_rejections_total{reason="rate_limited"}' in client.get("/metrics", headers=headers[0]).text
            )


def test_public_metrics_opens_metrics_only():
    from fastapi.testclient import TestClient

    from vitgender.serving.app import ServeSettings, create_app
    from vitgender.serving.auth import Gate, KeyRing, digest

    never = lambda: time.sleep(3600)  # noqa: E731 - the model never loads: nothing here needs it
    for public, status in ((True, 200), (False, 401)):
        gate = Gate(KeyRing(frozenset({digest(KEY_A)})), public_metrics=public)
        client = TestClient(create_app(ServeSettings(), open_runner=never, gate=gate))
        assert client.get("/metrics").status_code == status
        assert client.post("/", content=b"x").status_code == 401
        assert client.get("/info").status_code == 401


def test_non_loopback_without_keys_refuses_to_start(tmp_path):
    env = {k: v for k, v in __import__("os").environ.items() if k != "VITGENDER_API_KEYS"}
    keys = tmp_path / "keys.txt"
    keys.write_text(KEY_A + "\n")
    for args, message in (
        (["--host", "0.0.0.0"], "refusing to serve on 0.0.0.0 without keys"),
        (["--api-key-file", str(keys), "--no-auth"], "--no-auth: contradicts"),
        (["--rate-limit", "fast"], "--rate-limit 'fast'"),
        (["--ssl-certfile", str(keys)], "the two go together"),
        (["--ray", "--rate-limit", "5/s"], "not available with --ray"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "vitgender.cli", "serve", "--port", str(free_port()), *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def secured(tiny_model, tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text(f"# one key per line\n{KEY_A}\n")
    proc, url = start_server(
        "--model",
        str(tiny_model),
        "--api-key-file",
        str(keys),
        "--header-timeout",
        "1",
        "--body-timeout",
        "1",
        "--max-header-kb",
        "4",
        "--max-connections-per-client",
        "8",
    )
    yield proc, url, keys
    proc.terminate()
    proc.wait(timeout=30)


def test_requests_without_a_valid_key_get_401(secured):
    _, url, _ = secured
    for headers in (
        {},
        {"authorization": f"Bearer {KEY_B}"},
        {"authorization": "Bearer"},
        {"authorization": "Digest x"},
        {"authorization": b"Bearer \xff\xfe" + b"x" * 20},
    ):
        response = httpx.post(url, content=EXAMPLE.read_bytes(), headers=headers)
        assert response.status_code == 401 and isinstance(response.json()["error"], str)
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert httpx.post(f"{url}/models/x", content=b"x").status_code == 401  # checked before the body is read
    assert httpx.get(f"{url}/health/live").status_code == 200
    assert httpx.get(f"{url}/health/ready").json() == {"status": "ready"}  # open, so it names nothing
    assert httpx.get(f"{url}/info").status_code == 401
    assert httpx.get(f"{url}/metrics").status_code == 401
    metrics = httpx.get(f"{url}/metrics", headers={"authorization": f"Bearer {KEY_A}"}).text
    assert 'vitgender_auth_failures_total{reason="missing"}' in metrics
    assert 'vitgender_auth_failures_total{reason="invalid"}' in metrics and KEY_B not in metrics


def test_inference_client_with_token(secured, tiny_model):
    from huggingface_hub import InferenceClient
    from huggingface_hub.errors import HfHubHTTPError

    import vitgender
    from vitgender.serving.auth import digest, key_id

    proc, url, _ = secured
    expected = vitgender.load_classifier(tiny_model).classify(str(EXAMPLE))[0]
    got = InferenceClient(model=url, token=KEY_A).image_classification(str(EXAMPLE))
    assert [(e.label, round(e.score, 5)) for e in got] == [(p["label"], round(p["score"], 5)) for p in expected]
    with pytest.raises(HfHubHTTPError) as info:
        InferenceClient(model=url, token=KEY_B).image_classification(str(EXAMPLE))
    assert info.value.response.status_code == 401
    time.sleep(0.3)
    log = server_log(proc)
    assert f'key {key_id(digest(KEY_A))} - "POST / HTTP/1.1" 200' in log and '- key - - "POST / HTTP/1.1" 401' in log
    assert KEY_A not in log and KEY_B not in log


def test_sighup_reloads_keys_without_dropping_requests(secured):
    import signal

    proc, url, keys = secured

    async def during_reload():
        async with httpx.AsyncClient(timeout=60) as client:
            headers = {"authorization": f"Bearer {KEY_A}"}
            tasks = [
                asyncio.ensure_future(client.post(url, content=EXAMPLE.read_bytes(), headers=headers)) for _ in range(6)
            ]
            await asyncio.sleep(0.05)
            keys.write_text(f"{KEY_B}\n")
            proc.send_signal(signal.SIGHUP)
            return await asyncio.gather(*tasks)

    assert [r.status_code for r in asyncio.run(during_reload())] == [200] * 6  # admitted before: all answered
    deadline = time.time() + 10
    while time.time() < deadline and "reloaded 1 key" not in server_log(proc):
        time.sleep(0.1)
    assert (
        httpx.post(url, content=EXAMPLE.read_bytes(), headers={"authorization": f"Bearer {KEY_A}"}).status_code == 401
    )
    assert (
        httpx.post(url, content=EXAMPLE.read_bytes(), headers={"authorization": f"Bearer {KEY_B}"}).status_code == 200
    )
    keys.write_text("# emptied by mistake\n")
    proc.send_signal(signal.SIGHUP)  # a broken file keeps the keys loaded before
    deadline = time.time() + 10
    while time.time() < deadline and "keeping the 1 key(s)" not in server_log(proc):
        time.sleep(0.1)
    assert (
        httpx.post(url, content=EXAMPLE.read_bytes(), headers={"authorization": f"Bearer {KEY_B}"}).status_code == 200
    )
    keys.write_text(f"{KEY_A}\n")
    proc.send_signal(signal.SIGHUP)
    time.sleep(1)


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        return sock.recv(65536) == b"" or True  # EOF, or a 4xx then EOF
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_slow_and_oversized_clients_are_cut_off(secured):
    _, url, _ = secured
    port = int(url.rsplit(":", 1)[1])
    # slow-loris: a request head that never completes is closed after --header-timeout (1 s)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n")
        began = time.monotonic()
        assert _closed_within(sock, 5) and time.monotonic() - began < 4
    with socket.create_connection(("127.0.0.1", port)) as sock:  # a silent connection too
        assert _closed_within(sock, 5)
    # a trickled body: 408 after --body-timeout (1 s)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            f"POST / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY_A}\r\n"
            "Content-Length: 1000\r\n\r\nabc".encode()
        )
        sock.settimeout(5)
        assert sock.recv(65536).startswith(b"HTTP/1.1 408")
    # a head over --max-header-kb (4): 431 whether it arrives in one read (refused before parsing) or in
    # pieces that complete it (refused by the app); 400 from h11 while a piece leaves it over and incomplete
    line = b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: "
    for pieces, status in (
        ([line + b"a" * 8000 + b"\r\n\r\n"], b"431"),
        ([line + b"a" * 3000, b"a" * 3000 + b"\r\n\r\n"], b"431"),
        ([line + b"a" * 3000, b"a" * 3000], b"400"),
    ):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            for piece in pieces:
                sock.sendall(piece)
                time.sleep(0.2)
            sock.settimeout(5)
            assert sock.recv(65536).startswith(b"HTTP/1.1 " + status), pieces
    # one address holding --max-connections-per-client (8) connections gets no more
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(8)]
    try:
        with socket.create_connection(("127.0.0.1", port)) as extra:
            extra.settimeout(5)
            assert extra.recv(10) == b""
    finally:
        for sock in held:
            sock.close()
    assert httpx.get(f"{url}/health/live").status_code == 200  # and the server carries on


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vitgender test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return certfile, keyfile


def test_tls_round_trip_with_a_verified_certificate(tiny_model, tmp_path):
    import ssl

    pytest.importorskip("cryptography", reason="the TLS test makes its certificate with cryptography")
    certfile, keyfile = _self_signed(tmp_path)
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vitgender.cli",
            "serve",
            "--port",
            str(port),
            "--model",
            str(tiny_model),
            "--ssl-certfile",
            str(certfile),
            "--ssl-keyfile",
            str(keyfile),
        ],
        env={**__import__("os").environ, "VITGENDER_API_KEYS": KEY_A},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"https://127.0.0.1:{port}"
    verify = ssl.create_default_context(cafile=str(certfile))
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(f"{url}/health/ready", verify=verify, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        response = httpx.post(
            url, content=EXAMPLE.read_bytes(), verify=verify, headers={"authorization": f"Bearer {KEY_A}"}
        )
        assert response.status_code == 200 and {p["label"] for p in response.json()} == {"female", "male"}
        with pytest.raises(httpx.ConnectError):  # an unverified certificate is refused by a normal client
            httpx.get(f"{url}/health/live")
        with pytest.raises(httpx.HTTPError):  # and plain HTTP gets no answer
            httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=3)
    finally:
        proc.terminate()
        proc.wait(timeout=30)

"""An HTTP endpoint with the HuggingFace Inference API's image-classification contract.

`POST /` or `POST /models/{model_id}` with raw image bytes, or JSON
`{"inputs": "<base64>", "parameters": {"top_k": int, "function_to_apply": ...}}`, answers
`[{"label", "score"}, ...]` sorted by score, so `huggingface_hub.InferenceClient` works
unchanged (also with `token=`: the `Gate` checks `Authorization: Bearer` keys and rate limits
before any route runs). Errors are `{"error": ...}` with HF's status codes (400, 401, 408, 413,
422, 429 + Retry-After, 503 + estimated_time while loading). Requests go through the dynamic
batcher; decoding and preprocessing run in the thread pool, never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.datastructures import Headers

from vitgender.errors import VitgenderError
from vitgender.preprocess import Preprocessor
from vitgender.serving.auth import Caller, Gate, KeyRing, Rejection
from vitgender.serving.batcher import DynamicBatcher, QueueFull
from vitgender.serving.describe import describe
from vitgender.serving.protocol import HTTPError, respond

DEMO_PAGE = Path(__file__).with_name("demo.html")
RANKING_SCRIPT = Path(__file__).with_name("static") / "ranking.js"


@dataclass
class ServeSettings:
    model: str | None = None
    runtime: str = "torch"
    max_batch_size: int = 16
    max_wait_ms: float = 5.0
    max_queue: int = 256
    max_body_bytes: int = 2 * 1024 * 1024
    threads: int | None = None
    tta: str | None = None
    expected_load_seconds: float = 10.0
    detector: str = "haar"
    max_faces: int = 20
    alpha: str | None = None  # replaces the model's alpha policy (white, black, drop); None keeps it
    body_timeout_s: float = 30.0
    max_header_bytes: int = 16 * 1024


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "vitgender_requests", "Inference requests by HTTP status", ["status"], registry=self.registry
        )
        self.latency = Histogram(
            "vitgender_request_seconds",
            "End-to-end request latency",
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.batch_size = Histogram(
            "vitgender_batch_size",
            "Images per Runner call",
            registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
        )
        self.batch_seconds = Histogram("vitgender_batch_seconds", "Runner call duration", registry=self.registry)
        self.queue_depth = Gauge("vitgender_queue_depth", "Images waiting for a batch", registry=self.registry)
        self.rejections = Counter(
            "vitgender_rejections", "Requests refused before inference", ["reason"], registry=self.registry
        )
        self.auth_failures = Counter(
            "vitgender_auth_failures",
            "Requests refused with 401 (never labelled by key)",
            ["reason"],
            registry=self.registry,
        )

    def count(self, rejection: Rejection) -> None:
        (self.auth_failures if rejection.status == 401 else self.rejections).labels(rejection.reason).inc()


ACCESS_LOG = logging.getLogger("vitgender.access")


def enable_access_log() -> None:
    """One line per request on stdout, uvicorn's layout plus the caller's key id (never the key)."""
    if not ACCESS_LOG.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("INFO:     %(message)s"))
        ACCESS_LOG.addHandler(handler)
        ACCESS_LOG.setLevel(logging.INFO)
        ACCESS_LOG.propagate = False


def log_access(client: str | None, caller: Caller | None, method: str, path: str, version: str, status: int) -> None:
    if ACCESS_LOG.isEnabledFor(logging.INFO):
        key = caller.key_id if caller and caller.key_id else "-"
        ACCESS_LOG.info('%s - key %s - "%s %s HTTP/%s" %d', client or "-", key, method, path, version, status)


class GateMiddleware:
    """Pure ASGI: admit (auth, rate limit) before routing, count refusals, write the access line."""

    def __init__(self, app, gate: Gate, metrics: _Metrics, max_header_bytes: int) -> None:
        self.app, self.gate, self.metrics, self.max_header_bytes = app, gate, metrics, max_header_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        address = f"{client[0]}:{client[1]}" if client else None
        status = 500

        async def send_noting_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        caller = None
        try:
            # h11 bounds a head that arrives in pieces; this bounds one that arrived whole
            if sum(len(k) + len(v) + 4 for k, v in scope["headers"]) > self.max_header_bytes:
                raise Rejection(
                    431,
                    f"request headers are over the limit of {self.max_header_bytes} bytes",
                    "headers_too_large",
                    {"Connection": "close"},
                )
            caller = self.gate.admit(
                scope["method"], scope["path"], Headers(scope=scope).get("authorization"), client[0] if client else None
            )
        except Rejection as rejection:
            self.metrics.count(rejection)
            await _error(rejection.status, rejection.message, headers=rejection.headers)(
                scope, receive, send_noting_status
            )
        else:
            await self.app(scope, receive, send_noting_status)
        finally:
            log_access(address, caller, scope["method"], scope["path"], scope.get("http_version", "1.1"), status)


class _State:
    """The model is loaded in a background thread so the server answers 503 + estimated_time meanwhile."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.runner = None
        self.preprocessor: Preprocessor | None = None
        self.batcher: DynamicBatcher | None = None
        self.load_error: str | None = None
        self.started = time.monotonic()
        self.ready = asyncio.Event()
        self._detector = None
        self._detector_lock = threading.Lock()

    def detector(self):
        """The face detector, loaded on the first face-first request (most deployments never use it)."""
        with self._detector_lock:
            if self._detector is None:
                from vitgender.faces import open_detector

                self._detector = open_detector(self.settings.detector)
            return self._detector


def _error(status: int, message: str, headers: dict[str, str] | None = None, **extra) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def create_app(
    settings: ServeSettings,
    open_runner=None,
    announce: Callable[[str], None] = lambda line: None,
    gate: Gate | None = None,
) -> FastAPI:
    """`open_runner()` builds the Runner (injected by tests; default: vitgender.runtimes).

    `announce` receives the lifecycle lines an operator wants in the log: model loaded (or
    failed), draining, stopped. `gate` decides who may call (default: anyone, no rate limit).
    """
    metrics = _Metrics()
    gate = gate or Gate(KeyRing(frozenset()))
    state = _State(settings)

    def load() -> None:
        try:
            if open_runner is not None:
                runner = open_runner()
            else:
                from vitgender.runtimes import open_runner as opener

                options = {"threads": settings.threads} if settings.threads else {}
                runner = opener(settings.runtime, settings.model, tta=settings.tta, alpha=settings.alpha, **options)
            if hasattr(runner, "warm_up"):  # a runner that compiles per batch size (pt2-int8) does it before ready
                runner.warm_up(settings.max_batch_size)
            state.preprocessor = Preprocessor(runner.info.preprocess)
            state.runner = runner
        except VitgenderError as exc:
            state.load_error = str(exc)
        except Exception as exc:  # noqa: BLE001 - reported on /health/ready and in 503s
            state.load_error = f"{type(exc).__name__}: {exc}"
        if state.load_error:
            announce(f"model failed to load: {state.load_error} (answering 500 until restarted)")
        else:
            info = state.runner.info
            announce(
                f"ready: {info.source} ({info.runtime}, {info.precision}, labels {', '.join(info.labels)}) "
                f"in {time.monotonic() - state.started:.1f} s"
            )
            if not info.batch_invariant and settings.max_batch_size > 1:
                announce(
                    f"warning: {info.runtime} {info.precision} derives activation scales from the whole batch, "
                    "so an image's answer depends on the other requests batched with it; serve a static int8 "
                    "artifact (onnx-int8-static) or pass --max-batch-size 1"
                )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loop = asyncio.get_running_loop()

        def load_then_signal() -> None:
            load()
            loop.call_soon_threadsafe(state.ready.set)

        threading.Thread(target=load_then_signal, name="vitgender-load", daemon=True).start()
        watcher = asyncio.create_task(_start_batcher_when_ready())
        yield
        watcher.cancel()
        if state.batcher is not None:
            announce(f"stopping: draining {state.batcher.depth} queued image(s)")
            await state.batcher.drain()
        announce("stopped")

    async def _start_batcher_when_ready() -> None:
        await state.ready.wait()
        if state.runner is None:
            return

        def observe(size: int, seconds: float) -> None:
            metrics.batch_size.observe(size)
            metrics.batch_seconds.observe(seconds)

        batcher = DynamicBatcher(
            state.runner.run,
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            max_queue=settings.max_queue,
            on_batch=observe,
        )
        batcher.start()
        state.batcher = batcher

    app = FastAPI(title="vitgender", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.vitgender = state
    app.add_middleware(GateMiddleware, gate=gate, metrics=metrics, max_header_bytes=settings.max_header_bytes)

    async def read_body(request: Request) -> bytes:
        """The body, within the size limit (413) and the time limit (408: a trickled body holds no worker forever)."""
        limit = settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise HTTPError(413, f"payload is {int(declared)} bytes, over the limit of {limit}")
        chunks, size = [], 0
        try:
            async with asyncio.timeout(settings.body_timeout_s):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise HTTPError(413, f"payload is over the limit of {limit} bytes")
                    chunks.append(chunk)
        except TimeoutError:
            raise HTTPError(408, f"request body not received within {settings.body_timeout_s:g} s") from None
        return b"".join(chunks)

    async def infer(request: Request) -> Response:
        began = time.perf_counter()
        response = await _infer(request)
        metrics.requests.labels(str(response.status_code)).inc()
        metrics.latency.observe(time.perf_counter() - began)
        response.headers["x-compute-time"] = f"{time.perf_counter() - began:.6f}"
        return response

    async def _infer(request: Request) -> Response:
        if state.batcher is None:
            if state.load_error:
                return _error(500, f"model failed to load: {state.load_error}")
            remaining = max(settings.expected_load_seconds - (time.monotonic() - state.started), 1.0)
            return _error(
                503,
                f"Model {settings.model or 'vitgender-default'} is currently loading",
                estimated_time=round(remaining, 1),
            )
        try:
            body = await read_body(request)
        except HTTPError as exc:
            metrics.rejections.labels("payload_too_large" if exc.status == 413 else "body_timeout").inc()
            return JSONResponse(exc.body(), status_code=exc.status, headers={"Connection": "close"})

        async def batched(inputs):
            try:
                metrics.queue_depth.set(state.batcher.depth)
                return await asyncio.gather(*(state.batcher.submit(row) for row in inputs))
            except QueueFull:
                metrics.rejections.labels("queue_full").inc()
                raise HTTPError(
                    429, "server is overloaded: the request queue is full", headers={"Retry-After": "1"}
                ) from None
            finally:
                metrics.queue_depth.set(state.batcher.depth)

        try:
            status, payload, headers = await respond(
                body,
                request.headers.get("content-type", ""),
                state.runner,
                state.preprocessor,
                state.detector,
                settings.max_faces,
                batched,
            )
        except VitgenderError as exc:
            return _error(500, str(exc))
        return JSONResponse(payload, status_code=status, headers=headers)

    app.add_api_route("/", infer, methods=["POST"])
    app.add_api_route("/models/{model_id:path}", infer, methods=["POST"])

    @app.get("/", response_class=HTMLResponse)
    async def demo() -> HTMLResponse:
        return HTMLResponse(DEMO_PAGE.read_text())

    @app.get("/static/ranking.js")
    async def ranking_script() -> Response:
        return Response(RANKING_SCRIPT.read_text(), media_type="text/javascript")

    @app.get("/health/live")
    async def live() -> dict:
        return {"status": "alive"}

    @app.get("/health/ready")
    async def ready() -> Response:
        if state.batcher is not None:
            if gate.keys.enabled:  # open to load balancers, so it names nothing about the model
                return JSONResponse({"status": "ready"})
            return JSONResponse(
                {
                    "status": "ready",
                    "model": state.runner.info.source,
                    "runtime": state.runner.info.runtime,
                    "labels": list(state.runner.info.labels),
                }
            )
        if state.load_error:
            return _error(500, f"model failed to load: {state.load_error}")
        return _error(503, "loading", estimated_time=settings.expected_load_seconds)

    @app.get("/info")
    async def info() -> Response:
        """What the demo page shows: the model, its labels, a task description (behind the key, like inference)."""
        if state.runner is None:
            return _error(503, "loading", estimated_time=settings.expected_load_seconds)
        return JSONResponse(
            {
                "model": state.runner.info.source,
                "runtime": state.runner.info.runtime,
                **describe(settings.model, state.runner.info.labels),
            }
        )

    @app.get("/metrics")
    async def prometheus() -> Response:
        if state.batcher is not None:
            metrics.queue_depth.set(state.batcher.depth)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app

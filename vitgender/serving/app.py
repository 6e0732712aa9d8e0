"""An HTTP endpoint with the HuggingFace Inference API's image-classification contract.

`POST /` or `POST /models/{model_id}` with raw image bytes, or JSON
`{"inputs": "<base64>", "parameters": {"top_k": int, "function_to_apply": ...}}`, answers
`[{"label", "score"}, ...]` sorted by score, so `huggingface_hub.InferenceClient` works
unchanged. Errors are `{"error": ...}` with HF's status codes (400, 413, 422, 429 + Retry-After,
503 + estimated_time while loading). Requests go through the dynamic batcher; decoding and
preprocessing run in the thread pool, never on the event loop.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.concurrency import run_in_threadpool

from vitgender.errors import ImageError, VitgenderError
from vitgender.preprocess import Preprocessor
from vitgender.serving.batcher import DynamicBatcher, QueueFull
from vitgender.serving.protocol import HTTPError, answer, parse_request, prepare

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


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("vitgender_requests", "Inference requests by HTTP status", ["status"], registry=self.registry)
        self.latency = Histogram("vitgender_request_seconds", "End-to-end request latency", registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.batch_size = Histogram("vitgender_batch_size", "Images per Runner call", registry=self.registry,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.batch_seconds = Histogram("vitgender_batch_seconds", "Runner call duration", registry=self.registry)
        self.queue_depth = Gauge("vitgender_queue_depth", "Images waiting for a batch", registry=self.registry)
        self.rejections = Counter("vitgender_rejections", "Requests refused before inference", ["reason"],
                                  registry=self.registry)


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


def _error(status: int, message: str, **extra) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def create_app(settings: ServeSettings, open_runner=None, announce: Callable[[str], None] = lambda line: None) -> FastAPI:
    """`open_runner()` builds the Runner (injected by tests; default: vitgender.runtimes).

    `announce` receives the lifecycle lines an operator wants in the log: model loaded (or
    failed), draining, stopped.
    """
    metrics = _Metrics()
    state = _State(settings)

    def load() -> None:
        try:
            if open_runner is not None:
                runner = open_runner()
            else:
                from vitgender.runtimes import open_runner as opener

                options = {"threads": settings.threads} if settings.threads else {}
                runner = opener(settings.runtime, settings.model, tta=settings.tta, alpha=settings.alpha, **options)
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
            announce(f"ready: {info.source} ({info.runtime}, {info.precision}, labels {', '.join(info.labels)}) "
                     f"in {time.monotonic() - state.started:.1f} s")
            if not info.batch_invariant and settings.max_batch_size > 1:
                announce(f"warning: {info.runtime} {info.precision} derives activation scales from the whole batch, "
                         "so an image's answer depends on the other requests batched with it; serve a static int8 "
                         "artifact (onnx-int8-static) or pass --max-batch-size 1")

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

        batcher = DynamicBatcher(state.runner.run, max_batch_size=settings.max_batch_size,
                                 max_wait_ms=settings.max_wait_ms, max_queue=settings.max_queue, on_batch=observe)
        batcher.start()
        state.batcher = batcher

    app = FastAPI(title="vitgender", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.vitgender = state

    async def read_body(request: Request) -> bytes | JSONResponse:
        limit = settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            return _error(413, f"payload is {int(declared)} bytes, over the limit of {limit}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                return _error(413, f"payload is over the limit of {limit} bytes")
            chunks.append(chunk)
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
            return _error(503, f"Model {settings.model or 'vitgender-default'} is currently loading",
                          estimated_time=round(remaining, 1))
        body = await read_body(request)
        if isinstance(body, JSONResponse):
            metrics.rejections.labels("payload_too_large").inc()
            return body
        try:
            image, params = parse_request(body, request.headers.get("content-type", ""),
                                          len(state.runner.info.labels))
            detector = state.detector() if params.faces else None
            faces, inputs = await run_in_threadpool(prepare, state.runner, state.preprocessor, image, params,
                                                    detector, settings.max_faces)
        except HTTPError as exc:
            return JSONResponse(exc.body(), status_code=exc.status)
        except ImageError as exc:
            return _error(400, f"cannot decode image: {exc.why}")
        except VitgenderError as exc:
            return _error(500, str(exc))
        try:
            metrics.queue_depth.set(state.batcher.depth)
            logits = await asyncio.gather(*(state.batcher.submit(row) for row in inputs))
        except QueueFull:
            metrics.rejections.labels("queue_full").inc()
            return JSONResponse({"error": "server is overloaded: the request queue is full"}, status_code=429,
                                headers={"Retry-After": "1"})
        finally:
            metrics.queue_depth.set(state.batcher.depth)
        return JSONResponse(answer(logits, state.runner.info.labels, params, faces))

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
            return JSONResponse({"status": "ready", "model": state.runner.info.source,
                                 "runtime": state.runner.info.runtime, "labels": list(state.runner.info.labels)})
        if state.load_error:
            return _error(500, f"model failed to load: {state.load_error}")
        return _error(503, "loading", estimated_time=settings.expected_load_seconds)

    @app.get("/metrics")
    async def prometheus() -> Response:
        if state.batcher is not None:
            metrics.queue_depth.set(state.batcher.depth)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app

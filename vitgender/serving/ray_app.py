"""Scale-out: the same HF-compatible endpoint as a Ray Serve deployment with autoscaling.

Each replica holds one Runner; `@serve.batch` groups concurrent requests into one Runner call
(Ray's batching replaces the single-process DynamicBatcher); `autoscaling_config` adds replicas
when ongoing requests per replica exceed the target and removes them when load falls. On a
multi-node cluster: `ray start --head` on one node, `ray start --address=<head>:6379` on the
others, then `vitgender serve --ray --ray-address auto` from any node.

Requests pass the same `Gate` (bearer keys) and the same `respond` (decoding in a worker thread)
as the single-process server. Key digests live in a small `KeyStore` actor owned by the driver;
each replica refreshes its copy at most once a second, so SIGHUP on the driver reloads the key
file on every replica without restarting one or dropping a request.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from vitgender.errors import UsageError
from vitgender.serving.auth import Gate, KeyRing, Rejection, read_keys
from vitgender.serving.protocol import respond

KEYS_REFRESH_S = 1.0
KEYS_NAMESPACE = "vitgender"


@dataclass
class RayServeOptions:
    min_replicas: int = 1
    max_replicas: int = 4
    target_ongoing_requests: float = 4.0
    max_batch_size: int = 16
    batch_wait_timeout_s: float = 0.005
    upscale_delay_s: float = 2.0
    downscale_delay_s: float = 10.0
    num_cpus_per_replica: float = 1.0
    tta: str | None = None  # "flip": horizontal-flip test-time averaging in every replica
    alpha: str | None = None  # replaces the model's alpha policy (white, black, drop); None keeps it
    threads: int | None = None  # intra-op threads per replica
    max_queued_requests: int = -1  # Ray's per-handle queue bound (-1: none); Ray answers 503 beyond it
    access_log: bool = True
    public_metrics: bool = False
    body_timeout_s: float = 30.0
    keep_alive_s: int = 5


@ray.remote(num_cpus=0)
class KeyStore:
    """The accepted key digests (never keys), versioned so replicas copy them only when they change."""

    def __init__(self, digests: list[bytes]) -> None:
        self.version, self.digests = 0, digests

    def replace(self, digests: list[bytes]) -> int:
        self.version, self.digests = self.version + 1, digests
        return self.version

    def snapshot(self, version: int) -> tuple[int, list[bytes] | None]:
        return self.version, (self.digests if version != self.version else None)


@serve.deployment
class VitGenderDeployment:
    def __init__(
        self,
        model: str | None,
        runtime: str,
        max_body_bytes: int,
        max_batch_size: int,
        batch_wait_timeout_s: float,
        detector: str = "haar",
        max_faces: int = 20,
        tta: str | None = None,
        alpha: str | None = None,
        threads: int | None = None,
        key_store: str | None = None,
        digests: list[bytes] | None = None,
        public_metrics: bool = False,
        access_log: bool = True,
        body_timeout_s: float = 30.0,
    ) -> None:
        from ray.util.metrics import Counter

        from vitgender.preprocess import Preprocessor
        from vitgender.runtimes import open_runner
        from vitgender.serving.app import enable_access_log

        self.model = model
        self.runner = open_runner(runtime, model, tta=tta, alpha=alpha, **({"threads": threads} if threads else {}))
        self.preprocessor = Preprocessor(self.runner.info.preprocess)
        self.max_body_bytes, self.body_timeout_s = max_body_bytes, body_timeout_s
        self.detector_name, self.max_faces, self._detector = detector, max_faces, None
        self.gate = Gate(KeyRing(frozenset(digests or ())), public_metrics=public_metrics)
        self.key_store = ray.get_actor(key_store, namespace=KEYS_NAMESPACE) if key_store else None
        self.keys_version, self.keys_checked = 0, time.monotonic()
        self.failures = Counter(
            "vitgender_auth_failures", "Requests refused with 401 (never labelled by key)", tag_keys=("reason",)
        )
        self.rejections = Counter("vitgender_rejections", "Requests refused before inference", tag_keys=("reason",))
        self.access_log = access_log
        if access_log:
            enable_access_log()
        self._logits.set_max_batch_size(max_batch_size)
        self._logits.set_batch_wait_timeout_s(batch_wait_timeout_s)

    @serve.batch
    async def _logits(self, images: list[np.ndarray]) -> list[np.ndarray]:
        return list(self.runner.run(np.stack(images)))

    def detector(self):
        if self._detector is None:
            from vitgender.faces import open_detector

            self._detector = open_detector(self.detector_name)
        return self._detector

    async def _refresh_keys(self) -> None:
        if self.key_store is None or time.monotonic() - self.keys_checked < KEYS_REFRESH_S:
            return
        self.keys_checked = time.monotonic()
        version, digests = await self.key_store.snapshot.remote(self.keys_version)
        if digests is not None:
            self.gate.keys.replace(frozenset(digests))
            self.keys_version = version

    async def __call__(self, request: Request) -> JSONResponse:
        from vitgender.serving.app import log_access

        await self._refresh_keys()
        client = request.client.host if request.client else None
        caller = None
        try:
            caller = self.gate.admit(request.method, request.url.path, request.headers.get("authorization"), client)
            response = await self._answer(request)
        except Rejection as rejection:
            (self.failures if rejection.status == 401 else self.rejections).inc(tags={"reason": rejection.reason})
            response = JSONResponse(
                {"error": rejection.message}, status_code=rejection.status, headers=rejection.headers
            )
        if self.access_log:
            log_access(
                client,
                caller,
                request.method,
                request.url.path,
                request.scope.get("http_version", "1.1"),
                response.status_code,
            )
        return response

    async def _answer(self, request: Request) -> JSONResponse:
        from vitgender.serving.describe import describe

        info = self.runner.info
        if request.method == "GET":
            if request.url.path in ("/health/live", "/health/ready"):
                open_ = {} if self.gate.keys.enabled else {"labels": list(info.labels)}
                return JSONResponse({"status": "ready", **open_})
            if request.url.path == "/info":
                return JSONResponse(
                    {"model": info.source, "runtime": info.runtime, **describe(self.model, info.labels)}
                )
            return JSONResponse({"error": "not found"}, status_code=404)
        try:
            body = await asyncio.wait_for(request.body(), self.body_timeout_s)
        except TimeoutError:
            raise Rejection(
                408, f"request body not received within {self.body_timeout_s:g} s", "body_timeout"
            ) from None
        if len(body) > self.max_body_bytes:
            raise Rejection(413, f"payload is over the limit of {self.max_body_bytes} bytes", "payload_too_large")

        async def batched(inputs):
            return await asyncio.gather(*(self._logits(row) for row in inputs))

        status, payload, headers = await respond(
            body,
            request.headers.get("content-type", ""),
            self.runner,
            self.preprocessor,
            self.detector,
            self.max_faces,
            batched,
        )
        return JSONResponse(payload, status_code=status, headers=headers)


def build_app(
    model: str | None,
    runtime: str,
    options: RayServeOptions,
    max_body_bytes: int = 2 * 1024 * 1024,
    detector: str = "haar",
    max_faces: int = 20,
    key_store: str | None = None,
    digests: frozenset[bytes] = frozenset(),
):
    """A bound Ray Serve application; `serve.run(build_app(...))` deploys it.

    With `digests`, requests need a key; `key_store` names the KeyStore actor replicas refresh them from.
    """
    deployment = VitGenderDeployment.options(
        autoscaling_config={
            "min_replicas": options.min_replicas,
            "max_replicas": options.max_replicas,
            "target_ongoing_requests": options.target_ongoing_requests,
            "upscale_delay_s": options.upscale_delay_s,
            "downscale_delay_s": options.downscale_delay_s,
            # deprecated in Ray 2.60 in favour of process-wide environment variables, but still the
            # only per-deployment way to report load every second instead of every 10 s
            "metrics_interval_s": 1.0,
            "look_back_period_s": 2.0,
        },
        ray_actor_options={"num_cpus": options.num_cpus_per_replica},
        max_ongoing_requests=max(2 * options.max_batch_size, 8),
        max_queued_requests=options.max_queued_requests,
    )
    return deployment.bind(
        model,
        runtime,
        max_body_bytes,
        options.max_batch_size,
        options.batch_wait_timeout_s,
        detector,
        max_faces,
        options.tta,
        options.alpha,
        options.threads,
        key_store,
        sorted(digests),
        options.public_metrics,
        options.access_log,
        options.body_timeout_s,
    )


def run_ray_serve(
    model: str | None,
    runtime: str,
    options: RayServeOptions,
    *,
    host: str,
    port: int,
    address: str | None,
    max_body_bytes: int,
    detector: str,
    max_faces: int,
    key_file: Path | None = None,
    digests: frozenset[bytes] = frozenset(),
    ssl_certfile: Path | None = None,
    ssl_keyfile: Path | None = None,
    announce: Callable[[str], None] = print,
) -> None:
    """Deploy on Ray Serve and block until SIGINT or SIGTERM, then undeploy and disconnect.

    SIGTERM is how process managers and Kubernetes stop a service, so it drains exactly like
    Ctrl-C; Ray's own SIGTERM handler (which only logs) is replaced while this runs. SIGHUP
    re-reads the key file into the KeyStore actor.
    """
    ray.init(address=address, ignore_reinit_error=True)
    stop, hangup = threading.Event(), threading.Event()
    handlers = {signal.SIGINT: stop.set, signal.SIGTERM: stop.set, signal.SIGHUP: hangup.set}
    previous = {sig: signal.signal(sig, lambda *_, act=act: act()) for sig, act in handlers.items()}
    try:
        store_name = f"vitgender-keys-{port}" if digests else None
        store = KeyStore.options(name=store_name, namespace=KEYS_NAMESPACE).remote(sorted(digests)) if digests else None
        http = {"host": host, "port": port, "keep_alive_timeout_s": options.keep_alive_s}
        if ssl_certfile:
            http.update(ssl_certfile=str(ssl_certfile), ssl_keyfile=str(ssl_keyfile))
        serve.start(http_options=http)
        serve.run(
            build_app(model, runtime, options, max_body_bytes, detector, max_faces, store_name, digests),
            route_prefix="/",
        )
        scheme = "https" if ssl_certfile else "http"
        announce(f"Ray Serve deployment running on {scheme}://{host}:{port}/ (Ctrl-C or SIGTERM to stop)")
        while not stop.wait(0.5):
            if hangup.is_set():
                hangup.clear()
                announce(_reload(store, key_file))
        announce("stopping: undeploying and draining in-flight requests")
    finally:
        serve.shutdown()
        ray.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _reload(store, key_file: Path | None) -> str:
    if store is None:
        return "SIGHUP: auth is off, no keys to reload"
    try:
        digests = read_keys(key_file)
    except UsageError as exc:
        return f"SIGHUP: keeping the keys loaded before: {exc}"
    ray.get(store.replace.remote(sorted(digests)))
    return f"SIGHUP: reloaded {len(digests)} key(s); replicas pick them up within {KEYS_REFRESH_S:g} s"

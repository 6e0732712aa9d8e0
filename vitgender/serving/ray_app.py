"""Scale-out: the same HF-compatible endpoint as a Ray Serve deployment with autoscaling.

Each replica holds one Runner; `@serve.batch` groups concurrent requests into one Runner call
(Ray's batching replaces the single-process DynamicBatcher); `autoscaling_config` adds replicas
when ongoing requests per replica exceed the target and removes them when load falls. On a
multi-node cluster: `ray start --head` on one node, `ray start --address=<head>:6379` on the
others, then `vitgender serve --ray --ray-address auto` from any node.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from vitgender.errors import ImageError
from vitgender.serving.protocol import HTTPError, answer, parse_request, prepare


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


@serve.deployment
class VitGenderDeployment:
    def __init__(self, model: str | None, runtime: str, max_body_bytes: int, max_batch_size: int,
                 batch_wait_timeout_s: float, detector: str = "haar", max_faces: int = 20,
                 tta: str | None = None, alpha: str | None = None) -> None:
        from vitgender.preprocess import Preprocessor
        from vitgender.runtimes import open_runner

        self.runner = open_runner(runtime, model, tta=tta, alpha=alpha)
        self.preprocessor = Preprocessor(self.runner.info.preprocess)
        self.max_body_bytes = max_body_bytes
        self.detector_name, self.max_faces, self._detector = detector, max_faces, None
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

    async def __call__(self, request: Request) -> JSONResponse:
        if request.method == "GET":
            return JSONResponse({"status": "ready", "labels": list(self.runner.info.labels)})
        body = await request.body()
        if len(body) > self.max_body_bytes:
            return JSONResponse({"error": f"payload is over the limit of {self.max_body_bytes} bytes"}, status_code=413)
        try:
            image, params = parse_request(body, request.headers.get("content-type", ""), len(self.runner.info.labels))
            faces, inputs = prepare(self.runner, self.preprocessor, image, params,
                                    self.detector() if params.faces else None, self.max_faces)
        except HTTPError as exc:
            return JSONResponse(exc.body(), status_code=exc.status)
        except ImageError as exc:
            return JSONResponse({"error": f"cannot decode image: {exc.why}"}, status_code=400)
        logits = await asyncio.gather(*(self._logits(row) for row in inputs))
        return JSONResponse(answer(logits, self.runner.info.labels, params, faces))


def build_app(model: str | None, runtime: str, options: RayServeOptions, max_body_bytes: int = 2 * 1024 * 1024,
              detector: str = "haar", max_faces: int = 20):
    """A bound Ray Serve application; `serve.run(build_app(...))` deploys it."""
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
    )
    return deployment.bind(model, runtime, max_body_bytes, options.max_batch_size, options.batch_wait_timeout_s,
                           detector, max_faces, options.tta, options.alpha)


def run_ray_serve(model: str | None, runtime: str, options: RayServeOptions, *, host: str, port: int,
                  address: str | None, max_body_bytes: int, detector: str, max_faces: int,
                  announce: Callable[[str], None] = print) -> None:
    """Deploy on Ray Serve and block until SIGINT or SIGTERM, then undeploy and disconnect.

    SIGTERM is how process managers and Kubernetes stop a service, so it drains exactly like
    Ctrl-C; Ray's own SIGTERM handler (which only logs) is replaced while this runs.
    """
    import ray

    ray.init(address=address, ignore_reinit_error=True)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(build_app(model, runtime, options, max_body_bytes, detector, max_faces), route_prefix="/")
        announce(f"Ray Serve deployment running on http://{host}:{port}/ (Ctrl-C or SIGTERM to stop)")
        while not stop.wait(0.5):
            pass
        announce("stopping: undeploying and draining in-flight requests")
    finally:
        serve.shutdown()
        ray.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)

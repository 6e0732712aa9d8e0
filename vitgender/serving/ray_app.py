"""Scale-out: the same HF-compatible endpoint as a Ray Serve deployment with autoscaling.

Each replica holds one Runner; `@serve.batch` groups concurrent requests into one Runner call
(Ray's batching replaces the single-process DynamicBatcher); `autoscaling_config` adds replicas
when ongoing requests per replica exceed the target and removes them when load falls. On a
multi-node cluster: `ray start --head` on one node, `ray start --address=<head>:6379` on the
others, then `vitgender serve --ray --ray-address auto` from any node.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

import numpy as np
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from vitgender.classify import apply_function, rank
from vitgender.errors import ImageError


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


@serve.deployment
class VitGenderDeployment:
    def __init__(self, model: str | None, runtime: str, max_body_bytes: int, max_batch_size: int,
                 batch_wait_timeout_s: float) -> None:
        from vitgender.preprocess import Preprocessor
        from vitgender.runtimes import open_runner

        self.runner = open_runner(runtime, model)
        self.preprocessor = Preprocessor(self.runner.info.preprocess)
        self.max_body_bytes = max_body_bytes
        self._logits.set_max_batch_size(max_batch_size)
        self._logits.set_batch_wait_timeout_s(batch_wait_timeout_s)

    @serve.batch
    async def _logits(self, images: list[np.ndarray]) -> list[np.ndarray]:
        return list(self.runner.run(np.stack(images)))

    async def __call__(self, request: Request) -> JSONResponse:
        from vitgender.preprocess import decode_image
        from vitgender.serving.app import _parse_parameters

        if request.method == "GET":
            return JSONResponse({"status": "ready", "labels": list(self.runner.info.labels)})
        body = await request.body()
        if len(body) > self.max_body_bytes:
            return JSONResponse({"error": f"payload is over the limit of {self.max_body_bytes} bytes"}, status_code=413)
        params = None
        if body.lstrip()[:1] == b"{":
            try:
                payload = json.loads(body)
                body = base64.b64decode(payload["inputs"], validate=True)
            except (json.JSONDecodeError, KeyError, TypeError, binascii.Error, ValueError):
                return JSONResponse({"error": "expected {\"inputs\": \"<base64>\"}"}, status_code=400)
            params = _parse_parameters(payload.get("parameters"), len(self.runner.info.labels))
            if isinstance(params, JSONResponse):
                return params
            if params.faces or params.min_confidence is not None:
                return JSONResponse({"error": "faces/min_confidence are served by 'vitgender serve' without --ray"},
                                    status_code=422)
        try:
            pixels = self.preprocessor([decode_image(body)])[0]
        except ImageError as exc:
            return JSONResponse({"error": f"cannot decode image: {exc.why}"}, status_code=400)
        logits = await self._logits(pixels)
        function = params.function_to_apply if params else "softmax"
        scores = apply_function(logits[None].astype("float32"), function)[0]
        return JSONResponse(rank(scores, self.runner.info.labels, params.top_k if params else None))


def build_app(model: str | None, runtime: str, options: RayServeOptions, max_body_bytes: int = 2 * 1024 * 1024):
    """A bound Ray Serve application; `serve.run(build_app(...))` deploys it."""
    deployment = VitGenderDeployment.options(
        autoscaling_config={
            "min_replicas": options.min_replicas,
            "max_replicas": options.max_replicas,
            "target_ongoing_requests": options.target_ongoing_requests,
            "upscale_delay_s": options.upscale_delay_s,
            "downscale_delay_s": options.downscale_delay_s,
            "metrics_interval_s": 1.0,
            "look_back_period_s": 2.0,
        },
        ray_actor_options={"num_cpus": options.num_cpus_per_replica},
        max_ongoing_requests=max(2 * options.max_batch_size, 8),
    )
    return deployment.bind(model, runtime, max_body_bytes, options.max_batch_size, options.batch_wait_timeout_s)

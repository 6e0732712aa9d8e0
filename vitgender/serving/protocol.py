"""The HF Inference API image-classification contract, as pure functions shared by both servers.

`parse_request` turns a body into image bytes + parameters (or an HTTP error), `prepare` turns
the image into Runner inputs (whole frame, or one crop per detected face), and `answer` turns
logits back into the JSON the client expects. `respond` chains them with decoding in a worker
thread (never on the event loop); the single-process app and the Ray Serve deployment both call
it and differ only in the `logits_for` they pass: how the Runner call is batched.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np
from starlette.concurrency import run_in_threadpool

from vitgender.errors import ImageError
from vitgender.faces import Face, face_records, faces_and_crops
from vitgender.preprocess import Preprocessor
from vitgender.runtimes import Runner, runner_input
from vitgender.scoring import FUNCTIONS, apply_function, rank, with_uncertainty


class HTTPError(Exception):
    """An error answer: `{"error": message, **extra}` with `status` (and response `headers`)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None, **extra) -> None:
        super().__init__(message)
        self.status, self.message, self.extra, self.headers = status, message, extra, headers or {}

    def body(self) -> dict:
        return {"error": self.message, **self.extra}


@dataclass
class Parameters:
    top_k: int | None = None
    function_to_apply: str = "softmax"
    faces: bool = False  # vitgender extension: face-first mode
    min_confidence: float | None = None  # vitgender extension: answer "uncertain" below it


def parse_parameters(raw: object, labels: int) -> Parameters:
    if raw is None:
        return Parameters()
    if not isinstance(raw, dict):
        raise HTTPError(422, "parameters must be an object")
    unknown = set(raw) - {"top_k", "function_to_apply", "faces", "min_confidence"}
    if unknown:
        raise HTTPError(422, f"unknown parameter(s): {', '.join(sorted(unknown))}")
    top_k = raw.get("top_k")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise HTTPError(422, "top_k must be a positive integer")
    function = raw.get("function_to_apply") or "softmax"
    if function not in FUNCTIONS:
        raise HTTPError(422, f"function_to_apply must be one of {', '.join(FUNCTIONS)}")
    faces = raw.get("faces", False)
    if not isinstance(faces, bool):
        raise HTTPError(422, "faces must be true or false")
    threshold = raw.get("min_confidence")
    if threshold is not None and (
        isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1
    ):
        raise HTTPError(422, "min_confidence must be a number between 0 and 1")
    return Parameters(min(top_k, labels) if top_k else None, function, faces, threshold)


def parse_request(body: bytes, content_type: str, labels: int) -> tuple[bytes, Parameters]:
    """Raw image bytes (format sniffed later), or JSON `{"inputs": base64, "parameters": {...}}`."""
    if not body:
        raise HTTPError(400, 'empty request body: send image bytes or {"inputs": "<base64>"}')
    if not (content_type.startswith("application/json") or body.lstrip()[:1] == b"{"):
        return body, Parameters()
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise HTTPError(400, "body is not valid JSON") from None
    except RecursionError:  # e.g. 100,000 nested brackets: hostile, and Python's parser gives up
        raise HTTPError(400, "body JSON nests too deeply") from None
    inputs = payload.get("inputs") if isinstance(payload, dict) else None
    if not isinstance(inputs, str) or not inputs:
        raise HTTPError(400, "'inputs' must be a base64-encoded image string")
    try:
        image = base64.b64decode(inputs, validate=True)
    except (binascii.Error, ValueError):
        raise HTTPError(400, "'inputs' is not valid base64 (paths and URLs are not accepted)") from None
    return image, parse_parameters(payload.get("parameters"), labels)


def prepare(
    runner: Runner,
    preprocessor: Preprocessor,
    image_bytes: bytes,
    params: Parameters,
    detector=None,
    max_faces: int = 20,
) -> tuple[list[Face], np.ndarray]:
    """Decode (ImageError on bad bytes), optionally detect faces, and build the Runner's inputs."""
    image = preprocessor.decode(image_bytes)
    if params.faces:
        faces, crops = faces_and_crops(detector, image, max_faces)
        if not faces:
            raise HTTPError(422, "no face detected")
    else:
        faces, crops = [], [image]
    return faces, runner_input(runner, np.stack([preprocessor.resize(c) for c in crops]))


def answer(logits: list[np.ndarray], labels: tuple[str, ...], params: Parameters, faces: list[Face]) -> list:
    answers = []
    for row in logits:
        ranked = rank(
            apply_function(np.asarray(row, dtype=np.float32)[None], params.function_to_apply)[0], labels, params.top_k
        )
        answers.append(with_uncertainty(ranked, params.min_confidence))
    return face_records(faces, answers) if params.faces else answers[0]


async def respond(
    body: bytes,
    content_type: str,
    runner: Runner,
    preprocessor: Preprocessor,
    detector: Callable[[], object],
    max_faces: int,
    logits_for: Callable[[np.ndarray], Awaitable[list[np.ndarray]]],
) -> tuple[int, object, dict]:
    """(status, JSON body, headers) for one request. `detector()` is called only for face-first requests."""
    try:
        image, params = parse_request(body, content_type, len(runner.info.labels))
        found = await run_in_threadpool(detector) if params.faces else None  # the first call loads a model
        faces, inputs = await run_in_threadpool(prepare, runner, preprocessor, image, params, found, max_faces)
        logits = await logits_for(inputs)
    except HTTPError as exc:
        return exc.status, exc.body(), exc.headers
    except ImageError as exc:
        return 400, {"error": f"cannot decode image: {exc.why}"}, {}
    return 200, answer(logits, runner.info.labels, params, faces), {}

"""Property-based fuzzing of every parser that takes outside input.

Property: a correct result or a clean error of the documented kind (HTTP 4xx with {"error"},
or a UsageError subclass that the CLI prints as one line with exit 2) — never a 5xx, another
exception, or a hang. CI runs the deterministic `ci` profile; `benchmarks/fuzz.py` runs the
same properties with the `long` profile and reports the case counts.
"""

from __future__ import annotations

import io
import json
import math
import os
import struct
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="fuzzing needs the test extra: pip install .[test]")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from vitgender.errors import UsageError  # noqa: E402

settings.register_profile(
    "ci",
    max_examples=150,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "long",
    max_examples=int(os.environ.get("VITGENDER_FUZZ_EXAMPLES", "5000")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("VITGENDER_FUZZ_PROFILE", "ci"))

REPO = Path(__file__).resolve().parent.parent
FACE = sorted((REPO / "vitgender" / "reference" / "utkface-val-50").glob("*.jpg"))[0]

# JSON of any shape: scalars, nested lists and objects, and strings that look like our keys.
KEYS = st.sampled_from(["inputs", "parameters", "top_k", "function_to_apply", "faces", "min_confidence", "x"])
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True)
    | st.text(max_size=20)
    | st.sampled_from(["softmax", "sigmoid", "none", "aGVsbG8=", ""])
)
JSON = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4), max_leaves=20
)


def _images() -> dict[str, bytes]:
    """The face encoded in every format the decoder supports, to truncate and mutate."""
    from PIL import Image

    image = Image.open(FACE).convert("RGB").resize((48, 48))
    encoded = {}
    for fmt, mode in (
        ("JPEG", "RGB"),
        ("PNG", "RGBA"),
        ("WEBP", "RGB"),
        ("GIF", "P"),
        ("BMP", "RGB"),
        ("TIFF", "RGB"),
        ("PPM", "RGB"),
    ):
        buffer = io.BytesIO()
        image.convert(mode).save(buffer, fmt)
        encoded[fmt] = buffer.getvalue()
    return encoded


IMAGES = _images()


# --- HTTP request parsing --------------------------------------------------------------------


@given(body=st.binary(max_size=2048), json_type=st.booleans())
def test_request_parser_on_random_bytes(body, json_type):
    from vitgender.serving.protocol import HTTPError, parse_request

    try:
        image, params = parse_request(body, "application/json" if json_type else "", 2)
    except HTTPError as exc:
        assert 400 <= exc.status < 500 and exc.body()["error"]
    else:
        assert isinstance(image, bytes) and params.function_to_apply in ("softmax", "sigmoid", "none")


@given(payload=JSON)
def test_request_parser_on_json_of_any_shape(payload):
    from vitgender.serving.protocol import HTTPError, parse_request

    try:
        image, params = parse_request(json.dumps(payload).encode(), "application/json", 2)
    except HTTPError as exc:
        assert 400 <= exc.status < 500
    else:
        assert image and (params.top_k is None or 1 <= params.top_k <= 2)


@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_deeply_nested_json_is_a_400(depth):
    from vitgender.serving.protocol import HTTPError, parse_request

    for body in ("[" * depth + "]" * depth, '{"inputs":' + "[" * depth + "]" * depth + "}"):
        with pytest.raises(HTTPError) as info:
            parse_request(body.encode(), "application/json", 2)
        assert info.value.status == 400


@pytest.fixture(scope="module")
def client(tiny_model):
    pytest.importorskip("fastapi", reason="serving needs the serve extra")
    from fastapi.testclient import TestClient

    from vitgender.serving.app import ServeSettings, create_app

    with TestClient(create_app(ServeSettings(model=str(tiny_model), max_body_bytes=64 * 1024))) as test_client:
        for _ in range(600):  # the model loads in the background
            if test_client.get("/health/ready").status_code == 200:
                break
            import time

            time.sleep(0.1)
        yield test_client


@given(
    body=st.binary(max_size=4096) | JSON.map(lambda p: json.dumps(p).encode()),
    content_type=st.sampled_from(["", "application/json", "image/jpeg", "text/plain; charset=utf-8"]),
)
def test_server_never_answers_5xx(client, body, content_type):
    response = client.post("/", content=body, headers={"content-type": content_type} if content_type else {})
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert isinstance(response.json()["error"], str)


def test_server_survives_deep_json_on_the_same_connection(client):
    deep = b"[" * 100_000 + b"]" * 100_000
    assert client.post("/", content=deep, headers={"content-type": "application/json"}).status_code in (400, 413)
    assert client.post("/", content=IMAGES["JPEG"]).status_code == 200


# --- the Authorization header ------------------------------------------------------------------

FUZZ_KEY = "hf_" + "k" * 32
HEADER_TEXT = st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1"))
AUTHORIZATION = (
    st.none()
    | HEADER_TEXT
    | st.builds(
        lambda scheme, gap, token: f"{scheme}{gap}{token}",
        st.sampled_from(["Bearer", "bearer", "BEARER", "Basic", "Bearer:", "", "Token"]),
        st.sampled_from([" ", "  ", "\t", ""]),
        HEADER_TEXT | st.sampled_from([FUZZ_KEY, FUZZ_KEY + "=", FUZZ_KEY[:-1], FUZZ_KEY.upper()]),
    )
    | st.integers(0, 200_000).map(lambda n: "Bearer " + "a" * n)
)


@given(header=AUTHORIZATION)
def test_authorization_header_parser(header):
    from vitgender.serving.auth import KeyRing, Rejection, digest

    ring = KeyRing(frozenset({digest(FUZZ_KEY)}))
    try:
        caller = ring.authenticate(header)
    except Rejection as exc:
        assert exc.status == 401 and exc.reason in ("missing", "malformed", "invalid") and exc.message
        assert exc.headers["WWW-Authenticate"].startswith("Bearer")
    else:
        assert header.strip().split()[-1] == FUZZ_KEY and caller.key_id and FUZZ_KEY not in caller.key_id


@pytest.fixture(scope="module")
def secured_client(tiny_model):
    pytest.importorskip("fastapi", reason="serving needs the serve extra")
    from fastapi.testclient import TestClient

    from vitgender.serving.app import ServeSettings, create_app
    from vitgender.serving.auth import Gate, KeyRing, digest

    gate = Gate(KeyRing(frozenset({digest(FUZZ_KEY)})))
    with TestClient(create_app(ServeSettings(model=str(tiny_model)), gate=gate)) as test_client:
        yield test_client


@given(
    value=st.binary(max_size=2000).filter(lambda b: not set(b) & {0, 10, 13}).map(lambda b: b.strip(b" \t"))
    | st.sampled_from([f"Bearer {FUZZ_KEY}".encode(), b"Bearer " + "\u00e9".encode() * 30])
)
def test_server_answers_any_authorization_header_with_401_not_500(secured_client, value):
    response = secured_client.get("/info", headers={"authorization": value})
    assert response.status_code in (200, 401, 503), response.text
    if response.status_code == 401:
        assert isinstance(response.json()["error"], str) and response.headers["www-authenticate"].startswith("Bearer")


# --- image decoding --------------------------------------------------------------------------


def _decodes_or_image_error(data: bytes) -> None:
    from vitgender.errors import ImageError
    from vitgender.preprocess import decode_image

    try:
        image = decode_image(data, max_pixels=4_000_000)
    except ImageError as exc:
        assert exc.why
    else:
        assert image.mode == "RGB" and image.size[0] > 0 and image.size[1] > 0


@given(data=st.binary(max_size=4096))
def test_decoder_on_random_bytes(data):
    _decodes_or_image_error(data)


@given(fmt=st.sampled_from(sorted(IMAGES)), fraction=st.floats(0, 1))
def test_decoder_on_truncated_images(fmt, fraction):
    data = IMAGES[fmt]
    _decodes_or_image_error(data[: int(len(data) * fraction)])


@given(
    fmt=st.sampled_from(sorted(IMAGES)),
    edits=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=1, max_size=8),
)
def test_decoder_on_mutated_images(fmt, edits):
    data = bytearray(IMAGES[fmt])
    for position, value in edits:
        data[min(int(position * len(data)), len(data) - 1)] = value
    _decodes_or_image_error(bytes(data))


def test_decoder_regression_gif_whose_frame_header_is_cut():
    """Found by benchmarks/fuzz.py: Pillow raised IndexError (not an OSError) on this mutated GIF."""
    data = bytearray(IMAGES["GIF"])
    for position, value in [(465, 125), (1419, 33), (1368, 188), (46, 153)]:
        data[position] = value
    _decodes_or_image_error(bytes(data))


# --- checkpoint files --------------------------------------------------------------------------

TENSOR = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(["F32", "F16", "I8", "BF16", "F64", "X9"]) | st.integers(),
        "shape": st.lists(st.integers(-2, 10**12), max_size=4) | st.text(max_size=4),
        "data_offsets": st.lists(st.integers(-10, 10**12), max_size=3) | st.none(),
    }
)


@given(
    header=st.dictionaries(st.text(max_size=8), TENSOR | JSON, max_size=4),
    body=st.integers(0, 64),
    declared=st.none() | st.integers(0, 2**64 - 1),
)
def test_safetensors_header_validator(tmp_path_factory, header, body, declared):
    from vitgender.checkpoint import CheckpointError, validate_safetensors

    raw = json.dumps(header).encode()
    path = tmp_path_factory.mktemp("st") / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw) if declared is None else declared) + raw + b"\0" * body)
    try:
        tensors = validate_safetensors(path)
    except CheckpointError as exc:
        assert exc.why
    else:
        assert isinstance(tensors, dict)


@given(text=st.text(max_size=400) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_sha256sums_parser(tmp_path_factory, text):
    from vitgender.checkpoint import SHA256SUMS, CheckpointError, verify_sha256sums

    folder = tmp_path_factory.mktemp("sums")
    (folder / SHA256SUMS).write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        verify_sha256sums(folder)
    except CheckpointError as exc:
        assert exc.why


# --- export manifests and sidecars edited by hand ----------------------------------------------


@given(
    entry=st.dictionaries(
        st.sampled_from(["name", "format", "runtime", "precision", "path", "sha256", "input"]),
        SCALARS | st.sampled_from(["../../etc/passwd", "/abs", "model.onnx", "a" * 64, "fp32", "int8"]),
        max_size=6,
    )
    | JSON,
    top=st.sampled_from(["ok", "no-model", "list"]),
    schema=st.sampled_from([1, 2]),
)
def test_manifest_reader(tmp_path_factory, entry, top, schema):
    from vitgender.manifest import read_manifest, verify_artifact

    folder = tmp_path_factory.mktemp("manifest")
    (folder / "model.onnx").write_bytes(b"x")
    data = {"schema": schema, "model": {}, "artifacts": [entry]}  # 1: the previous schema, still read
    if top == "no-model":
        del data["model"]
    (folder / "manifest.json").write_text(json.dumps([data] if top == "list" else data))
    try:
        for item in read_manifest(folder)["artifacts"]:
            verify_artifact(folder, item)
    except UsageError as exc:
        assert exc.why


@given(
    data=st.dictionaries(st.sampled_from(["labels", "preprocessor", "precision", "architecture"]), JSON, max_size=4),
    preprocessor=st.dictionaries(
        st.sampled_from(["size", "image_mean", "image_std", "resample", "rescale_factor"]), JSON, max_size=5
    ),
)
def test_sidecar_reader(tmp_path_factory, data, preprocessor):
    from vitgender.runtimes.sidecar import read_sidecar

    folder = tmp_path_factory.mktemp("sidecar")
    data = {"labels": ["female", "male"], "preprocessor": preprocessor, **data}
    (folder / "model.onnx.json").write_text(json.dumps(data))
    try:
        sidecar = read_sidecar(folder / "model.onnx")
    except UsageError as exc:
        assert exc.why
    else:
        assert sidecar.labels and sidecar.preprocess.height > 0


# --- budget files and label CSVs -----------------------------------------------------------------


@given(
    data=JSON
    | st.dictionaries(
        st.sampled_from(["fp32", "int8", "fp33", "onnx", "tflite-int8"]),
        st.dictionaries(st.sampled_from(["max_abs_logit_diff", "top1_agreement", "nope"]), SCALARS, max_size=3)
        | SCALARS,
        max_size=3,
    ),
    as_toml=st.booleans(),
    raw=st.none() | st.binary(max_size=200),
)
def test_budget_file_loader(tmp_path_factory, data, as_toml, raw):
    from vitgender.validators.budgets import load_budgets

    path = tmp_path_factory.mktemp("budget") / ("budget.toml" if as_toml else "budget.json")
    if raw is not None:
        path.write_bytes(raw)
    elif as_toml:
        path.write_text(
            "\n".join(
                f"[{k}]\n" + "\n".join(f"{m} = {json.dumps(v)}" for m, v in v_.items())
                if isinstance(v_, dict)
                else f"{k} = {json.dumps(v_)}"
                for k, v_ in (data.items() if isinstance(data, dict) else [])
            )
        )
    else:
        path.write_text(json.dumps(data))
    try:
        budgets = load_budgets(path)
    except UsageError as exc:
        assert exc.why
    else:
        assert all(
            isinstance(v, (int, float)) and math.isfinite(v) for table in budgets.values() for v in table.values()
        )


@given(
    text=st.text(max_size=300) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
    header=st.sampled_from(["path,label\n", "path,label,age\n", "label\n", ""]),
)
def test_label_csv_loader(tmp_path_factory, text, header):
    from vitgender.data import csv_samples

    path = tmp_path_factory.mktemp("csv") / "labels.csv"
    path.write_bytes((header + text).encode("utf-8", "surrogatepass"))
    try:
        samples = csv_samples(path)
    except UsageError as exc:
        assert exc.why
    else:
        assert all(s.label and isinstance(s.path, Path) for s in samples)

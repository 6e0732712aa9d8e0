"""The alpha policy (white, black, drop): one decoding rule for classify, serve, Ray, validate and sidecars."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
from PIL import Image

from vitgender.preprocess import ALPHA_POLICIES, PreprocessConfig, Preprocessor, decode_image

# Four pixels whose alpha spans opaque to fully transparent; colours chosen so every policy differs.
PIXELS = np.array([[[200, 100, 50, 255], [200, 100, 50, 128]], [[10, 220, 90, 0], [255, 255, 255, 64]]], np.uint8)


def expected(policy: str) -> np.ndarray:
    """By hand: composite c * a + background * (1 - a), rounded; `drop` keeps the colour under the alpha."""
    rgb, a = PIXELS[..., :3].astype(np.float64), PIXELS[..., 3:].astype(np.float64) / 255
    if policy == "drop":
        return PIXELS[..., :3]
    background = 255.0 if policy == "white" else 0.0
    return np.rint(rgb * a + background * (1 - a)).astype(np.uint8)


@pytest.mark.parametrize("policy", ALPHA_POLICIES)
def test_each_policy_matches_the_hand_computed_pixels(policy):
    png = io.BytesIO()
    Image.fromarray(PIXELS, "RGBA").save(png, "PNG")
    decoded = np.asarray(decode_image(png.getvalue(), alpha=policy))
    assert np.abs(decoded.astype(int) - expected(policy)).max() <= 1  # Pillow's compositing rounds within 1
    assert decoded[0, 0].tolist() == [200, 100, 50]  # opaque pixels never change


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="white, black, drop"):
        decode_image(Image.new("RGB", (4, 4)), alpha="grey")
    with pytest.raises(ValueError, match="alpha policy"):
        PreprocessConfig.from_dict({"size": {"height": 8, "width": 8}, "alpha": "grey"})


@pytest.fixture
def rgba_png(tmp_path):
    """A random RGBA PNG with strongly varying alpha, so the policy changes the model's input."""
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, size=(48, 40, 4), dtype=np.uint8)
    pixels[..., 3] = np.where(rng.random((48, 40)) < 0.5, 0, pixels[..., 3])
    path = tmp_path / "alpha.png"
    Image.fromarray(pixels, "RGBA").save(path)
    return path


def test_drop_equals_the_transformers_pipeline(tiny_model, rgba_png):
    from transformers import pipeline

    import vitgender

    reference = pipeline("image-classification", model=str(tiny_model), device="cpu")(str(rgba_png), top_k=None)
    dropped = vitgender.load_classifier(tiny_model, alpha="drop").classify(str(rgba_png))[0]
    assert [p["label"] for p in dropped] == [p["label"] for p in reference]
    assert max(abs(a["score"] - b["score"]) for a, b in zip(dropped, reference, strict=False)) <= 1e-5
    white = vitgender.load_classifier(tiny_model).classify(str(rgba_png))[0]
    scores = {p["label"]: p["score"] for p in white}
    assert max(abs(scores[p["label"]] - p["score"]) for p in reference) > 1e-3, "fixture alpha must matter"


def test_policy_flows_into_the_sidecar_runners_and_serve(tiny_model, rgba_png, tmp_path):
    from fastapi.testclient import TestClient

    import vitgender
    from vitgender.exporters import ExportOptions, main_export
    from vitgender.runtimes import open_runner
    from vitgender.serving.app import ServeSettings, create_app

    exported = main_export(tiny_model, tmp_path / "export", "onnx", ExportOptions(alpha="drop"))
    sidecar = json.loads((exported / "model.onnx.json").read_text())
    assert sidecar["preprocessor"]["alpha"] == "drop"
    runner = open_runner("onnx", exported / "model.onnx")
    assert runner.info.preprocess.alpha == "drop"  # the runner reads what the export recorded...
    assert (
        open_runner("onnx", exported / "model.onnx", alpha="black").info.preprocess.alpha == "black"
    )  # ...--alpha wins

    def scores(predictions):
        return np.array([p["score"] for p in sorted(predictions, key=lambda p: p["label"])])

    torch_drop = scores(vitgender.load_classifier(tiny_model, alpha="drop").classify(str(rgba_png))[0])
    onnx_default = scores(vitgender.load_classifier(exported / "model.onnx", runtime="onnx").classify(str(rgba_png))[0])
    assert np.abs(onnx_default - torch_drop).max() <= 1e-4

    served = {}
    for name, settings in (
        ("artifact", ServeSettings(model=str(exported / "model.onnx"), runtime="onnx")),
        ("--alpha drop", ServeSettings(model=str(tiny_model), alpha="drop")),
        ("default", ServeSettings(model=str(tiny_model))),
    ):
        with TestClient(create_app(settings)) as client:
            deadline = time.time() + 60
            while client.get("/health/ready").status_code != 200 and time.time() < deadline:
                time.sleep(0.05)
            response = client.post("/", content=rgba_png.read_bytes(), headers={"content-type": "image/png"})
            assert response.status_code == 200, response.text
            served[name] = scores(response.json())
    assert np.abs(served["artifact"] - torch_drop).max() <= 1e-4
    assert np.abs(served["--alpha drop"] - torch_drop).max() <= 1e-5
    assert np.abs(served["default"] - torch_drop).max() > 1e-3  # white is the default, and it differs


def test_ray_decode_tasks_apply_the_policy(rgba_png):
    from dataclasses import replace

    from vitgender.batch.ray_classify import decode_batch

    config = PreprocessConfig(height=16, width=16)
    for policy in ALPHA_POLICIES:
        out = decode_batch({"image": np.array([str(rgba_png)], dtype=object)}, replace(config, alpha=policy), 10**7)
        by_hand = Preprocessor(config).resize(decode_image(rgba_png, alpha=policy))
        assert np.array_equal(out["pixels"][0], by_hand), policy

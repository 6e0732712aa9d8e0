"""Web artifacts run for real: transformers.js in Node and onnxruntime-web in headless Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="web export needs the onnx extra: pip install .[onnx]")

from vitgender.exporters import main_export  # noqa: E402
from vitgender.preprocess import Preprocessor, decode_image  # noqa: E402
from vitgender.runtimes import open_runner  # noqa: E402
from vitgender.validators.budgets import DEFAULT_BUDGETS, check  # noqa: E402
from vitgender.validators.metrics import compare_logits  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
WEB = REPO / "web"
REFERENCE = sorted((REPO / "vitgender" / "reference" / "utkface-val-50").glob("*.jpg"))
VARIANTS = {"model": ("fp32", "fp32"), "model_quantized": ("q8", "int8-dynamic"), "model_fp16": ("fp16", "fp16")}

needs_node = pytest.mark.skipif(
    not (shutil.which("node") and (WEB / "node_modules" / "@huggingface" / "transformers").is_dir()),
    reason="Node.js or web/node_modules missing (run: cd web && ONNXRUNTIME_NODE_INSTALL=skip npm ci)",
)
needs_chromium = pytest.mark.skipif(
    not (shutil.which("chromium") and (WEB / "node_modules" / "playwright-core").is_dir()),
    reason="Debian chromium or playwright-core missing (.ci/run installs both)",
)


@pytest.fixture(scope="module")
def web_export(tmp_path_factory) -> Path:
    return main_export(None, tmp_path_factory.mktemp("web") / "default", "web")


@pytest.fixture(scope="module")
def torch_reference():
    runner = open_runner("torch", None)
    pixels = Preprocessor(runner.info.preprocess)([decode_image(p) for p in REFERENCE])
    return runner, pixels, runner.run(pixels)


def test_transformers_js_layout(web_export):
    web = web_export / "web"
    assert json.loads((web / "config.json").read_text())["id2label"] == {"0": "female", "1": "male"}
    assert json.loads((web / "preprocessor_config.json").read_text())["size"] == {"height": 140, "width": 140}
    assert {p.name for p in (web / "onnx").glob("*.onnx")} == {"model.onnx", "model_quantized.onnx", "model_fp16.onnx"}


@pytest.mark.slow
@needs_node
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_transformers_js_pipeline_in_node(web_export, torch_reference, variant):
    """transformers.js preprocesses with its own resize (sharp), so compare decisions and scores loosely."""
    runner, _, logits = torch_reference
    dtype = VARIANTS[variant][0]
    result = subprocess.run(
        ["node", "classify-node.mjs", str(web_export / "web"), dtype, *map(str, REFERENCE)],
        cwd=WEB,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == len(REFERENCE)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    agree, diffs = 0, []
    for record, row in zip(records, probs, strict=False):
        scores = {p["label"]: p["score"] for p in record["predictions"]}
        agree += max(scores, key=scores.get) == runner.info.labels[int(row.argmax())]
        diffs.append(max(abs(scores[label] - row[i]) for i, label in enumerate(runner.info.labels)))
    assert agree / len(records) >= 0.96, f"top-1 agreement {agree}/{len(records)}"
    assert float(np.median(diffs)) < 0.02 and max(diffs) < 0.2


@pytest.mark.slow
@needs_chromium
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_onnxruntime_web_in_chromium_matches_pytorch(web_export, torch_reference, tmp_path, variant):
    """Same pixel values as PyTorch, run by onnxruntime-web (WASM) in a real browser: validate's budgets apply."""
    runner, pixels, reference = torch_reference
    pixels.astype("<f4").tofile(tmp_path / "pixels.f32")
    result = subprocess.run(
        [
            "node",
            "browser-test.mjs",
            str(web_export / "web"),
            variant,
            str(tmp_path / "pixels.f32"),
            str(len(pixels)),
            str(REFERENCE[0]),
        ],
        cwd=WEB,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["errors"] == [] and out["labels"] == list(runner.info.labels)
    logits = np.array(out["logits"], dtype=np.float32).reshape(reference.shape)
    metrics = compare_logits(reference, logits, runner.info.labels, [p.name for p in REFERENCE])
    checks = check(
        metrics,
        {k: v for k, v in DEFAULT_BUDGETS[VARIANTS[variant][1]].items() if k != "batch_max_rel_logit_diff"},
        labelled=False,
    )  # one run: no batches, no labels
    failures = [c.detail for c in checks if not c.passed]
    assert not failures, failures
    demo = {d["label"]: d["score"] for d in out["demo"]}  # the page's own canvas preprocessing path
    assert max(demo, key=demo.get) == runner.info.labels[int(reference[0].argmax())]

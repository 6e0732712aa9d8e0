"""What each calibrated int8 artifact reached on the calibration images, and what it costs or buys in speed.

An int8 recipe tuned on one model can lose many decisions on another (a 5-label head with small
margins flips where a confident binary head does not), so the export measures every calibrated
int8 artifact it wrote, through the same Runner a user would load, against PyTorch on the
calibration images, and states the result against a decision-level target. The speed is
measured in the same run against the fp32 ONNX on onnxruntime, so a user sees the price of
every float part. Figures on the calibration images are optimistic (the scales came from them):
`vitgender validate` on other images is the judgement that counts.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from vitgender.quant_plan import QuantTarget

SPEED_BATCH = 32
SINGLE_IMAGES = 16  # images timed one at a time for the batch-1 figure


def pytorch_logits(model, pixels: np.ndarray, batch: int = 32) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return np.concatenate(
            [
                model(pixel_values=torch.from_numpy(pixels[i : i + batch])).logits.numpy()
                for i in range(0, len(pixels), batch)
            ]
        )


def _timed(run, pixels: np.ndarray) -> tuple[np.ndarray, dict]:
    """Logits at batch SPEED_BATCH, and images/s at that batch and at batch 1 (after one warm-up call for
    each batch size the timed passes use: a runner that compiles per size, `inductor`, compiles then)."""
    for size in {min(SPEED_BATCH, len(pixels)), len(pixels) % SPEED_BATCH} - {0}:
        run(pixels[:size])
    began = time.perf_counter()
    logits = np.concatenate([run(pixels[i : i + SPEED_BATCH]) for i in range(0, len(pixels), SPEED_BATCH)])
    batched = len(pixels) / (time.perf_counter() - began)
    singles = pixels[:SINGLE_IMAGES]
    run(singles[:1])
    began = time.perf_counter()
    for i in range(len(singles)):
        run(singles[i : i + 1])
    single = len(singles) / (time.perf_counter() - began)
    return logits, {f"batch_{SPEED_BATCH}": round(batched, 1), "batch_1": round(single, 1)}


def fp32_speed(base_onnx: Path, input_name: str, pixels: np.ndarray) -> dict:
    """The yardstick: the fp32 ONNX on onnxruntime's CPU provider, every usable core."""
    import onnxruntime as ort

    from vitgender.runtimes.base import default_threads

    options = ort.SessionOptions()
    options.intra_op_num_threads = default_threads()
    session = ort.InferenceSession(str(base_onnx), options, providers=["CPUExecutionProvider"])
    return _timed(lambda x: session.run(None, {input_name: x})[0], pixels)[1]


def check_artifact(runtime: str, path: Path, reference: np.ndarray, pixels: np.ndarray, target: QuantTarget) -> dict:
    """Run one artifact through its Runner on the calibration pixels: the reached figures and speed."""
    from vitgender.runtimes.base import open_runner

    with open_runner(runtime, path) as runner:
        logits, speed = _timed(runner.run, pixels)
    figures = target.figures(reference, logits)
    return {"target": str(target), "reached": figures, "met": target.met(figures), "images_per_second": speed}


def summary_line(name: str, check: dict, fp32: dict) -> str:
    """One line: reached vs target, and the speed against fp32 ONNX Runtime measured in the same export."""
    reached, speed = check["reached"], check["images_per_second"]
    figure = (
        f"agreement {reached['agreement']:.1%} ({reached['images'] - reached['flips']}/{reached['images']})"
        if check["target"].startswith("agreement")
        else f"q90 |Δlogit| {reached['q90_abs_logit_diff']:.3g}, {reached['flips']} flips"
    )
    verdict = "met" if check["met"] else "MISSED"
    key = f"batch_{SPEED_BATCH}"
    return (
        f"{name}: {figure} on the calibration images vs target {check['target']}: {verdict}; "
        f"{speed[key]:.0f} images/s at batch {SPEED_BATCH} ({speed[key] / fp32[key]:.2f}x fp32 onnxruntime), "
        f"{speed['batch_1']:.0f} at batch 1 ({speed['batch_1'] / fp32['batch_1']:.2f}x)"
    )

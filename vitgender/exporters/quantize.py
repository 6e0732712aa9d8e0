"""ONNX Runtime post-training variants of the fp32 ONNX: fp16, int8 dynamic, int8 static (QDQ).

Choices, each forced by a failure seen on ViTs:
- dynamic int8 quantizes MatMul/Gemm only: ORT's default also turns the patch Conv into
  `ConvInteger`, which the CPU execution provider cannot run;
- static int8 is QDQ, per-channel, calibrated on real images preprocessed exactly like
  inference. The `safe` preset quantizes only weight MatMuls and the patch Conv and keeps the
  numerically sensitive ops (LayerNorm, Softmax, GELU, residual Adds, the attention
  activation x activation MatMuls) in float; `full` quantizes everything ORT can, which
  collapses on ViTs (FQ-ViT: ViT-B MinMax W8A8 23.6% vs 84.5% fp32).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np


def to_fp16(source: Path, target: Path) -> Path:
    """fp16 weights and compute, float32 inputs/outputs (callers need not change)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True, disable_shape_infer=False)
    onnx.save(model, str(target))
    return target


def _preprocessed(source: Path, target: Path) -> Path:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(source), str(target), skip_symbolic_shape=True)
    return target


def to_int8_dynamic(source: Path, target: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        prepared = _preprocessed(source, Path(tmp) / "prepared.onnx")
        quantize_dynamic(str(prepared), str(target), op_types_to_quantize=["MatMul", "Gemm"],
                         per_channel=True, weight_type=QuantType.QInt8)
    return target


class _Batches:
    """ORT CalibrationDataReader over preprocessed calibration images."""

    def __init__(self, input_name: str, pixels: np.ndarray, batch_size: int = 8) -> None:
        self._iter: Iterator[dict] = (
            {input_name: pixels[i : i + batch_size]} for i in range(0, len(pixels), batch_size)
        )

    def get_next(self) -> dict | None:
        return next(self._iter, None)


def _weight_matmuls_and_convs(path: Path) -> list[str]:
    """Names of MatMul/Gemm/Conv nodes with a constant weight: the safe set to quantize."""
    import onnx

    model = onnx.load(str(path))
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in model.graph.node
            if n.op_type in ("MatMul", "Gemm", "Conv") and any(i in constants for i in n.input[1:2])]


def to_int8_static(source: Path, target: Path, input_name: str, pixels: np.ndarray, *,
                   method: str = "minmax", preset: str = "safe") -> Path:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    calibrate = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                 "percentile": CalibrationMethod.Percentile}[method]
    with tempfile.TemporaryDirectory() as tmp:
        prepared = _preprocessed(source, Path(tmp) / "prepared.onnx")
        options = {}
        if preset == "safe":
            options["nodes_to_quantize"] = _weight_matmuls_and_convs(prepared)
        quantize_static(
            str(prepared), str(target), _Batches(input_name, pixels), quant_format=QuantFormat.QDQ,
            per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            calibrate_method=calibrate, extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            **options,
        )
    return target

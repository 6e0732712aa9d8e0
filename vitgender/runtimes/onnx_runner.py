"""ONNX Runtime (CPU execution provider) for every .onnx artifact: fp32, fp16, int8."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vitgender.errors import UsageError
from vitgender.runtimes.base import RunnerInfo
from vitgender.runtimes.sidecar import read_sidecar


class OnnxRunner:
    def __init__(self, session, info: RunnerInfo) -> None:
        self.session = session
        self.info = info
        model_input = session.get_inputs()[0]
        self._input = model_input.name
        self._dtype = {"tensor(float16)": np.float16, "tensor(uint8)": np.uint8}.get(model_input.type, np.float32)

    @classmethod
    def open(cls, source: str | os.PathLike | None, *, threads: int | None = None, optimize: bool = True) -> OnnxRunner:
        import onnxruntime as ort

        if source is None:
            raise UsageError("onnx", "the onnx runtime needs a .onnx file (see 'vitgender export')")
        path = Path(source)
        if not path.is_file():
            raise UsageError(str(path), "no such ONNX file")
        options = ort.SessionOptions()
        options.graph_optimization_level = (
            ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        )
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            raise UsageError(str(path), f"onnxruntime cannot load it ({str(exc).splitlines()[0][:200]})") from None
        sidecar = read_sidecar(path)
        raw = session.get_inputs()[0].type == "tensor(uint8)"
        return cls(session, RunnerInfo("onnx", sidecar.labels, sidecar.preprocess, str(path), sidecar.precision,
                                       raw_input=raw, architecture=sidecar.architecture))

    def run(self, pixel_values: np.ndarray) -> np.ndarray:
        """pixel_values, or uint8 NHWC images for a raw-input (baked preprocessing) model."""
        (logits,) = self.session.run(None, {self._input: pixel_values.astype(self._dtype, copy=False)})
        return logits.astype(np.float32, copy=False)

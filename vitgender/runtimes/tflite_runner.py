"""LiteRT (`ai-edge-litert`) interpreter, XNNPACK delegate, for .tflite artifacts.

onnx2tf emits NHWC graphs with a fixed batch of 1 (see the README's export notes), so
batches run image by image; quantized inputs/outputs are (de)quantized with the tensor's
own scale and zero point, so int8-I/O models take the same float pixel_values as the rest.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vitgender.errors import UsageError
from vitgender.native import quiet_native_stderr
from vitgender.runtimes.base import RunnerInfo
from vitgender.runtimes.sidecar import read_sidecar


class TfliteRunner:
    def __init__(self, interpreter, info: RunnerInfo) -> None:
        self.interpreter = interpreter
        self.info = info
        interpreter.allocate_tensors()
        self._input = interpreter.get_input_details()[0]
        self._output = interpreter.get_output_details()[0]

    @classmethod
    def open(cls, source: str | os.PathLike | None, *, threads: int | None = 2,
             keep_intermediates: bool = False) -> TfliteRunner:
        """`keep_intermediates` keeps every tensor readable after `run` (for localisation; slower)."""
        from ai_edge_litert.interpreter import Interpreter

        path = Path(source) if source is not None else None
        if path is None or not path.is_file():
            raise UsageError(str(source), "no such .tflite file")
        try:
            with quiet_native_stderr():  # "Created TensorFlow Lite XNNPACK delegate for CPU."
                interpreter = Interpreter(model_path=str(path), num_threads=threads or 2,
                                          experimental_preserve_all_tensors=keep_intermediates)
                interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise UsageError(str(path), f"LiteRT cannot load it ({str(exc).splitlines()[0][:200]})") from None
        sidecar = read_sidecar(path)
        return cls(interpreter, RunnerInfo("tflite", sidecar.labels, sidecar.preprocess, str(path), sidecar.precision,
                                         architecture=sidecar.architecture))

    def _quantize(self, x: np.ndarray) -> np.ndarray:
        dtype = self._input["dtype"]
        if dtype in (np.float32, np.float16):
            return x.astype(dtype)
        scale, zero = self._input["quantization"]
        info = np.iinfo(dtype)
        return np.clip(np.rint(x / scale + zero), info.min, info.max).astype(dtype)

    def _dequantize(self, y: np.ndarray, details: dict | None = None) -> np.ndarray:
        if y.dtype in (np.float32, np.float16):
            return y.astype(np.float32)
        scale, zero = (details or self._output)["quantization"]
        return (y.astype(np.float32) - zero) * scale

    def tensor(self, index: int) -> np.ndarray:
        """A tensor of the last invocation, as float (needs `keep_intermediates`)."""
        details = self.interpreter._get_tensor_details(index, 0)
        return self._dequantize(self.interpreter.get_tensor(index), details)

    def run(self, pixel_values: np.ndarray) -> np.ndarray:
        nhwc = np.ascontiguousarray(pixel_values.transpose(0, 2, 3, 1))
        rows = []
        for image in nhwc:
            self.interpreter.set_tensor(self._input["index"], self._quantize(image[None]))
            self.interpreter.invoke()
            rows.append(self._dequantize(self.interpreter.get_tensor(self._output["index"]))[0])
        return np.stack(rows)

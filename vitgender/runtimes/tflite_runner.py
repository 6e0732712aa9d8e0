"""LiteRT (`ai-edge-litert`) interpreter, XNNPACK delegate, for .tflite artifacts.

Files whose input keeps a free batch (`shape_signature` -1, what `vitgender export` writes for
ViTs) run a whole batch per invoke, the input resized when the batch size changes; files with a
fixed batch of 1 (older exports, architectures onnx2tf converts only at batch 1) run image by
image. Quantized inputs/outputs are (de)quantized with the tensor's own scale and zero point, so
int8-I/O models take the same float pixel_values as the rest.
"""

from __future__ import annotations

import os
import re
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vitgender.errors import UsageError
from vitgender.native import quiet_native_stderr
from vitgender.runtimes.base import RunnerInfo, default_threads
from vitgender.runtimes.lifecycle import Closing
from vitgender.runtimes.sidecar import read_sidecar
from vitgender.runtimes.weights import weight_inventory


class TfliteRunner(Closing):
    def __init__(self, interpreter, info: RunnerInfo, reopen: Callable[[], object] | None = None) -> None:
        self.interpreter = interpreter
        self.info = info
        self._reopen = reopen  # a fresh interpreter on the same file, at the file's own input shape
        interpreter.allocate_tensors()
        self._input = interpreter.get_input_details()[0]
        self._output = interpreter.get_output_details()[0]
        self.dynamic_batch = int(self._input["shape_signature"][0]) == -1

    def _invoke(self, nhwc: np.ndarray) -> np.ndarray:
        if nhwc.shape[0] != self.interpreter.get_input_details()[0]["shape"][0]:
            try:
                self.interpreter.resize_tensor_input(self._input["index"], list(nhwc.shape))
                self.interpreter.allocate_tensors()
            except RuntimeError as exc:
                # Seen on an AVX2-only AMD EPYC with full-integer int8: "XNNPack delegate failed to reshape
                # runtime". The file's own shape still runs there, so run image by image from now on.
                if self._reopen is None or nhwc.shape[0] == 1:
                    raise
                warnings.warn(
                    f"LiteRT cannot run {Path(self.info.source).name} at batch {nhwc.shape[0]} on this CPU "
                    f"({str(exc).splitlines()[0][:120]}); running it image by image",
                    stacklevel=2,
                )
                self.interpreter = self._reopen()
                self.interpreter.allocate_tensors()
                self.dynamic_batch = False
                return np.concatenate([self._invoke(image[None]) for image in nhwc])
        self.interpreter.set_tensor(self._input["index"], self._quantize(nhwc))
        self.interpreter.invoke()
        return self._dequantize(self.interpreter.get_tensor(self._output["index"]))

    @classmethod
    def open(
        cls, source: str | os.PathLike | None, *, threads: int | None = None, keep_intermediates: bool = False
    ) -> TfliteRunner:
        """`keep_intermediates` keeps every tensor readable after `run` (for stage activations; slower)."""
        from ai_edge_litert.interpreter import Interpreter

        path = Path(source) if source is not None else None
        if path is None or not path.is_file():
            raise UsageError(str(source), "no such .tflite file")

        def interpreter_on_file():
            with quiet_native_stderr():  # "Created TensorFlow Lite XNNPACK delegate for CPU."
                return Interpreter(
                    model_path=str(path),
                    num_threads=threads or default_threads(),
                    experimental_preserve_all_tensors=keep_intermediates,
                )

        try:
            interpreter = interpreter_on_file()
            with quiet_native_stderr():
                interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise UsageError(str(path), f"LiteRT cannot load it ({str(exc).splitlines()[0][:200]})") from None
        sidecar = read_sidecar(path)
        return cls(
            interpreter,
            RunnerInfo(
                "tflite",
                sidecar.labels,
                sidecar.preprocess,
                str(path),
                sidecar.precision,
                architecture=sidecar.architecture,
            ),
            reopen=interpreter_on_file,
        )

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

    def run(self, pixel_values: np.ndarray) -> np.ndarray:
        nhwc = np.ascontiguousarray(pixel_values.transpose(0, 2, 3, 1))
        if self.dynamic_batch:
            return self._invoke(nhwc)
        return np.concatenate([self._invoke(image[None]) for image in nhwc])

    def stage_activations(self, pixel_values: np.ndarray) -> dict[str, np.ndarray]:
        """Embeddings, each block's output and the logits, read from a second interpreter that keeps
        every tensor.

        onnx2tf renames all tensors; what survives are the layer norms, named
        `layer_normalization[_i]` in forward order. A ViT's block `k` output is what enters layer norm
        `2k + 2` (the next block's, or the final one), the embeddings what enters the first.
        """
        layers = self.info.architecture.num_hidden_layers if self.info.architecture else None
        keeper = TfliteRunner.open(self.info.source, keep_intermediates=True)
        norms = keeper._layer_norm_inputs()
        if layers is None or len(norms) != 2 * layers + 1:
            return {}  # not the graph shape this mapping knows: no localisation rather than a wrong one
        tensors = {"embeddings": norms[0], **{f"block {k}": norms[2 * k + 2] for k in range(layers)}}
        captured: dict[str, list[np.ndarray]] = {name: [] for name in [*tensors, "logits"]}
        for image in pixel_values:
            captured["logits"].append(keeper.run(image[None])[0])
            for name, index in tensors.items():
                details = keeper.interpreter._get_tensor_details(index, 0)
                captured[name].append(keeper._dequantize(keeper.interpreter.get_tensor(index), details)[0])
        return {name: np.stack(rows) for name, rows in captured.items()}

    def _layer_norm_inputs(self) -> list[int]:
        """Tensor indices entering each `layer_normalization[_i]` scope, in forward order."""
        names = {t["index"]: t["name"] for t in self.interpreter.get_tensor_details()}
        entering: dict[int, int] = {}
        for op in self.interpreter._get_ops_details():
            for out in op["outputs"]:
                match = re.search(r"/layer_normalization(?:_(\d+))?/", names.get(out, ""))
                if match and op["op_name"] == "MEAN":
                    entering.setdefault(int(match[1] or 0), op["inputs"][0])  # the first MEAN reads the input
        return [entering[k] for k in sorted(entering)]


# TFLite TensorType enum values (tensorflow/lite/schema/schema.fbs).
_TFLITE_TYPES = {
    0: "float32",
    1: "float16",
    2: "int32",
    3: "uint8",
    4: "int64",
    6: "bool",
    7: "int16",
    9: "int8",
    10: "float64",
}


def inventory(path: Path) -> dict:
    """Constant tensors (weights) are those backed by a non-empty flatbuffer buffer."""
    with quiet_native_stderr():  # importing tensorflow.lite loads TensorFlow's C++ runtime
        from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(Path(path).read_bytes(), 0))
    weights: Counter = Counter()
    ops: Counter = Counter()
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            data = model.buffers[tensor.buffer].data if tensor.buffer < len(model.buffers) else None
            if data is not None and len(data):
                weights[_TFLITE_TYPES.get(tensor.type, str(tensor.type))] += len(data)
        for op in subgraph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            ops[max(code.builtinCode, code.deprecatedBuiltinCode)] += 1
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    op_counts = {names.get(code, str(code)): n for code, n in ops.most_common()}
    return weight_inventory(weights, op_counts, {"QUANTIZE", "DEQUANTIZE"})

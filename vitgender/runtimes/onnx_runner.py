"""ONNX Runtime (CPU execution provider) for every .onnx artifact: fp32, fp16, int8.

Stage activations (for `validate --localize`) come from marking, as extra graph outputs, the
tensors the exporter tagged with each PyTorch module's scope (`pkg.torch.onnx.name_scopes`,
which survives fp16 conversion and QDQ quantization).
"""

from __future__ import annotations

import ast
import os
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from vitgender.errors import UsageError
from vitgender.models import ViTArchitecture, model_config
from vitgender.runtimes.base import RunnerInfo, sidecar_info
from vitgender.runtimes.lifecycle import Closing
from vitgender.runtimes.weights import weight_inventory

SCOPES_KEY = "pkg.torch.onnx.name_scopes"
QUANT_OPS = {
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "MatMulInteger",
    "ConvInteger",
    "QLinearMatMul",
    "QLinearConv",
    "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul",
}
EXPORT_PREFIX = "model."  # the exporter wraps the HF model as `model` (vitgender.exporters.onnx_export)


class OnnxRunner(Closing):
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
        return cls(session, sidecar_info("onnx", path, raw_input=session.get_inputs()[0].type == "tensor(uint8)"))

    def run(self, pixel_values: np.ndarray) -> np.ndarray:
        """pixel_values, or uint8 NHWC images for a raw-input (baked preprocessing) model."""
        (logits,) = self.session.run(None, {self._input: pixel_values.astype(self._dtype, copy=False)})
        return logits.astype(np.float32, copy=False)

    def op_times(self, inputs: np.ndarray, runs: int) -> list[tuple[str, float]]:
        """(op type, seconds) of every kernel ORT ran in `runs` runs of `inputs` after one warm-up,
        from its own profiler, on a second session with this one's threads and optimization level
        (so the graph profiled is the graph timed, after ORT's fusions)."""
        import json

        import onnxruntime as ort

        current = self.session.get_session_options()
        options = ort.SessionOptions()
        options.graph_optimization_level = current.graph_optimization_level
        options.intra_op_num_threads = current.intra_op_num_threads
        options.inter_op_num_threads = current.inter_op_num_threads
        with tempfile.TemporaryDirectory(prefix="vitgender-profile-") as work:
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(work) / "ort")
            session = ort.InferenceSession(self.info.source, options, providers=["CPUExecutionProvider"])
            feed = {self._input: inputs.astype(self._dtype, copy=False)}
            session.run(None, feed)
            for _ in range(runs):
                session.run(None, feed)
            events = json.loads(Path(session.end_profiling()).read_text())
        runs_seen = sorted((e["ts"], e["dur"]) for e in events if e.get("name") == "model_run")
        warmed = sum(runs_seen[0]) if runs_seen else 0  # kernels before the warm-up run ended are not counted
        return [
            (event["args"]["op_name"], event["dur"] / 1e6)
            for event in events
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= warmed
        ]

    def stage_activations(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        """Each identifiable stage's output: the scoped tensors, marked as extra outputs of a second session."""
        import onnx
        import onnxruntime as ort
        from onnx import helper

        if self.info.architecture is None:
            return {}
        model = onnx.load(self.info.source)
        tensors = onnx_stage_tensors(model, self.info.architecture)
        inferred = onnx.shape_inference.infer_shapes(model)
        types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.output]}
        existing = {o.name for o in model.graph.output}
        for tensor in tensors.values():
            if tensor not in existing:
                model.graph.output.append(
                    helper.make_tensor_value_info(tensor, types.get(tensor, onnx.TensorProto.FLOAT), None)
                )
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        values = session.run(list(tensors.values()), {self._input: inputs.astype(self._dtype, copy=False)})
        return {name: np.asarray(value, dtype=np.float32) for name, value in zip(tensors, values, strict=False)}


def _scopes(node) -> list[str]:
    for prop in node.metadata_props:
        if prop.key == SCOPES_KEY:
            try:
                return ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return []
    return []


def onnx_stage_tensors(model, architecture: ViTArchitecture) -> dict[str, str]:
    """Stage (as the model type names them) -> the tensor that leaves that module: the output of its last
    node in graph order. Stages the graph has no scope for are left out."""
    stages = model_config(architecture.model_type).stages(architecture.num_hidden_layers)
    last: dict[str, str] = {}
    for node in model.graph.node:
        for scope in _scopes(node):
            if node.output:
                last[scope] = node.output[0]
    found = {name: last[EXPORT_PREFIX + path] for name, path in stages if EXPORT_PREFIX + path in last}
    found["logits"] = model.graph.output[0].name
    return found


def inventory(path: Path) -> dict:
    """Initializer bytes by dtype and the quantization ops of the graph (the Runtime's `inventory`)."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path), load_external_data=False)
    weights: Counter = Counter()
    for init in model.graph.initializer:
        dtype = helper.tensor_dtype_to_np_dtype(init.data_type)
        count = 1
        for dim in init.dims:
            count *= dim
        weights[str(dtype)] += count * dtype.itemsize
    ops = Counter(node.op_type for node in model.graph.node)
    return weight_inventory(weights, dict(ops.most_common()), QUANT_OPS)

"""TensorFlow SavedModel (as written by onnx2tf: NHWC input) through its serving signature.

A signature with a free batch (`[None, H, W, 3]`, what `vitgender export` writes for ViTs) takes
the whole batch in one call; one fixed at batch 1 (older exports) is called image by image.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np

from vitgender.errors import UsageError
from vitgender.native import quiet_native_stderr
from vitgender.runtimes.base import RunnerInfo, sidecar_info
from vitgender.runtimes.lifecycle import Closing
from vitgender.runtimes.weights import weight_inventory


class SavedModelRunner(Closing):
    def __init__(self, signature, info: RunnerInfo) -> None:
        self.signature = signature
        self.info = info
        self._input, spec = next(iter(signature.structured_input_signature[1].items()))
        self.dynamic_batch = spec.shape[0] is None

    @classmethod
    def open(cls, source: str | os.PathLike | None, *, threads: int | None = None) -> SavedModelRunner:
        with quiet_native_stderr():
            import tensorflow as tf

        path = Path(source) if source is not None else None
        if path is None or not (path / "saved_model.pb").is_file():
            raise UsageError(str(source), "not a SavedModel directory (no saved_model.pb)")
        if threads:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        loaded = tf.saved_model.load(str(path))
        info = sidecar_info("savedmodel", path)
        runner = cls(loaded.signatures["serving_default"], info)
        runner._loaded = loaded  # keep the trackable alive as long as the signature
        return runner

    def run(self, pixel_values: np.ndarray) -> np.ndarray:
        import tensorflow as tf  # already loaded (quietly) by open()

        def call(nhwc: np.ndarray) -> np.ndarray:
            return next(iter(self.signature(**{self._input: tf.constant(nhwc)}).values())).numpy()

        nhwc = np.ascontiguousarray(pixel_values.transpose(0, 2, 3, 1))
        if self.dynamic_batch:
            return call(nhwc).astype(np.float32)
        return np.concatenate([call(image[None]) for image in nhwc]).astype(np.float32)


def inventory(path: Path) -> dict:
    """Weight bytes by dtype: the constants of every graph function (where onnx2tf puts the weights) and
    any checkpointed variables; read from `saved_model.pb` and the variables index, nothing is run."""
    with quiet_native_stderr():
        import tensorflow as tf
        from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((Path(path) / "saved_model.pb").read_bytes())
    weights: Counter = Counter()
    ops: Counter = Counter()
    for graph in saved.meta_graphs:
        nodes = [*graph.graph_def.node, *(n for f in graph.graph_def.library.function for n in f.node_def)]
        for node in nodes:
            ops[node.op] += 1
            if node.op == "Const" and "value" in node.attr:
                tensor = node.attr["value"].tensor
                dtype = tf.dtypes.as_dtype(tensor.dtype)
                if not (dtype.is_floating or dtype.is_integer):
                    continue
                count = int(np.prod([d.size for d in tensor.tensor_shape.dim])) if tensor.tensor_shape.dim else 1
                if count > 1:  # shapes, axes and scalars are not weights
                    weights[dtype.name] += len(tensor.tensor_content) or count * dtype.size
    index = Path(path) / "variables" / "variables.index"
    if index.is_file():
        reader = tf.train.load_checkpoint(str(index.with_suffix("")))
        shapes = reader.get_variable_to_shape_map()
        for name, dtype in reader.get_variable_to_dtype_map().items():
            if not name.startswith("_CHECKPOINTABLE_OBJECT_GRAPH"):
                weights[dtype.name] += int(np.prod(shapes[name] or [1])) * dtype.size
    return weight_inventory(weights, dict(ops.most_common()))

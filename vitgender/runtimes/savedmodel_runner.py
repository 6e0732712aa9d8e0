"""TensorFlow SavedModel (as written by onnx2tf: NHWC input, batch 1) through its serving signature."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vitgender.errors import UsageError
from vitgender.native import quiet_native_stderr
from vitgender.runtimes.base import RunnerInfo
from vitgender.runtimes.sidecar import read_sidecar


class SavedModelRunner:
    def __init__(self, signature, info: RunnerInfo) -> None:
        self.signature = signature
        self.info = info
        self._input = next(iter(signature.structured_input_signature[1]))

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
        sidecar = read_sidecar(path)
        info = RunnerInfo("savedmodel", sidecar.labels, sidecar.preprocess, str(path), sidecar.precision,
                          architecture=sidecar.architecture)
        runner = cls(loaded.signatures["serving_default"], info)
        runner._loaded = loaded  # keep the trackable alive as long as the signature
        return runner

    def run(self, pixel_values: np.ndarray) -> np.ndarray:
        import tensorflow as tf  # already loaded (quietly) by open()

        nhwc = np.ascontiguousarray(pixel_values.transpose(0, 2, 3, 1))
        rows = [next(iter(self.signature(**{self._input: tf.constant(image[None])}).values())).numpy()[0]
                for image in nhwc]
        return np.stack(rows).astype(np.float32)

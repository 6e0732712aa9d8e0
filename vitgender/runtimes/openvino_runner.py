"""OpenVINO (CPU plugin) on the same .onnx artifacts ONNX Runtime opens: a peer engine, not a format.

It reads the exported ONNX file as it is (fp32, fp16 and int8 QDQ graphs) and takes one setting
of its own, `precision`: `f32` computes in float32; `bf16` sets OpenVINO's inference-precision
hint so the float parts of the graph run in bfloat16 (weights stay as stored). bf16 is refused
on CPUs without bf16 arithmetic (no avx512_bf16 or amx_bf16 flag), where OpenVINO would emulate
it slower than f32. A bf16 run reports `arithmetic = bf16`, so the parity gate judges it with the
bf16 budget rather than the file's fp32 one.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from vitgender.errors import UsageError
from vitgender.precision import Precision
from vitgender.runtimes.base import RunnerInfo, check_float_precision, sidecar_info
from vitgender.runtimes.lifecycle import Closing


def peer_settings(precision: Precision) -> list[str]:
    """What `bench` measures OpenVINO in on a file of this precision: fp32 files as they are and, where
    the CPU computes bf16, with the bf16 hint; static int8 QDQ files as they are. None if not installed."""
    from importlib.util import find_spec

    from vitgender.machine import has_bf16_arithmetic

    if find_spec("openvino") is None or precision not in (Precision.FP32, Precision.INT8):
        return []
    bf16 = precision is Precision.FP32 and has_bf16_arithmetic()
    return ["openvino", *(["openvino:precision=bf16"] if bf16 else [])]


class OpenVinoRunner(Closing):
    def __init__(self, compiled, info: RunnerInfo, config: dict | None = None) -> None:
        self.compiled = compiled
        self.info = info
        self._config = config or {}
        self._request = compiled.create_infer_request()
        element = compiled.input(0).get_element_type().get_type_name()
        self._dtype = {"f16": np.float16, "u8": np.uint8}.get(element, np.float32)

    @classmethod
    def open(
        cls, source: str | os.PathLike | None, *, threads: int | str | None = None, precision: str = "f32"
    ) -> OpenVinoRunner:
        if source is None:
            raise UsageError("openvino", "the openvino runtime needs a .onnx file (see 'vitgender export')")
        path = Path(source)
        if not path.is_file():
            raise UsageError(str(path), "no such ONNX file")
        precision = check_float_precision("openvino", precision)
        try:
            import openvino as ov
        except ImportError:
            raise UsageError(
                "--runtime openvino", "OpenVINO is not installed (pip install 'vitgender[peer]')"
            ) from None
        config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            compiled = ov.Core().compile_model(str(path), "CPU", config)
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses of its own
            raise UsageError(str(path), f"OpenVINO cannot load it ({str(exc).splitlines()[0][:200]})") from None
        info = sidecar_info("openvino", path, raw_input=compiled.input(0).get_element_type().get_type_name() == "u8")
        if precision == "bf16" and not info.precision.is_int8:  # int8 GEMMs stay int8 under the hint
            info = replace(info, arithmetic=Precision.BF16)
        return cls(compiled, info, config)

    def run(self, pixel_values: np.ndarray) -> np.ndarray:
        """pixel_values, or uint8 NHWC images for a raw-input (baked preprocessing) model."""
        self._request.infer({0: np.ascontiguousarray(pixel_values, dtype=self._dtype)})
        return np.array(self._request.get_output_tensor(0).data, dtype=np.float32)

    def op_times(self, inputs: np.ndarray, runs: int) -> list[tuple[str, float]]:
        """(execution node type, seconds) summed over `runs` runs of `inputs` after one warm-up, from
        OpenVINO's performance counters on a second compilation with this one's settings (so the
        node types are the fused, precision-lowered graph that was timed)."""
        import openvino as ov

        compiled = ov.Core().compile_model(self.info.source, "CPU", {**self._config, "PERF_COUNT": True})
        request = compiled.create_infer_request()
        feed = {0: np.ascontiguousarray(inputs, dtype=self._dtype)}
        request.infer(feed)
        totals: dict[str, float] = {}
        for _ in range(runs):
            request.infer(feed)  # the counters describe the last inference only
            for node in request.get_profiling_info():
                if node.status == node.Status.EXECUTED:
                    totals[node.node_type] = totals.get(node.node_type, 0.0) + node.real_time.total_seconds()
        return list(totals.items())

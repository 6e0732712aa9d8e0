"""ONNX Runtime post-training variants of the fp32 ONNX: fp16, int8 dynamic, int8 static (QDQ).

dynamic int8 quantizes MatMul/Gemm only: ORT's default also turns the patch Conv into
`ConvInteger`, which the CPU execution provider cannot run. It derives each activation scale
from the whole input tensor, so an image's answer depends on the other images in its batch;
static int8 fixes the scales at export time from calibration images (preprocessed exactly like
inference), so it answers the same whatever the batch. Its presets (`STATIC_PRESETS`):
`safe` quantizes the weight MatMuls and the patch Conv; `auto` starts from every MatMul/Gemm/Conv,
including the attention activation x activation MatMuls, measures how much each block moves the
logits on the calibration images and keeps the fewest blocks in float (at most `max_float`)
that meet a target (`plan_auto`); `full` quantizes every op ORT can, which collapses on ViTs and is kept to show it.
"""

from __future__ import annotations

import contextlib
import copy
import io
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vitgender.quant_plan import DEFAULT_TARGET, QuantTarget, fewest_float

if TYPE_CHECKING:
    import onnx


STATIC_PRESETS = ("safe", "auto", "full")


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


# onnxruntime's int8 weights use 7 bits (|w| <= 64, `reduce_range`): on x86 without VNNI its uint8 x int8
# kernels add pairs of products in saturating 16 bits (`vpmaddubsw`), and 255 x 127 x 2 overflows where
# 255 x 64 x 2 cannot, so the same file computes exactly on every x86 CPU, and VNNI and AMX ones run the
# same kernels. Measured, with its cost, in docs/guides/quantization.md ("On x86 CPUs without VNNI").
REDUCE_RANGE = True


def to_int8_dynamic(source: Path, target: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        prepared = _preprocessed(source, Path(tmp) / "prepared.onnx")
        quantize_dynamic(
            str(prepared),
            str(target),
            op_types_to_quantize=["MatMul", "Gemm"],
            per_channel=True,
            reduce_range=REDUCE_RANGE,
            weight_type=QuantType.QInt8,
        )
    return target


class _Batch:
    """ORT CalibrationDataReader over one batch of preprocessed calibration images."""

    def __init__(self, input_name: str, pixels: np.ndarray) -> None:
        self._feeds: Iterator[dict] = iter([{input_name: pixels}])

    def get_next(self) -> dict | None:
        return next(self._feeds, None)


_CALIBRATION_BATCH = 8
_QUANTIZABLE = ("MatMul", "Gemm", "Conv")  # the ops with int8 kernels on ORT's CPU provider
_BLOCK = re.compile(r"\.layer\.(\d+)\.(attention|intermediate|output)\b")


def unit_of(node: onnx.NodeProto) -> str:
    """The part of the ViT a node belongs to, named like the stages `validate --localize` reports.

    The dynamo exporter records each node's module path; a graph without it (another exporter)
    falls back to one unit per node.
    """
    scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), "")
    block = None
    for match in _BLOCK.finditer(scopes):
        block = f"block {match[1]} {'attention' if match[2] == 'attention' else 'mlp'}"
    if block:
        return block
    if ".embeddings" in scopes:
        return "embeddings"
    if "classifier" in scopes:
        return "classifier"
    return node.name


def quantizable_units(model: onnx.ModelProto) -> dict[str, list[str]]:
    """{unit: [node names]} for every MatMul/Gemm/Conv, weight x activation and activation x activation."""
    units: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.op_type in _QUANTIZABLE:
            units.setdefault(unit_of(node), []).append(node.name)
    return units


def _weight_nodes(model: onnx.ModelProto) -> list[str]:
    """MatMul/Gemm/Conv nodes with a constant weight: the `safe` set."""
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in model.graph.node if n.op_type in _QUANTIZABLE and any(i in constants for i in n.input[1:2])]


class StaticQuantizer:
    """Calibrate once, then quantize any subset of nodes in seconds (QDQ, U8 activations, S8 weights).

    Choices, each measured on this project's default model (2-vCPU AMD EPYC with AVX-512 VNNI):
    - activations uint8, weights int8 per channel: onnxruntime's MLAS runs U8S8 GEMMs on VNNI at
      1.7 TOP/s but S8S8 at 0.09 TOP/s (a 20x gap; `vitgender bench` measures both, see
      `vitgender.roofs`), which is why the first static artifact (S8S8) was no faster than fp32;
    - MatMul/Gemm/Conv outputs stay float: ORT then fuses DQ -> MatMul into one
      MatMulIntegerToFloat instead of QLinearMatMul -> DequantizeLinear, which is faster and
      rounds once less;
    - only MatMul/Gemm/Conv are quantized: LayerNorm, Softmax, GELU and the residual adds have no
      int8 kernels on ORT's CPU provider, so quantizing them only adds rounding (FQ-ViT: ViT-B
      MinMax W8A8 23.6% vs 84.5% fp32).
    """

    def __init__(
        self,
        source: Path,
        workdir: Path,
        input_name: str,
        pixels: np.ndarray,
        method: str = "minmax",
        op_types: tuple[str, ...] | None = _QUANTIZABLE,
    ) -> None:
        import onnx
        from onnxruntime.quantization import CalibrationMethod, create_calibrator

        self._prepared = _preprocessed(source, workdir / "prepared.onnx")
        self.model = onnx.load(str(self._prepared))
        if op_types is None:  # every op type onnxruntime has a QDQ rule for
            from onnxruntime.quantization.registry import QDQRegistry

            op_types = tuple(QDQRegistry)
        self._op_types = list(op_types)
        calibrator = create_calibrator(
            self._prepared,
            self._op_types,
            augmented_model_path=str(workdir / "augmented.onnx"),
            calibrate_method={
                "minmax": CalibrationMethod.MinMax,
                "entropy": CalibrationMethod.Entropy,
                "percentile": CalibrationMethod.Percentile,
            }[method],
        )
        # One batch per call: ORT's histogram calibrators (entropy, percentile) keep every calibrated
        # activation of a call in memory (12.7 GB for 256 images in one call) and cannot stack a
        # shorter last batch; each call merges into the ranges or histograms of the calls before.
        with contextlib.redirect_stdout(io.StringIO()):  # their progress chatter is print()ed to stdout
            for start in range(0, len(pixels), _CALIBRATION_BATCH):
                calibrator.collect_data(_Batch(input_name, pixels[start : start + _CALIBRATION_BATCH]))
            self._ranges = calibrator.compute_data()
        del calibrator

    def quantize(self, nodes: list[str] | None) -> onnx.ModelProto:
        """The QDQ model quantizing `nodes` (None: every node of the calibrated op types)."""
        if nodes is not None and not nodes:  # ORT reads an empty list as "no restriction"
            return copy.deepcopy(self.model)
        from onnxruntime.quantization import QuantType
        from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

        quantizer = QDQQuantizer(
            copy.deepcopy(self.model),
            True,  # per channel
            REDUCE_RANGE,
            QuantType.QInt8,
            QuantType.QUInt8,
            self._ranges,
            nodes or [],
            [],
            self._op_types,
            {
                "ActivationSymmetric": False,
                "WeightSymmetric": True,
                "OpTypesToExcludeOutputQuantization": list(_QUANTIZABLE),
            },
        )
        quantizer.quantize_model()
        return quantizer.model.model


@dataclass(frozen=True)
class StaticPlan:
    """Which nodes a static int8 artifact quantizes and, for `auto`, the evidence for what stayed float."""

    preset: str
    nodes: list[str] | None  # None: every op ORT can quantize (`full`)
    kept_float: list[str] = field(default_factory=list)  # auto: the units left in float, most sensitive first
    sensitivity: dict[str, float] = field(default_factory=dict)  # auto: unit -> q90 |Δlogit| quantized alone
    fit: dict | None = None  # auto: the target and what the chosen plan reached on the calibration images
    always_float: list[str] = field(default_factory=list)  # units kept float whatever the preset (the head)

    def manifest(self) -> dict:
        out = {
            "preset": self.preset,
            "activations": "uint8 (per tensor)",
            "weights": "int8 (per channel, 7-bit range)",
            "quantized_nodes": "every op onnxruntime can" if self.nodes is None else len(self.nodes),
            "always_float": self.always_float,
        }
        if self.preset == "auto":
            out |= {
                "kept_float": self.kept_float,
                "fit": self.fit,
                "sensitivity_q90_abs_logit_diff_alone": self.sensitivity,
            }
        return out


def _logits(model: onnx.ModelProto, input_name: str, pixels: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {input_name: pixels[i : i + 16]})[0] for i in range(0, len(pixels), 16)])


def plan_auto(
    quantizer: StaticQuantizer,
    input_name: str,
    pixels: np.ndarray,
    target: QuantTarget,
    progress: Callable[[str], None] = lambda message: None,
    float_units: tuple[str, ...] = (),
    max_float: int = 4,
) -> StaticPlan:
    """Quantize as much as possible while the artifact meets `target` on the calibration images.

    Sensitivity is measured, not assumed, on real quantized graphs run by onnxruntime: each unit
    (a block's attention, a block's MLP, the patch embedding) quantized alone, q90 |Δlogit|
    against the float model; `quant_plan.fewest_float` then keeps the fewest most sensitive units
    float. Validation must use other images.
    """
    reference = _logits(quantizer.model, input_name, pixels)
    units = {u: nodes for u, nodes in quantizable_units(quantizer.model).items() if u not in float_units}

    def nodes_without(kept_float: list[str]) -> list[str]:
        return [n for unit, nodes in units.items() if unit not in kept_float for n in nodes]

    def figures(kept_float: list[str]) -> dict:
        return target.figures(reference, _logits(quantizer.quantize(nodes_without(kept_float)), input_name, pixels))

    plan = fewest_float(list(units), figures, target, max_float, progress)
    fit = {"target": str(target), "calibration_images": len(pixels), "units": len(units), "max_float": max_float}
    fit["method"] = "each candidate quantized by onnxruntime and run on the calibration images"
    return StaticPlan(
        "auto",
        nodes_without(plan.kept_float),
        kept_float=plan.kept_float,
        sensitivity=plan.sensitivity,
        fit=fit | {"reached": plan.reached, "met": plan.met},
    )


def to_int8_static(
    source: Path,
    target: Path,
    input_name: str,
    pixels: np.ndarray,
    *,
    method: str = "minmax",
    preset: str = "safe",
    auto_target: QuantTarget | None = None,
    max_float: int = 4,
    float_units: tuple[str, ...] = (),
    progress: Callable[[str], None] = lambda message: None,
) -> StaticPlan:
    """Quantize `source` by `preset`; nodes of `float_units` (`unit_of` names) always stay float."""
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        quantizer = StaticQuantizer(
            source, Path(tmp), input_name, pixels, method, op_types=None if preset == "full" else _QUANTIZABLE
        )
        if preset == "safe":
            plan = StaticPlan("safe", _weight_nodes(quantizer.model))
        elif preset == "auto":
            plan = plan_auto(
                quantizer,
                input_name,
                pixels,
                auto_target or QuantTarget.parse(DEFAULT_TARGET),
                progress,
                float_units,
                max_float,
            )
        else:
            plan = StaticPlan("full", None)
        if float_units:
            kept = {n.name for n in quantizer.model.graph.node if unit_of(n) in float_units}
            everything = [n.name for n in quantizer.model.graph.node] if plan.nodes is None else plan.nodes
            plan = replace(plan, nodes=[n for n in everything if n not in kept], always_float=list(float_units))
        onnx.save(quantizer.quantize(plan.nodes), str(target))
    return plan

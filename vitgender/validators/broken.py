"""A catalogue of deliberately broken artifacts, built from an export of the user's own model.

The fit command (`vitgender validate --fit-budgets`) runs them next to the correct artifacts to
measure how often the gate catches each kind of real export bug: scaled weights (x1.05, x1.02), a
wrong normalisation (0.5/0.5), reversed channels, nearest instead of the model's resize, labels in
the wrong order, and one block of an int8 model at 4 bits. Each is an ONNX file with its sidecar,
so any runner-based code path treats it like an artifact.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitgender.precision import Precision
from vitgender.runtimes.sidecar import sidecar_path


def _copy_with_sidecar(source: Path, target: Path, edit_sidecar=lambda data: data) -> Path:
    shutil.copyfile(source, target)
    data = json.loads(sidecar_path(source).read_text())
    sidecar_path(target).write_text(json.dumps(edit_sidecar(data)))
    return target


def _save_onnx(model, source: Path, target: Path) -> Path:
    import onnx

    onnx.save(model, str(target))
    data = json.loads(sidecar_path(source).read_text())
    sidecar_path(target).write_text(json.dumps(data))
    return target


def _scale_largest_weight(source: Path, target: Path, factor: float) -> Path:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    largest = max(
        (i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT),
        key=lambda i: int(np.prod(i.dims)),
    )
    largest.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(largest) * np.float32(factor), largest.name))
    return _save_onnx(model, source, target)


def _prepend(source: Path, target: Path, make_nodes) -> Path:
    """Insert nodes between the graph input and its consumers (a preprocessing bug baked into the graph)."""
    import onnx

    model = onnx.load(str(source))
    graph = model.graph
    name = graph.input[0].name
    for node in graph.node:
        node.input[:] = [f"{name}_broken" if i == name else i for i in node.input]
    nodes, initializers = make_nodes(name, f"{name}_broken")
    graph.initializer.extend(initializers)
    for node in reversed(nodes):
        graph.node.insert(0, node)
    return _save_onnx(model, source, target)


def _renormalise(mean: list[float], std: list[float]):
    """pixels normalised with mean/std -> as if normalised with 0.5/0.5 (the in21k-ViT convention)."""
    from onnx import helper, numpy_helper

    def nodes(inp: str, out: str):
        scale = (np.asarray(std, np.float32) / 0.5).reshape(1, 3, 1, 1)
        shift = ((np.asarray(mean, np.float32) - 0.5) / 0.5).reshape(1, 3, 1, 1)
        return (
            [
                helper.make_node("Mul", [inp, "broken_scale"], ["broken_scaled"]),
                helper.make_node("Add", ["broken_scaled", "broken_shift"], [out]),
            ],
            [numpy_helper.from_array(scale, "broken_scale"), numpy_helper.from_array(shift, "broken_shift")],
        )

    return nodes


def _bgr(inp: str, out: str):
    from onnx import helper, numpy_helper

    return (
        [helper.make_node("Gather", [inp, "broken_bgr"], [out], axis=1)],
        [numpy_helper.from_array(np.asarray([2, 1, 0], np.int64), "broken_bgr")],
    )


def _blocks(model) -> int:
    """How many encoder blocks the exported graph's name scopes mention."""
    found = {
        int(m[1])
        for n in model.graph.node
        for p in n.metadata_props
        if p.key == "pkg.torch.onnx.name_scopes"
        for m in re.finditer(r"encoder\.layer\.(\d+)", p.value)
    }
    return max(found) + 1 if found else 0


def _four_bit_block(source: Path, target: Path) -> Path:
    """Round one middle encoder block's int8 weights to 16 levels (4 bits), as a broken quantizer would."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    block = max(_blocks(model) // 2 - 1, 0)
    scope = f"model.vit.encoder.layer.{block}"
    in_block = {
        i
        for n in model.graph.node
        if any(p.key == "pkg.torch.onnx.name_scopes" and f"'{scope}'" in p.value for p in n.metadata_props)
        for i in n.input
    }
    weights = {n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear" and set(n.output) & in_block}
    changed = 0
    for init in model.graph.initializer:
        if init.name in weights and init.data_type == onnx.TensorProto.INT8 and len(init.dims) >= 2:
            q = numpy_helper.to_array(init).astype(np.int32)
            init.CopyFrom(numpy_helper.from_array(np.clip(np.round(q / 16) * 16, -128, 127).astype(np.int8), init.name))
            changed += 1
    if not changed:
        raise ValueError(f"no int8 weights found in {scope} of {source.name}")
    return _save_onnx(model, source, target)


@dataclass(frozen=True)
class Variant:
    path: Path
    precision: Precision
    what: str


def broken_variants(export: Path, work: Path) -> tuple[dict[str, Variant], list[str]]:
    """name -> the broken file, its declared precision and what is wrong; plus the variants that
    could not be built from this export (and why).

    Built from the export's fp32 ONNX (`model.onnx`) and, for the 4-bit block, its static int8
    ONNX: ask `vitgender export --formats onnx,onnx-int8-static` (part of `all`) for the full set.
    The nearest-resize variant changes only the sidecar: validate feeds every runner the images
    preprocessed as its sidecar says, which is the bug a wrong deployment config causes.
    """
    work.mkdir(parents=True, exist_ok=True)
    fp32, static = export / "model.onnx", export / "model_int8_static.onnx"
    skipped = []
    if not fp32.is_file():
        return {}, ["every variant: the export has no fp32 ONNX (model.onnx); add --formats onnx"]
    pre = json.loads(sidecar_path(fp32).read_text())["preprocessor"]
    variants = {
        "weight x1.05": Variant(
            _scale_largest_weight(fp32, work / "w105.onnx", 1.05),
            Precision.FP32,
            "largest fp32 weight matrix scaled by 1.05",
        ),
        "weight x1.02": Variant(
            _scale_largest_weight(fp32, work / "w102.onnx", 1.02),
            Precision.FP32,
            "largest fp32 weight matrix scaled by 1.02",
        ),
        "0.5/0.5 normalisation": Variant(
            _prepend(fp32, work / "norm.onnx", _renormalise(pre["image_mean"], pre["image_std"])),
            Precision.FP32,
            "the model's mean/std replaced by 0.5/0.5 inside the graph",
        ),
        "RGB->BGR": Variant(
            _prepend(fp32, work / "bgr.onnx", _bgr), Precision.FP32, "channels reversed inside the graph"
        ),
        "nearest resize": Variant(
            _copy_with_sidecar(
                fp32, work / "nearest.onnx", lambda d: {**d, "preprocessor": {**d["preprocessor"], "resample": 0}}
            ),
            Precision.FP32,
            "sidecar says nearest resize, not the model's resample",
        ),
        "label order swapped": Variant(
            _copy_with_sidecar(fp32, work / "swapped.onnx", lambda d: {**d, "labels": d["labels"][::-1]}),
            Precision.FP32,
            "sidecar lists the labels in reverse order",
        ),
    }
    if pre.get("image_mean") == [0.5, 0.5, 0.5] and pre.get("image_std") == [0.5, 0.5, 0.5]:
        del variants["0.5/0.5 normalisation"]
        skipped.append("0.5/0.5 normalisation: the model already uses 0.5/0.5")
    if static.is_file():
        try:
            variants["int8 block at 4 bits"] = Variant(
                _four_bit_block(static, work / "int4block.onnx"),
                Precision.INT8,
                "one middle encoder block's int8 weights rounded to 4 bits",
            )
        except ValueError as exc:
            skipped.append(f"int8 block at 4 bits: {exc}")
    else:
        skipped.append("int8 block at 4 bits: the export has no static int8 ONNX (model_int8_static.onnx)")
    return variants, skipped

"""Bake preprocessing into the graph: a model that takes raw uint8 RGB pixels (NHWC).

Mobile and web clients then only resize to the model's H x W and hand over the bytes they
already have; rescaling, mean/std normalisation and the NHWC -> NCHW transpose run inside the
graph with exactly the checkpoint's constants, so no client can get normalisation wrong.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vitgender.preprocess import PreprocessConfig

RAW_INPUT = "image"


def bake_preprocessing(source: Path, target: Path, pre: PreprocessConfig, input_name: str) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    scale = np.float32(pre.rescale_factor if pre.do_rescale else 1.0)
    mean = np.asarray(pre.image_mean if pre.do_normalize else (0, 0, 0), np.float32).reshape(1, 1, 1, 3)
    std = np.asarray(pre.image_std if pre.do_normalize else (1, 1, 1), np.float32).reshape(1, 1, 1, 3)
    # x = (uint8 * scale - mean) / std  ==  uint8 * (scale / std) - mean / std   (one Mul, one Sub)
    graph.initializer.extend(
        [
            numpy_helper.from_array((scale / std).astype(np.float32), "bake_scale"),
            numpy_helper.from_array((mean / std).astype(np.float32), "bake_shift"),
        ]
    )
    nodes = [
        helper.make_node("Cast", [RAW_INPUT], ["bake_float"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["bake_float", "bake_scale"], ["bake_scaled"]),
        helper.make_node("Sub", ["bake_scaled", "bake_shift"], ["bake_normalised"]),
        helper.make_node("Transpose", ["bake_normalised"], [input_name], perm=[0, 3, 1, 2]),
    ]
    old_input = next(i for i in graph.input if i.name == input_name)
    graph.input.remove(old_input)
    graph.input.insert(
        0, helper.make_tensor_value_info(RAW_INPUT, TensorProto.UINT8, ["batch", pre.height, pre.width, 3])
    )
    for node in reversed(nodes):
        graph.node.insert(0, node)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(target))
    return target

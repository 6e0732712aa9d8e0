"""Where does an artifact start to differ from PyTorch? Block-by-block activation comparison.

Like polygraphy's "mark all outputs" comparison, narrowed to the stages a ViT engineer reasons
in: the patch embeddings, each encoder block's attention output, MLP hidden activations and
block output, the final layer norm and the logits. PyTorch's activations come from forward hooks;
an ONNX artifact's from marking the tensors its exporter tagged with the same module scope
(`pkg.torch.onnx.name_scopes`, which survives fp16 conversion and QDQ quantization) as extra
graph outputs. onnx2tf renames every tensor, so a TFLite artifact is mapped through what
survives: its LayerNorms, named `layer_normalization[_i]` in forward order. A ViT's block `k`
output is what enters layer norm `2k + 2` (the next block's, or the final one), and the patch
embeddings are what enters the first: those stages, and the logits, are compared.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np

SCOPES_KEY = "pkg.torch.onnx.name_scopes"
EXPORT_PREFIX = "model."  # the exporter wraps the HF model as `model` (vitgender.exporters.onnx_export)


def stages(num_layers: int) -> list[tuple[str, str]]:
    """(stage name, HF module path) in forward order."""
    out = [("embeddings", "vit.embeddings")]
    for k in range(num_layers):
        out += [(f"block {k} attention", f"vit.encoder.layer.{k}.attention"),
                (f"block {k} mlp", f"vit.encoder.layer.{k}.intermediate"),
                (f"block {k}", f"vit.encoder.layer.{k}")]
    return out + [("final layernorm", "vit.layernorm"), ("logits", "classifier")]


def torch_activations(model, pixels: np.ndarray) -> dict[str, np.ndarray]:
    import torch

    captured: dict[str, np.ndarray] = {}
    handles = []
    for name, path in stages(model.config.num_hidden_layers):
        module = model.get_submodule(path)

        def hook(_module, _inputs, output, name=name):
            tensor = output[0] if isinstance(output, tuple) else output
            captured[name] = tensor.detach().float().numpy()

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.inference_mode():
            model(pixel_values=torch.from_numpy(np.ascontiguousarray(pixels)))
    finally:
        for handle in handles:
            handle.remove()
    return captured


def _scopes(node) -> list[str]:
    for prop in node.metadata_props:
        if prop.key == SCOPES_KEY:
            try:
                return ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return []
    return []


def onnx_stage_tensors(model, num_layers: int) -> dict[str, str]:
    """Stage -> the tensor that leaves that module: the output of its last node in graph order."""
    last: dict[str, str] = {}
    for node in model.graph.node:
        for scope in _scopes(node):
            if node.output:
                last[scope] = node.output[0]
    found = {name: last[EXPORT_PREFIX + path] for name, path in stages(num_layers) if EXPORT_PREFIX + path in last}
    found["logits"] = model.graph.output[0].name
    return found


def onnx_activations(path: Path, inputs: np.ndarray, num_layers: int) -> dict[str, np.ndarray]:
    import onnx
    import onnxruntime as ort
    from onnx import helper

    model = onnx.load(str(path))
    tensors = onnx_stage_tensors(model, num_layers)
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.output]}
    existing = {o.name for o in model.graph.output}
    for tensor in tensors.values():
        if tensor not in existing:
            model.graph.output.append(helper.make_tensor_value_info(tensor, types.get(tensor, onnx.TensorProto.FLOAT), None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0]
    dtype = {"tensor(float16)": np.float16, "tensor(uint8)": np.uint8}.get(feed.type, np.float32)
    values = session.run(list(tensors.values()), {feed.name: inputs.astype(dtype, copy=False)})
    return {name: np.asarray(value, dtype=np.float32) for name, value in zip(tensors, values)}


def _layer_norm_inputs(runner) -> list[int]:
    """Tensor indices entering each `layer_normalization[_i]` scope of a TFLite graph, in forward order."""
    interpreter = runner.interpreter
    names = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
    entering: dict[int, int] = {}
    for op in interpreter._get_ops_details():
        for out in op["outputs"]:
            match = re.search(r"/layer_normalization(?:_(\d+))?/", names.get(out, ""))
            if match and op["op_name"] == "MEAN":
                number = int(match[1] or 0)
                entering.setdefault(number, op["inputs"][0])  # the first MEAN reads the layer norm's input
    return [entering[k] for k in sorted(entering)]


def tflite_activations(path: Path, pixels: np.ndarray, num_layers: int) -> dict[str, np.ndarray]:
    from vitgender.runtimes.tflite_runner import TfliteRunner

    runner = TfliteRunner.open(path, keep_intermediates=True)
    norms = _layer_norm_inputs(runner)
    if len(norms) != 2 * num_layers + 1:
        return {}  # not the graph shape this mapping knows: no localisation rather than a wrong one
    tensors = {"embeddings": norms[0], **{f"block {k}": norms[2 * k + 2] for k in range(num_layers)}}
    captured: dict[str, list[np.ndarray]] = {name: [] for name in [*tensors, "logits"]}
    for image in pixels:
        captured["logits"].append(runner.run(image[None])[0])
        for name, index in tensors.items():
            captured[name].append(runner.tensor(index)[0])
    return {name: np.stack(rows) for name, rows in captured.items()}


def compare_stages(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> list[dict]:
    """Relative L2 error and mean per-image cosine of each stage both sides expose, in forward order."""
    rows = []
    for name in reference:
        if name not in candidate or reference[name].shape != candidate[name].shape:
            continue
        ref = reference[name].reshape(len(reference[name]), -1).astype(np.float64)
        art = candidate[name].reshape(len(candidate[name]), -1).astype(np.float64)
        rel = float(np.linalg.norm(art - ref) / max(np.linalg.norm(ref), 1e-12))
        norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(art, axis=1)
        cosine = float(np.mean(np.where(norms > 0, (ref * art).sum(axis=1) / np.maximum(norms, 1e-300), 1.0)))
        rows.append({"stage": name, "relative_l2": rel, "cosine": cosine})
    return rows


FLOAT32_NOISE = 1e-4  # relative error of a faithful fp32 conversion stays below this at every stage


def divergence(rows: list[dict], floor: float = 1e-6) -> dict | None:
    """The stage whose relative error grows most over the stage before it: where things start to go wrong.

    None when no stage differs beyond float32 rounding (a faithful fp32 artifact).
    """
    if not rows or max(row["relative_l2"] for row in rows) < FLOAT32_NOISE:
        return None
    previous, best = floor, None
    for row in rows:
        growth = row["relative_l2"] / max(previous, floor)
        if best is None or growth > best["growth"]:
            best = {"stage": row["stage"], "growth": growth, "relative_l2": row["relative_l2"]}
        previous = max(row["relative_l2"], floor)
    return best


RUNTIMES = ("onnx", "tflite")


def localize(torch_model, artifact: Path, runtime: str, pixels: np.ndarray, inputs: np.ndarray) -> dict:
    """The per-stage error curve of an ONNX or TFLite artifact against PyTorch on the same images."""
    reference = torch_activations(torch_model, pixels)
    layers = torch_model.config.num_hidden_layers
    candidate = (onnx_activations(artifact, inputs, layers) if runtime == "onnx"
                 else tflite_activations(artifact, inputs, layers))
    rows = compare_stages(reference, candidate)
    return {"stages": rows, "divergence": divergence(rows)}

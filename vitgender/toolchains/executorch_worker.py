"""Everything that needs ExecuTorch or torchao's PT2E quantizers, run inside its own Python environment
(`.venv-executorch`).

ExecuTorch releases that support torch 2.13 (1.2.0-1.4.1) require numpy >= 2, while onnx2tf
1.29.24 pins numpy 1.26.4 and MediaPipe 0.10.21 needs numpy < 2, so ExecuTorch cannot share the
main environment (`vitgender.toolchains.side_env`).

Why a standalone module: it runs under the side environment's Python, which has torch,
executorch, transformers and safetensors but not the rest of vitgender's dependencies (no PIL,
typer, rich, onnx). So it imports nothing from vitgender but `vitgender.errors`,
`vitgender.toolchains.processes` (standard library only), `vitgender.quant_plan` (numpy only)
and `vitgender.models` (the model type's embedding rewrite, stages and export attention: torch and transformers
only); the package itself reaches it through a PYTHONPATH holding only a link to the package. `tests/test_executorch.py` imports it in the side
environment to keep it that way.

    python -m vitgender.toolchains.executorch_worker JOB.json   # export (checkpoint -> .pte) or inventory,
                                                               # `run_job` framing
    python -m vitgender.toolchains.executorch_worker run MODEL.pte  # serve logits over stdin/stdout (framed arrays)
"""

from __future__ import annotations

import contextlib
import json
import struct
import sys
from pathlib import Path

import numpy as np

from vitgender.toolchains.processes import die_with_parent, job_main

MAX_BATCH = 32  # the dynamic batch dimension of exported programs: 1..MAX_BATCH


def _logits_module(checkpoint: str, hf_class: str, int8_attention: bool = False):
    """The checkpoint in the HF class its model type names (`vitgender.models`, decided in the main process),
    with the attention its type exports with (`ModelType.export_attention`: no expand copies outside XNNPACK;
    with `int8_attention`, where that attention goes through transformers' interface, the shape Inductor's
    int8 attention fuses)."""
    import torch
    import transformers

    from vitgender.models import attention, model_config

    model_type = json.loads((Path(checkpoint) / "config.json").read_text())["model_type"]
    implementation = model_config(model_type).export_attention
    if implementation == attention.BMM:
        attention.register()
        implementation = attention.MATMUL if int8_attention else attention.BMM
    model = (
        getattr(transformers, hf_class)
        .from_pretrained(checkpoint, attn_implementation=implementation, dtype=torch.float32)
        .eval()
    )

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixel_values):
            return self.model(pixel_values=pixel_values).logits

    return Logits().eval()


def _inside(node, modules: tuple[str, ...]) -> bool:
    """Whether a graph node comes from one of `modules` (or a module inside one), by its module stack."""
    for path, _ in node.meta.get("nn_module_stack", {}).values():
        path = path.removeprefix("L['self'].")
        if any(path == m or path.startswith(m + ".") for m in modules):
            return True
    return False


def _units(model) -> dict[str, list[str]]:
    """unit -> the Linear/Conv2d module paths (inside the HF model) it quantizes, named like the stages
    `validate --localize` and ORT's plan report: embeddings, each block's attention and MLP.

    A module belongs to the innermost stage holding it; a block's modules outside its attention are
    its MLP (ViT's `intermediate` and `output` both). The head belongs to no unit: it stays float.
    """
    import torch

    from vitgender.models import model_config

    config = model.config.to_dict()
    stages = model_config(model.config.model_type).stages(model.config.num_hidden_layers, config)
    units: dict[str, list[str]] = {}
    for name, layer in model.named_modules():
        if not isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        holding = [(path, stage) for stage, path in stages if name == path or name.startswith(path + ".")]
        if not holding:
            continue
        stage = max(holding, key=lambda held: len(held[0]))[1]
        if stage.startswith("block ") and not stage.endswith(("attention", "mlp")):
            stage += " mlp"
        units.setdefault(stage, []).append(name)
    return units


def _fake_quantize_rows(x, dims: tuple[int, ...]):
    """What XNNPACK's dynamic int8 does to an input: asymmetric int8 per row, scale from the row's range."""
    import torch

    low = torch.clamp(x.amin(dim=dims, keepdim=True), max=0)
    high = torch.clamp(x.amax(dim=dims, keepdim=True), min=0)
    scale = torch.clamp((high - low) / 255, min=2**-12)
    zero = torch.round(-128 - low / scale)
    return (torch.clamp(torch.round(x / scale) + zero, -128, 127) - zero) * scale


@contextlib.contextmanager
def _dynamic_int8(model, names: list[str]):
    """Simulate the dynamic int8 program's arithmetic on `names` in PyTorch: per-channel symmetric int8
    weights, inputs rounded per row (a linear's token; a convolution's whole image, an approximation the
    measured program corrects). Restored on exit."""
    import torch

    saved, hooks = {}, []
    try:
        for name in names:
            layer = model.get_submodule(name)
            weight = layer.weight.data
            saved[name] = weight.clone()
            scale = torch.clamp(weight.abs().amax(dim=tuple(range(1, weight.dim())), keepdim=True) / 127, min=2**-12)
            weight.copy_(torch.clamp(torch.round(weight / scale), -127, 127) * scale)
            dims = (-1,) if isinstance(layer, torch.nn.Linear) else (1, 2, 3)
            hooks.append(
                layer.register_forward_pre_hook(lambda _, args, dims=dims: (_fake_quantize_rows(args[0], dims),))
            )
        yield
    finally:
        for hook in hooks:
            hook.remove()
        for name, weight in saved.items():
            model.get_submodule(name).weight.data.copy_(weight)


# How `--quant-preset auto` measures a candidate plan, per ExecuTorch int8 program (see `_plan`).
_FIT_METHODS = {
    "int8-dynamic": "simulated in PyTorch: per-row int8 inputs, per-channel int8 weights",
    "int8": "PT2E graph run in PyTorch: the program's calibrated scales, quantize/dequantize as XNNPACK will",
}


def _plan(module, job: dict, example: tuple, dynamic: dict) -> dict:
    """`--quant-preset auto` for an ExecuTorch int8 program: rank and search on the calibration images.

    Lowering a program per candidate would take a minute each. The dynamic program's arithmetic is
    simulated (its own rounding, per-row inputs and per-channel weights, applied in PyTorch), so a
    candidate costs one float pass. The static program's scales depend on calibration, so each
    candidate is quantized for real (PT2E prepare, calibrate, convert) and its quantize/dequantize
    graph run in PyTorch. Either way the export then measures the lowered program against PyTorch
    (`int8_check`), which is the figure it reports.
    """
    import torch

    from vitgender.quant_plan import QuantTarget, fewest_float

    model = module.model
    target = QuantTarget.parse(job["plan"]["target"])
    pixels = torch.from_numpy(np.load(job["calibration"]))
    units = _units(model)

    def logits(program) -> np.ndarray:
        return np.concatenate([program(pixels[i : i + 32]).numpy() for i in range(0, len(pixels), 32)])

    def int8_names(kept_float: list[str]) -> list[str]:
        return [n for unit, names in units.items() if unit not in kept_float for n in names]

    def float_names(kept_float: list[str]) -> list[str]:
        return [*job["float_modules"], *(f"model.{n}" for unit in kept_float for n in units[unit])]

    with torch.no_grad():
        reference = logits(module)

        def figures(kept_float: list[str]) -> dict:
            if job["precision"] == "int8-dynamic":
                with _dynamic_int8(model, int8_names(kept_float)):
                    return target.figures(reference, logits(module))
            candidate = _quantize(module, example, dynamic, job | {"float_modules": float_names(kept_float)})
            return target.figures(reference, logits(candidate))

        plan = fewest_float(list(units), figures, target, job["plan"]["max_float"])
    job["float_modules"] = float_names(plan.kept_float)
    return {
        "preset": "auto",
        "kept_float": plan.kept_float,
        "fit": {
            "target": str(target),
            "calibration_images": len(pixels),
            "units": len(units),
            "max_float": job["plan"]["max_float"],
            "method": _FIT_METHODS[job["precision"]],
            "reached": plan.reached,
            "met": plan.met,
        },
        "sensitivity_q90_abs_logit_diff_alone": plan.sensitivity,
    }


def _quantize(module, example: tuple, dynamic: dict, job: dict):
    """PT2E int8 for XNNPACK, calibrated on the job's pixels: static (one scale per activation tensor)
    or dynamic (XNNPACK quantizes each row of a linear's input at run time); per-channel weights."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from vitgender.models import model_config

    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=job["precision"] == "int8-dynamic")
    quantizer = XNNPACKQuantizer().set_global(config)
    floats = tuple(job.get("float_modules") or ())
    # Only the GEMMs int8 in the blocks, as in full-integer TFLite: XNNPACKQuantizer's static config also
    # requantizes every residual add and the attention scale's mul per tensor, an error no float unit
    # removes (race5: each unit alone int8 measured q90 |dlogit| 0.86-0.97, all of them 1.04). The
    # embeddings stay whole (their pad of the patch tokens has no float/int8 boundary XNNPACK accepts).
    # set_module_name(name, None) is "not supported yet" (executorch 1.4): filter instead; a conv's
    # partition also holds its weight and bias nodes, which have no target to check.
    gemms = (torch.ops.aten.linear.default, torch.ops.aten.conv2d.default, torch.ops.aten.convolution.default)
    embeddings = ("model." + model_config(module.model.config.model_type).stages(0)[0][1],)

    def annotated(node) -> bool:
        whole = node.op != "call_function" or node.target in gemms or _inside(node, embeddings)
        return whole and not _inside(node, floats)

    quantizer.set_filter_function(annotated)
    graph = torch.export.export(module, example, dynamic_shapes=dynamic).module()
    prepared = prepare_pt2e(graph, quantizer)
    calibration = torch.from_numpy(np.load(job["calibration"]))
    for start in range(0, len(calibration), 8):
        prepared(calibration[start : start + 8])
    return convert_pt2e(prepared)


def _quantize_for_inductor(module, example: tuple, dynamic: dict, job: dict):
    """PT2E int8 for x86 Inductor (oneDNN): uint8 activations per tensor, int8 weights per channel, the
    GEMMs' outputs float, as onnxruntime's int8 does; the job's float modules left alone.
    Static (`int8`): activation ranges from the quantizer's default histogram observer. Min-max (ORT's
    default) was measured on the 3,980 validation faces at 99.60% agreement but -0.20 pt accuracy
    (McNemar p 0.04), the histogram at 99.42% and -0.13 pt (p 0.20). Where the attention has the
    `MATMUL` shape, its products are quantized too (q, k, v and the probabilities, per tensor), which
    torchao's fusion runs as one int8 attention kernel (`vitgender.runtimes.int8_attention`).
    Dynamic (`int8-dynamic`): each linear's input range is measured per call over the batch: 99.82%
    agreement and -0.03 pt on the same faces; its attention stays float (the fusion is static only).
    Returns the quantized graph and whether its attention is int8."""
    import torch
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as x86
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from vitgender.models.attention import MATMUL

    is_dynamic = job["precision"] == "int8-dynamic"
    config = x86.get_default_x86_inductor_quantization_config(is_dynamic=is_dynamic)
    quantizer = x86.X86InductorQuantizer().set_global(config)
    int8_attention = not is_dynamic and module.model.config._attn_implementation == MATMUL
    if int8_attention:
        quantizer.set_function_type_qconfig(torch.matmul, config)
    for name in job.get("float_modules") or ():
        quantizer.set_module_name_qconfig(name, None)
    prepared = prepare_pt2e(torch.export.export(module, example, dynamic_shapes=dynamic).module(), quantizer)
    # Forward passes run the observers: the weights' on the first, the activations' (static only) on every
    # calibration image. Dynamic int8 measures activations per call at run time, so one batch is enough.
    calibration = torch.from_numpy(np.load(job["calibration"]))
    for start in range(0, 1 if is_dynamic else len(calibration), 8):
        prepared(calibration[start : start + 8])
    return convert_pt2e(prepared), int8_attention


def _save_pt2(module, example: tuple, dynamic: dict, target: str) -> dict:
    """The quantized graph as a portable torch.export program (.pt2): quantize/dequantize ops and int8
    weights, no code for any one CPU; the `inductor` runtime compiles it for the CPU it runs on."""
    import torch

    # convert_pt2e folds each weight's quantize into an int8 constant but leaves the float weight as an
    # unused attribute; export would save both (a program five times the int8 weights' size).
    used = {node.target for node in module.graph.nodes if node.op == "get_attr"}
    for name in [n for n, _ in [*module.named_parameters(), *module.named_buffers()] if n not in used]:
        owner, _, attribute = name.rpartition(".")
        delattr(module.get_submodule(owner), attribute)
    program = torch.export.export(module, example, dynamic_shapes=dynamic)
    torch.export.save(program, target)
    return {"nodes": sum(1 for node in program.graph.nodes if node.op == "call_function")}


def export(job: dict) -> dict:
    """torch.export with a dynamic batch -> (PT2E int8) -> XNNPACK-lowered ExecuTorch program, or,
    for the `inductor` runtime, the PT2E int8 graph saved as a .pt2 program."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from vitgender.models import model_config  # torch + transformers only: fine in this environment

    int8_attention = job.get("int8_attention", False) and job.get("program") == "pt2" and job["precision"] == "int8"
    module = _logits_module(job["checkpoint"], job["hf_class"], int8_attention)
    channels, height, width = job["shape"]
    example = (torch.zeros(2, channels, height, width),)
    dynamic = {"pixel_values": {0: torch.export.Dim("batch", min=1, max=MAX_BATCH)}}
    # The model type's embedding rewrite, as for ONNX: positions baked at this size (DINOv2's run-time
    # bicubic interpolation is not an op XNNPACK lowers), prefix tokens as constants.
    rewrite = model_config(module.model.config.model_type).batch_free_embeddings(module.model, height, width)
    with torch.no_grad(), rewrite:
        if job.get("program") == "pt2":
            quantized, int8_attention = _quantize_for_inductor(module, example, dynamic, job)
            attention = "int8 (q, k, v and probabilities per tensor)" if int8_attention else "float"
            return {**_save_pt2(quantized, example, dynamic, job["target"]), "attention": attention}
        planned = {"plan": _plan(module, job, example, dynamic)} if job.get("plan") else {}
        if job["precision"] in ("int8", "int8-dynamic"):
            module = _quantize(module, example, dynamic, job)
        program = torch.export.export(module, example, dynamic_shapes=dynamic)
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch()
    Path(job["target"]).write_bytes(lowered.buffer)
    return {"delegates": len(lowered.executorch_program.execution_plan[0].delegates), **planned}


def _read_exact(stream, size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise EOFError
    return data


def send_array(stream, array: np.ndarray) -> None:
    """Frame: 4-byte header length, JSON header {dtype, shape}, raw bytes (C order)."""
    array = np.ascontiguousarray(array)
    header = json.dumps({"dtype": array.dtype.str, "shape": list(array.shape)}).encode()
    stream.write(struct.pack("<I", len(header)) + header)
    stream.write(array.tobytes())
    stream.flush()


def receive_array(stream) -> np.ndarray:
    (size,) = struct.unpack("<I", _read_exact(stream, 4))
    header = json.loads(_read_exact(stream, size))
    dtype = np.dtype(header["dtype"])
    count = int(np.prod(header["shape"])) if header["shape"] else 1
    return np.frombuffer(_read_exact(stream, count * dtype.itemsize), dtype).reshape(header["shape"])


def serve(pte: str) -> None:
    """Load the program once, then answer pixel_values with logits until stdin closes."""
    import torch
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(pte).load_method("forward")
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    send_array(stdout, np.zeros(0, np.float32))  # ready
    while True:
        try:
            pixels = receive_array(stdin)
        except EOFError:
            return
        outputs = [
            method.execute([torch.from_numpy(pixels[i : i + MAX_BATCH].copy())])[0].numpy()
            for i in range(0, len(pixels), MAX_BATCH)
        ]
        send_array(stdout, np.concatenate(outputs).astype(np.float32))


# XNNPACK value datatypes (backends/xnnpack/serialization/schema.fbs) -> bytes per element
_XNN_BYTES = {
    "xnn_datatype_fp32": ("float32", 4),
    "xnn_datatype_fp16": ("float16", 2),
    "xnn_datatype_bf16": ("bfloat16", 2),
    "xnn_datatype_qint8": ("int8", 1),
    "xnn_datatype_quint8": ("uint8", 1),
    "xnn_datatype_qcint8": ("int8", 1),
    "xnn_datatype_qint32": ("int32", 4),
    "xnn_datatype_qcint32": ("int32", 4),
    "xnn_datatype_int32": ("int32", 4),
    "xnn_datatype_qcint4": ("int4", 0.5),
    "xnn_datatype_qbint4": ("int4", 0.5),
}


def inventory(pte: str) -> dict:
    """Constant (weight) bytes by dtype, read from the XNNPACK graphs inside the program, and the
    delegation coverage: how many XNNPACK graphs it holds and which operators it runs outside them
    (each such operator splits the network into one more delegate call, and runs a portable kernel).

    The weights of a lowered program live in its XNNPACK delegate blobs, so the blobs'
    flatbuffers are decoded with the schema ExecuTorch ships (flatc) and every constant tensor
    value is counted with its element type; constants left outside a delegate are counted from
    the program's own tensor table.
    """
    import tempfile

    from executorch.backends.xnnpack.serialization import xnnpack_graph_serialize as xs
    from executorch.exir._serialize._flatbuffer import _flatc_decompile
    from executorch.exir._serialize._program import deserialize_pte_binary

    program = deserialize_pte_binary(Path(pte).read_bytes()).program
    schema = Path(xs.__file__).with_name("schema.fbs")
    weights: dict[str, float] = {}
    ops: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, blob in enumerate(program.backend_delegate_data):
            data = blob.data
            header = xs.XNNHeader.from_bytes(data[: xs.XNNHeader.EXPECTED_LENGTH])
            graph = data[header.flatbuffer_offset : header.flatbuffer_offset + header.flatbuffer_size]
            binary = Path(tmp) / f"g{i}.bin"
            binary.write_bytes(graph)
            _flatc_decompile(tmp, str(schema), str(binary), ["--raw-binary"])
            decoded = json.loads((Path(tmp) / f"g{i}.json").read_text())
            for node in decoded.get("xnodes", []):
                kind = node["xnode_union_type"]
                ops[kind] = ops.get(kind, 0) + 1
            for value in decoded.get("xvalues", []):
                tensor = value["xvalue_union"]
                tensor = tensor.get("tensor_value", tensor)
                if not tensor.get("constant_buffer_idx"):
                    continue
                dtype, size = _XNN_BYTES.get(tensor["datatype"], (tensor["datatype"], 4))
                count = int(np.prod(tensor.get("dims") or [1]))
                weights[dtype] = weights.get(dtype, 0) + count * size
    sizes = {
        0: ("uint8", 1),
        1: ("int8", 1),
        2: ("int16", 2),
        3: ("int32", 4),
        4: ("int64", 8),
        5: ("float16", 2),
        6: ("float32", 4),
        15: ("bfloat16", 2),
    }  # exir ScalarType
    for value in program.execution_plan[0].values:  # constants the delegates did not take
        tensor = value.val
        if getattr(tensor, "data_buffer_idx", 0) > 0:
            dtype, size = sizes.get(int(tensor.scalar_type), (str(tensor.scalar_type), 4))
            weights[dtype] = weights.get(dtype, 0) + int(np.prod(tensor.sizes or [1])) * size
    plan = program.execution_plan[0]
    outside: dict[str, int] = {}  # delegation coverage: what the program runs itself, between the XNNPACK graphs
    for chain in plan.chains:
        for instruction in chain.instructions:
            if hasattr(instruction.instr_args, "op_index"):
                name = plan.operators[instruction.instr_args.op_index].name
                outside[name] = outside.get(name, 0) + 1
    return {
        "weight_bytes_by_dtype": {k: int(v) for k, v in weights.items()},
        "delegates": len(program.backend_delegate_data),
        "outside_delegates": dict(sorted(outside.items(), key=lambda kv: -kv[1])),
        "op_counts": dict(sorted(ops.items(), key=lambda kv: -kv[1])),
    }


def _job(job: dict) -> dict:
    if job["command"] == "export":
        return export(job)
    if job["command"] == "inventory":
        return inventory(job["pte"])
    raise ValueError(f"unknown command {job['command']!r}")


def main(argv: list[str]) -> None:
    if len(argv) == 3 and argv[1] == "run":
        die_with_parent()
        serve(argv[2])
    else:
        job_main(_job, argv)


if __name__ == "__main__":
    main(sys.argv)

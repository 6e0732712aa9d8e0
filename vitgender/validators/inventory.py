"""Quantization proof: what an artifact really contains, read from the file itself.

An "int8" artifact whose weights are secretly float (or an "fp16" one still in fp32) passes
every accuracy check while shipping the wrong thing; this inventory catches it. For ONNX the
initializer dtypes and quantization ops; for TFLite the tensor dtypes of constant tensors.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from vitgender.precision import Precision
from vitgender.validators.checks import Check

QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
             "QLinearMatMul", "QLinearConv", "MatMulIntegerToFloat", "DynamicQuantizeMatMul"}


def _weight_bytes_share(bytes_by_dtype: Counter) -> dict[str, float]:
    total = sum(bytes_by_dtype.values()) or 1
    return {dtype: round(n / total, 4) for dtype, n in bytes_by_dtype.most_common()}


def onnx_inventory(path: Path) -> dict:
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
    return {"weight_bytes_by_dtype": dict(weights), "weight_share_by_dtype": _weight_bytes_share(weights),
            "quantization_ops": {op: n for op, n in ops.items() if op in QUANT_OPS},
            "op_counts": dict(ops.most_common())}


# TFLite TensorType enum values (tensorflow/lite/schema/schema.fbs).
_TFLITE_TYPES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 6: "bool", 7: "int16", 9: "int8",
                 10: "float64"}


def tflite_inventory(path: Path) -> dict:
    """Constant tensors (weights) are those backed by a non-empty flatbuffer buffer."""
    from vitgender.native import quiet_native_stderr

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
    return {"weight_bytes_by_dtype": dict(weights), "weight_share_by_dtype": _weight_bytes_share(weights),
            "quantization_ops": {k: v for k, v in op_counts.items() if k in ("QUANTIZE", "DEQUANTIZE")},
            "op_counts": op_counts}


def executorch_inventory(path: Path) -> dict:
    """Weight bytes by dtype from the XNNPACK graphs inside the .pte (decoded in the ExecuTorch environment)."""
    from vitgender.toolchains.side_env import run_executorch_job

    found = run_executorch_job("inventory", {"pte": Path(path)}, what=f"{path}: reading the ExecuTorch program's weights")
    weights = Counter(found["weight_bytes_by_dtype"])
    return {"weight_bytes_by_dtype": dict(weights), "weight_share_by_dtype": _weight_bytes_share(weights),
            "quantization_ops": {}, "op_counts": found["op_counts"], "delegates": found["delegates"]}


def inventory(path: Path, runtime: str) -> dict | None:
    """What the file holds, for the runtimes whose files can be read without running them."""
    readers = {"onnx": onnx_inventory, "tflite": tflite_inventory, "executorch": executorch_inventory}
    return readers[runtime](path) if runtime in readers else None


def check_precision(inv: dict, precision: Precision, minimum_share: float = 0.25) -> Check:
    """Whether the file's weight bytes agree with its declared precision.

    The share is of weight *bytes*; a quarter leaves room for small models whose embeddings
    and norms (kept in float by design) are a large part of the file, while a secretly-float
    "int8" file has none at all.
    """
    share = inv["weight_share_by_dtype"]
    int8 = share.get("int8", 0) + share.get("uint8", 0)
    fp16 = share.get("float16", 0)
    if precision.is_int8:
        return Check("quantization_proof", int8 >= minimum_share, round(int8, 4), minimum_share,
                     f"declared {precision} but only {int8:.0%} of weight bytes are 8-bit integers (by dtype: {share})")
    if precision is Precision.FP16:
        return Check("quantization_proof", fp16 >= minimum_share, round(fp16, 4), minimum_share,
                     f"declared fp16 but only {fp16:.0%} of weight bytes are float16 (by dtype: {share})")
    return Check("quantization_proof", int8 + fp16 <= 0.5, round(int8 + fp16, 4), 0.5,
                 f"declared fp32 but {int8 + fp16:.0%} of weight bytes are reduced precision")

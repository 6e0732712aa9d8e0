"""fp32 ONNX -> TF SavedModel (onnx2tf, once) -> every TFLite variant (TFLite converter).

Measured on the default model (2 cores): onnx2tf's own CLI takes 3 min 35 s and 5.6 GB,
most of it spent converting its in-memory Keras model to fp32 and fp16 TFLite *with Flex ops
allowed*; converting its SavedModel with `tf.lite.TFLiteConverter` takes ~7 s per variant and
admits built-in ops only (what LiteRT runs). So onnx2tf is stopped right after it has written
the SavedModel, and all four TFLite variants are derived from it.

A free batch dimension. The SavedModel's serving signature takes `[None, H, W, 3]` (NHWC) and the
TFLite files keep `shape_signature` -1 on the batch, so `resize_tensor_input` runs any batch in one
invoke. What was tried, cheapest first (onnx2tf 1.29.24, TF 2.19):
- onnx2tf on HF's graph with the batch left symbolic: fails at the position-embedding Add (its
  layout inference mis-shapes the [CLS] Shape -> Concat -> Expand branch when the batch is unknown).
- onnx2tf `-b N` / `-ois 1,...`: fixes the batch; LiteRT's `resize_tensor_input` then fails in
  XNNPACK because every Reshape carries the constant batch.
- wrapping the batch-1 signature in `tf.vectorized_map`: segfaulted TensorFlow; `tf.map_fn` would
  be a per-image loop in the graph.
- what works: the ONNX export rewrites the [CLS] step so the graph has no Shape op
  (each model type's `batch_free_embeddings`, `vitgender.models`); onnx2tf then keeps the batch symbolic and needs no input
  shape override. Graphs that still contain a Shape op (architectures the rewrite does not cover)
  are converted at batch 1 as before, and the sidecar says so.

All of it runs in a child process (`run_job`: `python -m vitgender.exporters.tensorflow job.json`):
TensorFlow's memory is returned when the child exits, and a crash cannot take the caller down.
onnx2tf also needs: a copy of the ONNX (it rewrites its input), the venv's bin on PATH (it shells
out to onnxsim) and a calibration sample in its working directory (it tries to download one
otherwise).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from vitgender.toolchains.processes import child_env, job_main, run_job

# onnx2tf looks for this sample in its working directory and downloads one if it is missing. It
# only feeds onnx2tf's own int8 calibration, which never runs here (onnx2tf is stopped once the
# SavedModel exists), so a seeded random sample of the right shape serves.
ONNX2TF_SAMPLE = "calibration_image_sample_data_20x128x128x3_float32.npy"
# onnx2tf settles each Transpose's layout by trial runs of the graph. With a free batch it tried batch 1,
# where the batch axis moved anywhere gives the same numbers: on an AVX2-only AMD EPYC it put the batch
# last in the attention's key transpose, and the default model's SavedModel then ran at batch 1 only.
# Trial runs at batch 2 leave one layout that matches.
DUMMY_BATCH = 2


class _SavedModelWritten(Exception):
    """Raised from onnx2tf's first TFLite converter call: the SavedModel is on disk by then."""


def batch_free(onnx_path: Path) -> bool:
    """Whether onnx2tf can keep this graph's batch symbolic: nothing in it reads a tensor's shape."""
    import onnx

    return not any(node.op_type == "Shape" for node in onnx.load(str(onnx_path), load_external_data=False).graph.node)


def _run_onnx2tf(onnx_path: Path, savedmodel: Path, input_name: str, shape: list[int] | None, hint: list[int]) -> None:
    """`shape` fixes the input shape (a graph onnx2tf cannot convert with a free batch); None keeps it, and
    onnx2tf's trial runs then use `DUMMY_BATCH` images of size `hint` (C, H, W)."""
    import onnx2tf
    import tensorflow as tf

    def stop(*args, **kwargs):
        raise _SavedModelWritten

    tf.lite.TFLiteConverter.from_keras_model = stop
    tf.lite.TFLiteConverter.from_concrete_functions = stop
    with contextlib.suppress(_SavedModelWritten):  # `stop` ends onnx2tf once the SavedModel is on disk
        onnx2tf.convert(
            input_onnx_file_path=str(onnx_path),
            output_folder_path=str(savedmodel),
            overwrite_input_shape=[f"{input_name}:{','.join(map(str, shape))}"] if shape else None,
            shape_hints=None if shape else [f"{input_name}:{DUMMY_BATCH},{','.join(map(str, hint))}"],
            output_signaturedefs=True,
            copy_onnx_input_output_names_to_tflite=True,
            non_verbose=True,
        )
    if not (savedmodel / "saved_model.pb").is_file():
        raise RuntimeError("onnx2tf did not write a SavedModel")


# Kept in float in the calibrated int8 TFLite (weights and the fully-connected GEMMs stay int8).
# XNNPACK has no int8 kernels for LayerNorm, Softmax and GELU: in a fully integer model they fall
# back to LiteRT's reference kernels and split the graph into 76 XNNPACK partitions
# (SQUARED_DIFFERENCE alone took 36% of the time): 77 images/s at batch 1, 2 partitions and
# 234 images/s with them float. The residual ADDs and the attention BATCH_MATMULs are kept float
# for accuracy: on 800 validation faces that halves the mean |Δlogit| against PyTorch (0.090 ->
# 0.038) and the max (1.92 -> 1.09), at 13% of the speed (177 -> 154 images/s in one run).
# int16 activations do not run (LiteRT has no int16 SQUARED_DIFFERENCE). These figures come from
# one-off investigation scripts (not in the repo); benchmarks/quant_profile.py counts partitions.
INT8_FLOAT_OPS = ("SOFTMAX", "GELU", "ADD", "BATCH_MATMUL")
LAYER_NORM_NODE = "/layer_normalization"  # onnx2tf names every op of a LayerNorm after its Keras layer
LAYER_NORM_OPS = ("MEAN", "SQUARED_DIFFERENCE", "RSQRT")  # the same, by op type, if those names change


def _head_nodes(interpreter, layer_norm: list[str]) -> list[str]:
    """Output tensors of every op after the last LayerNorm op (execution order): the classification head.

    onnx2tf does not keep ONNX node names for the head's MatMul, but every model type's head
    reads the final LayerNorm (BEiT's pooler norm) and nothing else follows it.
    """
    tensors = interpreter.get_tensor_details()
    ops = interpreter._get_ops_details()  # execution order; LiteRT's only op listing
    norm = set(layer_norm)
    last = max((i for i, op in enumerate(ops) if any(tensors[t]["name"] in norm for t in op["outputs"])), default=None)
    if last is None:
        return []
    return [tensors[t]["name"] for op in ops[last + 1 :] for t in op["outputs"] if t >= 0]


def _layer_norms(interpreter) -> list[list[str]]:
    """Each LayerNorm's output tensor names, in execution order (onnx2tf names its ops after the Keras layer)."""
    tensors = interpreter.get_tensor_details()
    norms: dict[str, list[str]] = {}
    for op in interpreter._get_ops_details():  # execution order; LiteRT's only op listing
        for t in op["outputs"]:
            name = tensors[t]["name"] if t >= 0 else ""
            scope = next((part for part in name.split("/") if part.startswith(LAYER_NORM_NODE[1:])), None)
            if scope:
                norms.setdefault(scope, []).append(name)
    return list(norms.values())


def _units(interpreter, unit_names: list[str]) -> dict[str, list[str]] | None:
    """unit -> output tensor names of its ops, cut at the LayerNorms of a pre-norm ViT.

    Every claimed model type opens each block's attention and MLP with a LayerNorm and ends with
    one (the final norm, or BEiT's pooler norm), so the ops before the first LayerNorm are the
    embeddings and those between consecutive LayerNorms are the units in `unit_names`' order. None
    when the LayerNorm count does not fit (a graph this rule does not describe).
    """
    tensors = interpreter.get_tensor_details()
    norms = _layer_norms(interpreter)
    if len(norms) != len(unit_names):
        return None
    starts = {names[0]: i for i, names in enumerate(norms)}
    units: dict[str, list[str]] = {name: [] for name in unit_names}
    unit = 0
    for op in interpreter._get_ops_details():
        outputs = [tensors[t]["name"] for t in op["outputs"] if t >= 0]
        if any(name in starts for name in outputs):
            unit = starts[next(name for name in outputs if name in starts)] + 1
        if unit < len(unit_names) and not any(LAYER_NORM_NODE in name for name in outputs):
            units[unit_names[unit]].extend(outputs)
    return units


def _tflite_logits(content: bytes, pixels: np.ndarray) -> np.ndarray:
    """Float-input TFLite logits, one image per call (the batch the converter's model is sure to take)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content, num_threads=os.cpu_count())
    interpreter.allocate_tensors()
    run = interpreter.get_signature_runner()
    name = next(iter(interpreter.get_signature_list()["serving_default"]["inputs"]))
    return np.concatenate([next(iter(run(**{name: pixels[i : i + 1]}).values())) for i in range(len(pixels))])


def _int8_with_float_islands(converter, representative, float_head: bool, plan_job: dict | None) -> tuple[bytes, dict]:
    """Full-integer GEMMs and residuals, float LayerNorm/Softmax/GELU (see INT8_FLOAT_OPS), and the head float.

    With `plan_job` (`--quant-preset auto`), the fewest most sensitive units are also kept float
    (`quant_plan.fewest_float`), each candidate re-quantized from the one calibration the debugger
    ran and measured by LiteRT on the calibration images against PyTorch's logits.
    """
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # the float islands need float kernels
    options = tf.lite.experimental.QuantizationDebugOptions
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=representative, debug_options=options(denylisted_ops=list(INT8_FLOAT_OPS))
    )
    calibrated = Interpreter(model_content=debugger.calibrated_model)
    layer_norm = [t["name"] for t in calibrated.get_tensor_details() if LAYER_NORM_NODE in t["name"]]
    float_ops = list(INT8_FLOAT_OPS) + ([] if layer_norm else list(LAYER_NORM_OPS))
    head = _head_nodes(calibrated, layer_norm) if float_head else []
    plan = {
        "float_ops": float_ops,
        "float_layer_norm_nodes": len(layer_norm),
        "float_head_nodes": len(head),
        "why": "no XNNPACK int8 kernels for LayerNorm, Softmax and GELU (as int8 they run on reference kernels); "
        "residual adds and attention matmuls float for accuracy",
    }

    def quantized(extra: list[str]) -> bytes:
        debugger.options = options(denylisted_ops=float_ops, denylisted_nodes=layer_norm + head + extra)
        return debugger.get_nondebug_quantized_model()

    if plan_job is None:
        return quantized([]), plan
    from vitgender.quant_plan import QuantTarget, fewest_float

    target = QuantTarget.parse(plan_job["target"])
    units = _units(calibrated, plan_job["units"])
    if units is None:
        return quantized([]), plan | {
            "preset": "auto",
            "kept_float": [],
            "unplanned": "LayerNorms do not cut this graph into its units",
        }
    pixels, reference = np.load(plan_job["pixels"]), np.load(plan_job["reference"])

    def nodes(kept_float: list[str]) -> list[str]:
        return [name for unit in kept_float for name in units[unit]]

    def figures(kept_float: list[str]) -> dict:
        return target.figures(reference, _tflite_logits(quantized(nodes(kept_float)), pixels))

    chosen = fewest_float(list(units), figures, target, plan_job["max_float"])
    fit = {
        "target": str(target),
        "calibration_images": len(pixels),
        "units": len(units),
        "max_float": plan_job["max_float"],
        "method": "each candidate re-quantized from one calibration and run by LiteRT",
        "reached": chosen.reached,
        "met": chosen.met,
    }
    planned = {"preset": "auto", "kept_float": chosen.kept_float, "fit": fit}
    planned["sensitivity_q90_abs_logit_diff_alone"] = chosen.sensitivity
    return quantized(nodes(chosen.kept_float)), plan | planned


def _to_tflite(
    savedmodel: Path,
    target: Path,
    precision: str,
    representative: np.ndarray | None,
    int8_io: bool,
    float_head: bool,
    plan_job: dict | None = None,
) -> dict | None:
    """Write one TFLite variant; returns what quantization decided, for the manifest."""
    import tensorflow as tf

    from vitgender.precision import Precision

    mode = Precision(precision)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(savedmodel))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    plan = None
    if mode is Precision.FP16:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif mode is Precision.INT8_DYNAMIC:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode is Precision.INT8:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]

        def samples():
            return ([representative[i : i + 1]] for i in range(len(representative)))

        converter.representative_dataset = samples
        # int8 I/O needs the graph to end in int8: the head stays int8 then
        content, plan = _int8_with_float_islands(converter, samples, float_head and not int8_io, plan_job)
        if int8_io:  # the debugger's conversion ignores inference_input_type: apply it as the converter would
            from tensorflow.lite.python.util import modify_model_io_type

            content = modify_model_io_type(content, tf.int8, tf.int8)
    else:
        content = converter.convert()
    target.write_bytes(content)
    return plan


def _worker(job: dict) -> dict:
    """The child process (`run_job` framing; it runs in the work folder, where onnx2tf looks for its sample)."""
    results = {}
    began = time.perf_counter()
    _run_onnx2tf(Path(job["onnx"]), Path(job["savedmodel"]), job["input_name"], job["shape"], job["hint"])
    results["savedmodel"] = round(time.perf_counter() - began, 2)
    representative = np.load(job["representative"]) if job.get("representative") else None
    plans = {}
    for precision, target in job["tflite"].items():
        began = time.perf_counter()
        plans[precision] = _to_tflite(
            Path(job["savedmodel"]),
            Path(target),
            precision,
            representative,
            job["int8_io"],
            job["float_head"],
            job.get("plan"),
        )
        results[precision] = round(time.perf_counter() - began, 2)
    return {"seconds": results, "quantization": plans}


def convert(
    onnx_path: Path,
    workdir: Path,
    savedmodel: Path,
    tflite: dict[str, Path],
    *,
    input_name: str,
    shape: tuple[int, int, int],
    representative: np.ndarray | None,
    int8_io: bool = False,
    float_head: bool = True,
    plan: dict | None = None,
) -> dict[str, dict]:
    """SavedModel + a TFLite file per requested precision.

    `plan` (`--quant-preset auto` for the full-integer variant): {"target", "max_float", "units" (names in
    graph order), "reference" (PyTorch's logits on `representative`)}.

    Returns {"seconds": {"savedmodel" or precision: s}, "quantization": {precision: plan or None},
    "dynamic_batch": bool}.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    model = workdir / "model.onnx"
    shutil.copy2(onnx_path, model)
    dynamic_batch = batch_free(model)
    np.save(workdir / ONNX2TF_SAMPLE, np.random.default_rng(0).random((20, 128, 128, 3), dtype=np.float32))
    job = {
        "onnx": model,
        "savedmodel": savedmodel,
        "input_name": input_name,
        "shape": None if dynamic_batch else [1, *shape],
        "hint": list(shape),
        "tflite": tflite,
        "int8_io": int8_io,
        "float_head": float_head,
    }
    if representative is not None:
        np.save(workdir / "representative.npy", representative.astype(np.float32))
        job["representative"] = workdir / "representative.npy"
    if plan is not None and representative is not None:
        np.save(workdir / "reference.npy", plan["reference"])
        job["plan"] = {**plan, "reference": workdir / "reference.npy", "pixels": workdir / "representative.npy"}
    env = child_env(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", CUDA_VISIBLE_DEVICES=""
    )
    result = run_job("vitgender.exporters.tensorflow", job, what="TensorFlow converter", env=env, workdir=workdir)
    return {**result, "dynamic_batch": dynamic_batch}


if __name__ == "__main__":
    job_main(_worker)

"""How good is the parity gate? False alarms on correct artifacts, detections of broken ones.

1. Faces: the project's UTKFace validation split (non-commercial research data) minus the 50
   bundled reference faces, split by a hash of the file name into a *fit* half and a *judge* half
   (`--per-half` faces each).
2. Runs PyTorch, every artifact of an export of the default model, and a catalogue of
   deliberately broken variants once over both halves (logits cached in --work).
3. Fits the default budgets per precision on the fit half only: each quantile budget is 1.5x
   the 99.9th percentile, over 2,000 random 64-face subsets (the size a CI job uses), of the worst
   correct artifact of that precision; each flip-rate budget is three times the worst full-half
   rate. Floors keep fp32 budgets above float32 rounding differences between CPUs (AVX2 and
   AVX-512 kernels sum in different orders) and rate budgets above one flip in a small sample.
4. On the judge half, draws 1,000 random subsets of 16, 64 and 256 faces and applies exactly the
   checks `vitgender validate` applies (budgets.check on compare_logits + paired_accuracy, and the
   label-order check): the share of subsets on which a correct artifact fails is its false-alarm
   rate, on which a broken one fails its detection rate.

    .venv/bin/vitgender export --formats all
    .venv/bin/python benchmarks/gate_quality.py --write-budgets --json artifacts/evaluations/gate_quality.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np

from vitgender.data import load_labelled, split_samples
from vitgender.manifest import read_manifest
from vitgender.precision import Precision
from vitgender.preprocess import Preprocessor, decode_image
from vitgender.runtimes import open_runner, runtime_for
from vitgender.runtimes.sidecar import sidecar_path
from vitgender.validators import budgets as budgets_mod
from vitgender.validators.metrics import compare_logits, paired_accuracy
from vitgender.validators.parity import label_check

REPO = Path(__file__).resolve().parent.parent
UTKFACE = REPO.parent / "shared" / "data" / "utkface"
REFERENCE = REPO / "vitgender" / "reference" / "utkface-val-50"
BUDGETS_FILE = REPO / "vitgender" / "validators" / "default_budgets.json"
SIZES = (16, 64, 256)
FIT_SIZE, FIT_RESAMPLES, JUDGE_RESAMPLES = 64, 2000, 1000
RATE_FACTOR = 3
# The smallest budgets a fit may produce: below these, differences are float32 rounding.
FLOORS = {"q90_abs_logit_diff": 1e-4, "q90_abs_prob_diff": 5e-5, "max_abs_logit_diff": 1e-3}
QUANTILE_METRICS = ("q90_abs_logit_diff", "q90_abs_prob_diff")
RATE_METRICS = {"flip_rate_lower99": ("flip_rate", 0.01), "confident_flip_rate_lower99": ("confident_flip_rate", 0.005)}


# --- the faces ---------------------------------------------------------------------------------

def halves(per_half: int) -> tuple[list, list]:
    samples, _ = load_labelled(UTKFACE)
    reference = {p.name for p in REFERENCE.iterdir()}
    val = [s for s in split_samples(samples)["val"] if s.path.name not in reference]
    keyed = sorted(val, key=lambda s: hashlib.sha256(s.path.name.encode()).hexdigest())
    fit = [s for s in keyed if int(hashlib.sha256(s.path.name.encode()).hexdigest(), 16) % 2 == 0]
    judge = [s for s in keyed if int(hashlib.sha256(s.path.name.encode()).hexdigest(), 16) % 2 == 1]
    return fit[:per_half], judge[:per_half]


# --- broken variants ---------------------------------------------------------------------------

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
    largest = max((i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT),
                  key=lambda i: int(np.prod(i.dims)))
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
        return ([helper.make_node("Mul", [inp, "broken_scale"], ["broken_scaled"]),
                 helper.make_node("Add", ["broken_scaled", "broken_shift"], [out])],
                [numpy_helper.from_array(scale, "broken_scale"), numpy_helper.from_array(shift, "broken_shift")])

    return nodes


def _bgr(inp: str, out: str):
    from onnx import helper, numpy_helper

    return ([helper.make_node("Gather", [inp, "broken_bgr"], [out], axis=1)],
            [numpy_helper.from_array(np.asarray([2, 1, 0], np.int64), "broken_bgr")])


def _four_bit_block(source: Path, target: Path, block: int) -> Path:
    """Round one encoder block's int8 weights to 16 levels (4 bits), as a broken quantizer would."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    scope = f"model.vit.encoder.layer.{block}"
    in_block = {i for n in model.graph.node if any(p.key == "pkg.torch.onnx.name_scopes" and f"'{scope}'" in p.value
                                                     for p in n.metadata_props) for i in n.input}
    weights = {n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"
               and set(n.output) & in_block}
    changed = 0
    for init in model.graph.initializer:
        if init.name in weights and init.data_type == onnx.TensorProto.INT8 and len(init.dims) >= 2:
            q = numpy_helper.to_array(init).astype(np.int32)
            init.CopyFrom(numpy_helper.from_array(np.clip(np.round(q / 16) * 16, -128, 127).astype(np.int8), init.name))
            changed += 1
    assert changed, f"no int8 weights found in {scope}"
    return _save_onnx(model, source, target)


def broken_variants(export: Path, work: Path) -> dict[str, tuple[Path, Precision, str]]:
    """name -> (file, declared precision, what is wrong)."""
    work.mkdir(parents=True, exist_ok=True)
    fp32, baked, static = export / "model.onnx", export / "model_uint8_nhwc.onnx", export / "model_int8_static.onnx"
    pre = json.loads(sidecar_path(fp32).read_text())["preprocessor"]
    return {
        "weight x1.05": (_scale_largest_weight(fp32, work / "w105.onnx", 1.05), Precision.FP32,
                         "largest fp32 weight matrix scaled by 1.05"),
        "weight x1.02": (_scale_largest_weight(fp32, work / "w102.onnx", 1.02), Precision.FP32,
                         "largest fp32 weight matrix scaled by 1.02"),
        "0.5/0.5 normalisation": (_prepend(fp32, work / "norm.onnx", _renormalise(pre["image_mean"], pre["image_std"])),
                                  Precision.FP32, "ImageNet mean/std replaced by 0.5/0.5 inside the graph"),
        "RGB->BGR": (_prepend(fp32, work / "bgr.onnx", _bgr), Precision.FP32, "channels reversed inside the graph"),
        "nearest resize (baked)": (_copy_with_sidecar(baked, work / "nearest.onnx",
                                                      lambda d: {**d, "preprocessor": {**d["preprocessor"], "resample": 0}}),
                                   Precision.FP32, "baked-preprocessing artifact whose sidecar says nearest, not bilinear"),
        "int8 block 5 at 4 bits": (_four_bit_block(static, work / "int4block.onnx", 5), Precision.INT8,
                                   "one encoder block's int8 weights rounded to 4 bits"),
        "label order swapped": (_copy_with_sidecar(fp32, work / "swapped.onnx",
                                                   lambda d: {**d, "labels": d["labels"][::-1]}),
                                Precision.FP32, "sidecar lists the labels in reverse order"),
    }


# --- running everything once -------------------------------------------------------------------

def logits_for(path: Path, images: list[Path], cache: Path) -> tuple[np.ndarray, tuple[str, ...]]:
    runner = open_runner(runtime_for(path), path)
    key = hashlib.sha256(Path(path).read_bytes() if Path(path).is_file() else str(path).encode())
    key.update(repr((runner.info.preprocess, runner.info.raw_input, [p.name for p in images])).encode())
    cached = cache / f"{key.hexdigest()[:24]}.npy"
    if not cached.is_file():
        pre = Preprocessor(runner.info.preprocess)
        rows = []
        for start in range(0, len(images), 32):
            resized = np.stack([pre.resize(decode_image(p)) for p in images[start:start + 32]])
            rows.append(runner.run(resized if runner.info.raw_input else pre.normalize(resized)))
        np.save(cached, np.concatenate(rows))
    return np.load(cached), runner.info.labels


# --- the gate on a subset ----------------------------------------------------------------------

def subset_metrics(ref: np.ndarray, art: np.ndarray, labels, truth: np.ndarray, idx: np.ndarray) -> dict:
    metrics = compare_logits(ref[idx], art[idx], labels, [str(i) for i in idx])
    metrics.update(paired_accuracy(ref[idx].argmax(1) == truth[idx], art[idx].argmax(1) == truth[idx]))
    return metrics


def failing_checks(metrics: dict, budget: dict, artifact_labels, model_labels) -> list[str]:
    checks = [label_check(artifact_labels, model_labels), *budgets_mod.check(metrics, budget)]
    return [c.name for c in checks if not c.passed]


def fit_budgets(ref, correct: dict, truth, rng) -> dict[str, dict[str, float]]:
    """Budgets per precision from the fit half's correct artifacts (see the module docstring)."""
    fitted = {}
    for precision in Precision:
        members = [(logits, labels) for logits, labels, p in correct.values() if p is precision]
        if not members:
            continue
        budget = {"accuracy_worse_p": 0.01}
        subsets = [rng.choice(len(ref), FIT_SIZE, replace=False) for _ in range(FIT_RESAMPLES)]
        full = [subset_metrics(ref, logits, labels, truth, np.arange(len(ref))) for logits, labels in members]
        for metric in QUANTILE_METRICS:
            worst = max(np.quantile([compare_logits(ref[i], logits[i], labels, [""] * len(i))[metric]
                                     for i in subsets], 0.999) for logits, labels in members)
            budget[metric] = float(f"{max(1.5 * worst, FLOORS[metric]):.2g}")
        for metric, (rate, floor) in RATE_METRICS.items():
            budget[metric] = float(f"{max(RATE_FACTOR * max(m[rate] for m in full), floor):.2g}")
        catastrophic = max(3 * max(m["max_abs_logit_diff"] for m in full), FLOORS["max_abs_logit_diff"])
        budget["max_abs_logit_diff"] = float(f"{catastrophic:.2g}")
        if "batch_max_abs_logit_diff" in budgets_mod.DEFAULT_BUDGETS.get(precision.value, {}):  # batch_invariance.py's
            budget["batch_max_abs_logit_diff"] = budgets_mod.DEFAULT_BUDGETS[precision.value]["batch_max_abs_logit_diff"]
        fitted[precision.value] = budget
    return fitted


def rates(ref, art, labels, model_labels, truth, budget, rng) -> dict:
    out = {}
    for size in (s for s in SIZES if s <= len(ref)):
        failures, reasons = 0, {}
        for _ in range(JUDGE_RESAMPLES):
            idx = rng.choice(len(ref), size, replace=False)
            failed = failing_checks(subset_metrics(ref, art, labels, truth, idx), budget, labels, model_labels)
            failures += bool(failed)
            for name in failed:
                reasons[name] = reasons.get(name, 0) + 1
        out[size] = {"fail_rate": failures / JUDGE_RESAMPLES, "checks": reasons}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--export", type=Path, default=REPO / "artifacts" / "vitgender-default")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "gate-quality")
    parser.add_argument("--per-half", type=int, default=1000)
    parser.add_argument("--write-budgets", action="store_true", help=f"write the fitted budgets to {BUDGETS_FILE}")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    began = time.perf_counter()
    rng = np.random.default_rng(0)
    fit, judge = halves(args.per_half)
    images = [s.path for s in fit + judge]
    cache = args.work / "logits"
    cache.mkdir(parents=True, exist_ok=True)
    print(f"{len(fit)} fit + {len(judge)} judge faces; running PyTorch", flush=True)
    ref, model_labels = logits_for(REPO / "vitgender" / "default_model", images, cache)
    truth = np.array([model_labels.index(s.label) for s in fit + judge])
    manifest = read_manifest(args.export)
    correct = {}
    for entry in manifest["artifacts"]:
        print(f"running {entry['name']}", flush=True)
        logits, labels = logits_for(args.export / entry["path"], images, cache)
        correct[entry["name"]] = (logits, labels, Precision.parse(entry["precision"]))
    broken = {}
    for name, (path, precision, what) in broken_variants(args.export, args.work / "broken").items():
        print(f"running broken variant: {name}", flush=True)
        logits, labels = logits_for(path, images, cache)
        broken[name] = (logits, labels, precision, what)

    n_fit = len(fit)
    fit_part = {k: (v[0][:n_fit], v[1], v[2]) for k, v in correct.items()}
    budgets = fit_budgets(ref[:n_fit], fit_part, truth[:n_fit], rng)
    if args.write_budgets:
        previous = json.loads(BUDGETS_FILE.read_text())
        BUDGETS_FILE.write_text(json.dumps({
            "provenance": f"benchmarks/gate_quality.py --per-half {args.per_half}: fitted on {n_fit} UTKFace validation "
                          "faces (not the bundled reference set) from the default model's artifacts",
            **{k: v for k, v in previous.items() if k == "batch_provenance"},
            "budgets": budgets}, indent=2) + "\n")
    jr, jt = ref[n_fit:], truth[n_fit:]
    report = {"faces": {"fit": n_fit, "judge": len(judge)}, "budgets": budgets, "correct": {}, "broken": {}}
    for name, (logits, labels, precision) in correct.items():
        report["correct"][name] = {"precision": precision.value, **rates(jr, logits[n_fit:], labels, model_labels, jt,
                                                                          budgets[precision.value], rng)}
    for name, (logits, labels, precision, what) in broken.items():
        answers = np.asarray(labels)[logits[n_fit:].argmax(1)]  # by label name: a swapped sidecar changes every answer
        decisions = float((answers != np.asarray(model_labels)[jr.argmax(1)]).mean())
        report["broken"][name] = {"precision": precision.value, "what": what, "flip_rate_on_judge_half": decisions,
                                  **rates(jr, logits[n_fit:], labels, model_labels, jt, budgets[precision.value], rng)}
    report["seconds"] = round(time.perf_counter() - began, 1)
    print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


def table(report: dict) -> str:
    lines = ["| artifact | precision | fails at 16 | at 64 | at 256 | failing checks (64) |", "|---|---|---|---|---|---|"]
    for kind in ("correct", "broken"):
        for name, row in report[kind].items():
            rate = {n: f"{row[n]['fail_rate']:.1%}" if n in row else "-" for n in SIZES}
            reasons = ", ".join(f"{k} {v / JUDGE_RESAMPLES:.0%}" for k, v in sorted(row.get(64, {"checks": {}})["checks"].items()))
            label = name if kind == "correct" else f"**broken:** {name} ({row['flip_rate_on_judge_half']:.1%} flipped)"
            lines.append(f"| {label} | {row['precision']} | {rate[16]} | {rate[64]} | {rate[256]} | {reasons or '-'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

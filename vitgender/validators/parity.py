"""`vitgender validate`: run PyTorch and every exported artifact on the same images, judge parity.

Images are decoded and preprocessed once, by the project's own preprocessing, and the same
float32 batch goes to every Runner, so any difference is the conversion's. Every artifact's
sha256 is checked against the manifest before anything runs (a tampered file is a usage
error, exit 2, not a parity result).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from vitgender.scoring import apply_function
from vitgender.errors import UsageError
from vitgender.manifest import read_manifest, verify_artifact
from vitgender.inputs import IMAGE_SUFFIXES
from vitgender.preprocess import PreprocessConfig, Preprocessor
from vitgender.runtimes import open_runner, runtime_for
from vitgender.data import Sample, open_labelled
from vitgender.precision import Precision
from vitgender.validators import budgets as budgets_mod
from vitgender.validators.batching import batch_variation
from vitgender.validators.checks import ArtifactResult, Check, ValidationResult
from vitgender.evaluation.metrics import Prediction, accuracy_cell, default_groupings, group_table, report_tables
from vitgender.validators.inventory import check_precision, inventory
from vitgender.validators.metrics import compare_logits, logit_diff_histogram, paired_accuracy

REFERENCE_ROOT = Path(__file__).resolve().parent.parent / "reference"
DEFAULT_REFERENCE = "utkface-val-50"
LOCALIZE_IMAGES = 8  # activations of every block for a few images are enough to see where errors start


def reference_sets() -> list[str]:
    return sorted(p.name for p in REFERENCE_ROOT.iterdir() if p.is_dir())


def resolve_images(images: Path | None, reference: str | None) -> Path:
    if images is not None and reference is not None:
        raise UsageError("--images/--reference", "give one of them, not both")
    if images is not None:
        return images
    name = reference or DEFAULT_REFERENCE
    if name not in reference_sets():
        raise UsageError(name, f"unknown reference set (bundled: {', '.join(reference_sets())})")
    return REFERENCE_ROOT / name


def load_images(folder: Path, labels: str, model_labels: Sequence[str] = ()) -> tuple[list[Path], list[Sample] | None]:
    """Image paths, plus labelled samples when `labels` is auto (names/folders) or a CSV; UTKFace names
    are labelled by the field whose values are the model's labels (none fits: unlabelled)."""
    if not folder.is_dir():
        raise UsageError(str(folder), "image folder does not exist")
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise UsageError(str(folder), "no images in the folder")
    if labels == "none":
        return paths, None
    source = folder if labels == "auto" else Path(labels)
    try:
        samples = open_labelled(source, labels=model_labels or None).samples
    except UsageError:
        if labels == "auto":
            return paths, None
        raise
    by_path = {s.path.resolve(): s for s in samples}
    labelled = [by_path[p.resolve()] for p in paths if p.resolve() in by_path]
    return paths, labelled or None


def _predictions(logits: np.ndarray, labels: tuple[str, ...], samples: list[Sample], index: dict[Path, int]) -> list[Prediction]:
    probs = apply_function(logits, "softmax")
    out = []
    for s in samples:
        row = probs[index[s.path.resolve()]]
        top = int(row.argmax())
        out.append(Prediction(str(s.path), s.label, labels[top], float(row[top]), s.groups))
    return out


def group_deltas(reference: list[Prediction], candidate: list[Prediction], labels: Sequence[str]) -> list[dict]:
    """Per group: accuracy of PyTorch vs the artifact, with n, per label and per group of the tables
    `evaluate` reports by default (at most two fields each)."""
    rows = []
    fields = {key for p in reference for key in p.groups}
    for keys in (k for k in report_tables(reference, default_groupings(labels, fields)) if len(k) <= 2):
        ref_rows = {tuple(r["group"].items()): r for r in group_table(reference, keys)}
        for row in group_table(candidate, keys):
            ref = ref_rows[tuple(row["group"].items())]
            rows.append({"group": row["group"], "n": row["n"], "torch_accuracy": ref["accuracy"],
                         "artifact_accuracy": row["accuracy"], "delta": row["accuracy"] - ref["accuracy"]})
    return rows


def label_check(artifact_labels: tuple[str, ...], model_labels: tuple[str, ...]) -> Check:
    """The artifact's sidecar must name the model's labels in the model's order: a swapped order
    turns every answer into its opposite while the logits still match."""
    return Check("labels", tuple(artifact_labels) == tuple(model_labels), ", ".join(artifact_labels), None,
                 f"labels {list(artifact_labels)} differ from the model's {list(model_labels)} (order matters)")


def _compare(entry: dict, path: Path, runner, ref_logits: np.ndarray, pixels: np.ndarray, names: list[str],
             budgets: dict, predictions: tuple[list[Prediction], list[Sample], dict] | None,
             model_labels: tuple[str, ...]) -> ArtifactResult:
    """Run one artifact on the reference images (preprocessed as its sidecar says) and judge it."""
    precision = Precision.parse(entry["precision"])
    budget = budgets_mod.budget_for(budgets, entry["name"], precision)
    result = ArtifactResult(entry["name"], entry["runtime"], precision, entry["path"], entry["sha256"], {}, [], budget,
                            calibration=entry.get("calibration"))
    labels = runner.info.labels
    began = time.perf_counter()
    logits = runner.run(pixels)
    latency = (time.perf_counter() - began) * 1000 / len(pixels)
    if logits.shape != ref_logits.shape:
        result.checks.append(Check("output_shape", False, str(tuple(logits.shape)), None,
                                   f"logits of shape {tuple(logits.shape)}, PyTorch gives {tuple(ref_logits.shape)}"))
        return result
    result.metrics = compare_logits(ref_logits, logits, labels, names)
    result.metrics["latency_ms_per_image"] = round(latency, 3)
    result.metrics.update(batch_variation(runner.run, pixels))
    result.histogram = logit_diff_histogram(ref_logits, logits)
    result.probabilities = {"torch": apply_function(ref_logits, "softmax")[:, 0].tolist(),
                            "artifact": apply_function(np.nan_to_num(logits), "softmax")[:, 0].tolist()}
    if predictions:
        ref_preds, samples, index = predictions
        art_preds = _predictions(logits, labels, samples, index)
        result.metrics.update(paired_accuracy([p.correct for p in ref_preds], [p.correct for p in art_preds]))
        result.accuracy = {"torch": accuracy_cell(ref_preds), "artifact": accuracy_cell(art_preds)}
        result.group_deltas = group_deltas(ref_preds, art_preds, labels)
    result.checks = [label_check(labels, model_labels), *budgets_mod.check(result.metrics, budget)]
    result.inventory = inventory(path, entry["runtime"])
    if result.inventory is not None:
        result.checks.append(check_precision(result.inventory, precision))
    return result


def _runner_inputs(image_paths: list[Path], config: PreprocessConfig, raw: bool) -> np.ndarray:
    """The images as a runner with this preprocessing takes them: resized uint8 NHWC, or pixel_values."""
    pre = Preprocessor(config)
    resized = np.stack([pre.load(path) for path in image_paths])
    return resized if raw else pre.normalize(resized)


def validate(
    artifact_dir: Path,
    *,
    model: str | None = None,
    images: Path | None = None,
    reference: str | None = None,
    labels: str = "auto",
    budget_file: Path | None = None,
    only: list[str] | None = None,
    localize: bool = False,
    on_artifact: Callable[[str], None] = lambda name: None,
    alpha: str | None = None,
) -> ValidationResult:
    """Run PyTorch and every artifact on the same images and judge each; with `localize`, every
    ONNX and TFLite artifact (and, always, a failing one) gets its block-by-block error curve.
    `alpha` replaces every runner's alpha policy (else each decodes as its sidecar records)."""
    manifest = read_manifest(artifact_dir)
    entries = [e for e in manifest["artifacts"] if not only or e["name"] in only]
    if only and len(entries) != len(set(only)):
        missing = sorted(set(only) - {e["name"] for e in entries})
        raise UsageError(", ".join(missing), "not in the manifest")
    if not entries:
        raise UsageError(str(artifact_dir), "the manifest lists no artifacts")
    paths = {e["name"]: verify_artifact(artifact_dir, e) for e in entries}  # sha256 first, before any inference
    folder = resolve_images(images, reference)
    model_labels = manifest["model"].get("labels") or []
    image_paths, samples = load_images(folder, labels, model_labels)
    unknown = sorted({s.label for s in samples or []} - set(model_labels))
    if unknown:  # judged against labels the model cannot give, every artifact would score 0%
        raise UsageError(", ".join(unknown)[:200], f"labels in {folder} are not the model's labels "
                                                   f"({', '.join(model_labels)}); rename the class folders, give "
                                                   "--labels FILE.csv, or --labels none to skip accuracy")
    budgets = budgets_mod.load_budgets(budget_file)

    on_artifact("torch (reference)")
    torch_runner = open_runner("torch", model if model is not None else manifest["model"]["source"], alpha=alpha)
    # Each runner is fed the images preprocessed as its own sidecar says (what a deployment does);
    # decoding and resizing run once per distinct preprocessing, normally once for all. An
    # unreadable reference image is a usage error.
    inputs: dict[tuple[PreprocessConfig, bool], np.ndarray] = {}

    def inputs_for(runner) -> np.ndarray:
        key = (runner.info.preprocess, runner.info.raw_input)
        if key not in inputs:
            inputs[key] = _runner_inputs(image_paths, *key)
        return inputs[key]

    names = [str(p.relative_to(folder)) for p in image_paths]
    pixels = inputs_for(torch_runner)
    began = time.perf_counter()
    ref_logits = torch_runner.run(pixels)
    torch_ms = (time.perf_counter() - began) * 1000 / len(pixels)
    labels_t = torch_runner.info.labels
    index = {p.resolve(): i for i, p in enumerate(image_paths)}
    ref_preds = _predictions(ref_logits, labels_t, samples, index) if samples else None

    from vitgender.runtimes import can_localize
    from vitgender.validators.localize import localize as localize_artifact

    results = []
    for entry in entries:
        on_artifact(entry["name"])
        path = paths[entry["name"]]
        with open_runner(runtime_for(path), path, alpha=alpha) as runner:  # closed before the next one opens
            result = _compare(entry, path, runner, ref_logits, inputs_for(runner), names, budgets,
                              (ref_preds, samples, index) if ref_preds else None, labels_t)
            if (localize or not result.passed) and can_localize(runner):
                on_artifact(f"{entry['name']}: localizing")
                result.localization = localize_artifact(torch_runner, runner, pixels[:LOCALIZE_IMAGES],
                                                        inputs_for(runner)[:LOCALIZE_IMAGES])
        results.append(result)
    torch_runner.close()
    return ValidationResult(
        artifact_dir=str(artifact_dir),
        model=manifest["model"],
        images={"folder": str(folder), "count": len(image_paths), "labelled": len(samples) if samples else 0},
        torch={"latency_ms_per_image": round(torch_ms, 3), "accuracy": accuracy_cell(ref_preds) if ref_preds else None},
        artifacts=results,
    )


def compare_baseline(result: ValidationResult, baseline: dict, margin: dict[str, float] | None = None) -> None:
    """Add a `baseline` check to each artifact the stored report also has: fail on drift beyond `margin`.

    Drift is judged per metric: error metrics may grow by at most max(2x, +abs margin) and
    agreement/accuracy may fall by at most the margin, so noise passes and a trend does not.
    """
    margin = margin or {"top1_agreement": 0.02, "accuracy_drop": 0.02, "cosine_min": 0.001}
    previous = {a["name"]: a for a in baseline.get("artifacts", []) if isinstance(a, dict) and "name" in a}
    for artifact in result.artifacts:
        old = previous.get(artifact.name)
        if old is None or not artifact.metrics:
            continue
        regressions = []
        new_m, old_m = artifact.metrics, old.get("metrics", {})
        for metric in ("max_abs_logit_diff", "mean_abs_logit_diff"):
            if metric in old_m and new_m[metric] > max(2 * old_m[metric], old_m[metric] + 1e-6):
                regressions.append(f"{metric} {new_m[metric]:.3g} vs baseline {old_m[metric]:.3g} (more than 2x)")
        for metric, allowed in margin.items():
            if metric not in old_m or metric not in new_m:
                continue
            worse = new_m[metric] - old_m[metric] if metric == "accuracy_drop" else old_m[metric] - new_m[metric]
            if worse > allowed:
                regressions.append(f"{metric} {new_m[metric]:.4g} vs baseline {old_m[metric]:.4g} (margin {allowed})")
        if old.get("sha256") and old["sha256"] != artifact.sha256:
            artifact.notes.append("artifact bytes differ from the baseline's (re-exported)")
        artifact.checks.append(Check("baseline", not regressions, len(regressions), 0,
                                     "baseline regression: " + "; ".join(regressions)))

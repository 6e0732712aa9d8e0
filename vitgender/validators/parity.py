"""`vitgender validate`: run PyTorch and every exported artifact on the same images, judge parity.

Images are decoded and preprocessed once, by the project's own preprocessing, and the same
float32 batch goes to every Runner, so any difference is the conversion's. Every artifact's
sha256 is checked against the manifest before anything runs (a tampered file is a usage
error, exit 2, not a parity result).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from vitgender.data import Sample, open_labelled
from vitgender.errors import ToolchainError, UsageError, VitgenderError
from vitgender.evaluation.metrics import accuracy_cell
from vitgender.inputs import IMAGE_SUFFIXES
from vitgender.manifest import read_manifest, verify_artifact
from vitgender.precision import Precision
from vitgender.preprocess import PreprocessConfig, Preprocessor
from vitgender.runtimes import can_localize, check_runtime_spec, open_runner, runtime_for
from vitgender.runtimes.base import Runner
from vitgender.validators import budgets as budgets_mod
from vitgender.validators.batching import batch_variation
from vitgender.validators.checks import Check, ValidationResult
from vitgender.validators.compare import compare, judge, predictions
from vitgender.validators.inventory import inventory
from vitgender.validators.metrics import mcnemar_worse_p
from vitgender.validators.results import ImageSet, RunResult, RunResults, content_hash

REFERENCE_ROOT = Path(__file__).resolve().parent.parent / "reference"
DEFAULT_REFERENCE = "utkface-val-50"
LOCALIZE_IMAGES = 8  # activations of every block for a few images are enough to see where errors start
# Images per runner call. A fit runs hundreds of images: in one call, converters' arenas grow with the batch
# (LiteRT/XNNPACK and TF plan every intermediate for it: 800 default-model faces took > 22 GB). 64 keeps
# the bundled 50-face reference set in one call, as a deployment batch would.
RUN_CHUNK = 64
# A baseline regression is a decision change this unlikely under "nothing changed" (one-sided).
REGRESSION_ALPHA = 0.01


def run_chunked(runner: Runner, inputs: np.ndarray) -> np.ndarray:
    """Logits of every input, RUN_CHUNK images per runner call."""
    return np.concatenate([runner.run(inputs[i : i + RUN_CHUNK]) for i in range(0, len(inputs), RUN_CHUNK)])


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


def _runner_inputs(image_paths: list[Path], config: PreprocessConfig, raw: bool) -> np.ndarray:
    """The images as a runner with this preprocessing takes them: resized uint8 NHWC, or pixel_values."""
    pre = Preprocessor(config)
    resized = np.stack([pre.load(path) for path in image_paths])
    return resized if raw else pre.normalize(resized)


def runtime_versions() -> dict[str, str]:
    """Versions of vitgender and of the runtimes installed here (what produced a set of numbers)."""
    from importlib import metadata

    versions = {}
    runtimes = ("torch", "onnxruntime", "openvino", "tensorflow", "ai-edge-litert", "executorch")
    for dist in ("vitgender", *runtimes, "numpy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _machine() -> dict:
    """CPU model, ISA flags and runtime versions: what decides which kernels ran (recorded in baselines)."""
    from vitgender.machine import machine

    info = machine()
    return {"cpu": info["cpu"], "isa": info["isa"], "cores": info["cores"], "versions": runtime_versions()}


def _image_set(folder: Path, image_paths: list[Path], samples: list[Sample] | None, note: str) -> ImageSet:
    digest, _ = content_hash(image_paths)
    by_path = {s.path.resolve(): s for s in samples or []}
    labelled = [by_path.get(p.resolve()) for p in image_paths]
    names = [str(p.relative_to(folder)) for p in image_paths]
    if samples and all(labelled):
        return ImageSet(
            str(folder), names, digest, [s.label for s in labelled], [dict(s.groups) for s in labelled], note
        )
    if samples:  # only part of the folder is labelled: judge accuracy on that part only is not offered
        note = note or f"{len(samples)} of {len(image_paths)} images labelled: accuracy not judged"
    return ImageSet(str(folder), names, digest, None, None, note)


def run_all(
    artifact_dir: Path,
    *,
    model: str | None = None,
    images: Path | None = None,
    reference: str | None = None,
    labels: str = "auto",
    only: list[str] | None = None,
    against: str | None = None,
    localize: bool = False,
    extra: dict[str, tuple[Path, Precision]] | None = None,
    on_artifact: Callable[[str], None] = lambda name: None,
    alpha: str | None = None,
    runtime: str | None = None,
) -> RunResults:
    """The run step: the reference (PyTorch, or the artifact `against`) and every artifact, once, on the same images.

    `extra` adds runners that are not in the manifest (name -> (file, declared precision)): the
    fit command's broken variants. `alpha` replaces every runner's alpha policy (else each decodes
    as its sidecar records). `runtime` (settings included: `openvino:precision=bf16`) opens the
    artifacts it recognises instead of their own runtime; a run it lowers to another arithmetic
    (bf16) is judged by that precision's budget.
    """
    if runtime is not None:
        check_runtime_spec(runtime)
    manifest = read_manifest(artifact_dir)
    entries = [e for e in manifest["artifacts"] if not only or e["name"] in only]
    if only and len(entries) != len(set(only)):
        missing = sorted(set(only) - {e["name"] for e in entries})
        raise UsageError(", ".join(missing), "not in the manifest")
    if not entries and not extra:
        raise UsageError(str(artifact_dir), "the manifest lists no artifacts")
    by_name = {e["name"]: e for e in manifest["artifacts"]}
    if against is not None and against not in by_name and not Path(against).exists():
        raise UsageError(against, "--against takes an artifact name from the manifest or an artifact file")
    paths = {e["name"]: verify_artifact(artifact_dir, e) for e in entries}  # sha256 first, before any inference
    if runtime is not None and not any(runtime_for(p, runtime) == runtime for p in paths.values()):
        raise UsageError(f"--runtime {runtime}", "opens none of the artifacts to validate")
    folder = resolve_images(images, reference)
    model_labels = manifest["model"].get("labels") or []
    image_paths, samples = load_images(folder, labels, model_labels)
    note = ""
    unknown = sorted({s.label for s in samples or []} - set(model_labels))
    if images is None and labels == "auto" and (unknown or not samples):
        # The bundled faces carry UTKFace's fields (gender, race, age): a model whose labels none of them
        # gives is judged on them unlabelled.
        note = (
            "the bundled faces carry none of this model's labels: judged unlabelled (decision metrics only); "
            "give --images with your own labelled images"
        )
        samples = None
    elif unknown:  # judged against labels the model cannot give, every artifact would score 0%
        raise UsageError(
            ", ".join(unknown)[:200],
            f"labels in {folder} are not the model's labels "
            f"({', '.join(model_labels)}); rename the class folders, give "
            "--labels FILE.csv, or --labels none to skip accuracy",
        )
    image_set = _image_set(folder, image_paths, samples, note)
    # Each runner is fed the images preprocessed as its own sidecar says (what a deployment does);
    # decoding and resizing run once per distinct preprocessing, normally once for all. An
    # unreadable reference image is a usage error.
    inputs: dict[tuple[PreprocessConfig, bool], np.ndarray] = {}

    def inputs_for(runner) -> np.ndarray:
        key = (runner.info.preprocess, runner.info.raw_input)
        if key not in inputs:
            inputs[key] = _runner_inputs(image_paths, *key)
        return inputs[key]

    def run_one(name: str, path: Path | None, precision: str, entry: dict | None, *, stages: bool) -> RunResult:
        on_artifact(name if path is not None else f"{name} (reference)")
        spec = runtime_for(path, runtime)  # recorded as given (settings included): what ran it
        runner = open_runner(
            spec,
            path if path is not None else (model if model is not None else manifest["model"]["source"]),
            alpha=alpha,
        )
        try:
            pixels = inputs_for(runner)
            began = time.perf_counter()
            logits = run_chunked(runner, pixels)
            latency = (time.perf_counter() - began) * 1000 / len(pixels)
            return RunResult(
                name,
                spec,
                runner.info.arithmetic or precision,
                tuple(runner.info.labels),
                logits,
                latency,
                path=str(entry["path"]) if entry else str(path or ""),
                sha256=(entry or {}).get("sha256", ""),
                calibration=(entry or {}).get("calibration"),
                batch=batch_variation(runner.run, pixels) if path is not None else None,
                stages=runner.stage_activations(pixels[:LOCALIZE_IMAGES]) if stages and can_localize(runner) else None,
                inventory=inventory(path, entry["runtime"]) if entry is not None else None,
            )
        except VitgenderError:
            raise
        except Exception as exc:  # each runtime raises its own types; a gate must not end in a traceback
            message = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise ToolchainError(f"{name} ({spec})", f"the runtime failed on the validation images: {message}") from exc
        finally:
            close = getattr(runner, "close", None)
            if close is not None:
                close()

    if against is None:
        ref = run_one("torch", None, Precision.FP32.value, None, stages=localize)
    else:
        entry = by_name.get(against)
        path = verify_artifact(artifact_dir, entry) if entry else Path(against)
        ref = run_one(against, path, entry["precision"] if entry else Precision.FP32.value, entry, stages=localize)
        ref.batch = None
    runs = [
        run_one(e["name"], paths[e["name"]], e["precision"], e, stages=localize)
        for e in entries
        if e["name"] != ref.name
    ]
    for name, (path, precision) in (extra or {}).items():
        runs.append(run_one(name, path, precision.value, None, stages=False))
    results = RunResults(manifest["model"], image_set, ref, runs)
    results.model = {**manifest["model"], "artifact_dir": str(artifact_dir)}
    return results


def localize_runs(
    results: RunResults,
    names: list[str],
    artifact_dir: Path,
    model: str | None,
    on_artifact: Callable[[str], None] = lambda name: None,
    alpha: str | None = None,
    runtime: str | None = None,
) -> None:
    """A second, small run step: stage activations of `names` (failing artifacts) and of the reference."""
    manifest = read_manifest(artifact_dir)
    by_name = {e["name"]: e for e in manifest["artifacts"]}
    folder = Path(results.images.folder)
    image_paths = [folder / n for n in results.images.names[:LOCALIZE_IMAGES]]
    for run in [results.reference, *[r for r in results.runs if r.name in names]]:
        if run.stages is not None or (run is not results.reference and run.name not in by_name):
            continue
        if run is not results.reference:
            on_artifact(f"{run.name}: localizing")
        entry = by_name.get(run.name)
        source = (
            (artifact_dir / entry["path"]) if entry else (model if model is not None else manifest["model"]["source"])
        )
        runner = open_runner(runtime_for(source, runtime) if entry else "torch", source, alpha=alpha)
        try:
            if can_localize(runner):
                run.stages = runner.stage_activations(
                    _runner_inputs(image_paths, runner.info.preprocess, runner.info.raw_input)
                )
        finally:
            if hasattr(runner, "close"):
                runner.close()


def compare_all(results: RunResults, budgets: dict) -> ValidationResult:
    """The compare and judge steps over saved or fresh RunResults: no model runs here."""
    ref = results.reference
    model_labels = tuple(results.model.get("labels") or ref.labels)
    labelled = bool(results.images.labels)
    artifacts = []
    for run in results.runs:
        precision = Precision.parse(run.precision)
        artifacts.append(
            judge(
                compare(ref, run, results.images),
                budgets_mod.budget_for(budgets, run.name, precision),
                run.labels,
                model_labels,
                labelled,
            )
        )
    torch_accuracy = accuracy_cell(predictions(ref, results.images)) if labelled else None
    images = {
        "folder": results.images.folder,
        "count": results.images.count,
        "labelled": results.images.count if labelled else 0,
        "sha256": results.images.sha256,
    }
    if results.images.note:
        images["note"] = results.images.note
    return ValidationResult(
        artifact_dir=str(results.model.get("artifact_dir", "")),
        model={k: v for k, v in results.model.items() if k != "artifact_dir"},
        images=images,
        torch={
            "latency_ms_per_image": round(ref.latency_ms_per_image, 3),
            "accuracy": torch_accuracy,
            "reference": ref.name,
        },
        artifacts=artifacts,
        machine=_machine(),
    )


def validate(
    artifact_dir: Path,
    *,
    model: str | None = None,
    images: Path | None = None,
    reference: str | None = None,
    labels: str = "auto",
    budget_file: Path | None = None,
    only: list[str] | None = None,
    against: str | None = None,
    localize: bool = False,
    save_outputs: Path | None = None,
    load_outputs: Path | None = None,
    on_artifact: Callable[[str], None] = lambda name: None,
    alpha: str | None = None,
    runtime: str | None = None,
) -> ValidationResult:
    """Run (or load) -> compare -> judge. With `localize`, every runner that exposes stages gets its
    block-by-block error curve; a failing artifact always gets one when its runtime can (not from
    loaded outputs, which hold only what was saved)."""
    if load_outputs is not None:
        results = RunResults.load(load_outputs)
    else:
        if budget_file is not None:  # a bad budget file fails in a second, before anything runs
            budgets_mod.load_budgets(budget_file, read_manifest(artifact_dir)["model"].get("labels"))
        results = run_all(
            artifact_dir,
            model=model,
            images=images,
            reference=reference,
            labels=labels,
            only=only,
            against=against,
            localize=localize,
            on_artifact=on_artifact,
            alpha=alpha,
            runtime=runtime,
        )
    budgets = budgets_mod.load_budgets(budget_file, results.model.get("labels"))
    result = compare_all(results, budgets)
    failing = [a.name for a in result.artifacts if not a.passed and not a.localization]
    if failing and load_outputs is None:
        localize_runs(results, failing, artifact_dir, model, on_artifact, alpha, runtime)
        result = compare_all(results, budgets)
    if save_outputs is not None:
        results.save(save_outputs)
    return result


def _paired_flips(new: dict, old: dict) -> tuple[int, int]:
    """Images flipped now but not in the baseline, and the other way round (same image set)."""
    now = {f["image"] for f in new.get("flips", [])}
    before = {f["image"] for f in old.get("flips", [])}
    return len(now - before), len(before - now)


def _fisher_worse_p(k_new: int, n_new: int, k_old: int, n_old: int) -> float:
    """One-sided Fisher exact p-value for 'the flip rate is higher now' on two independent image sets."""
    total, flips = n_new + n_old, k_new + k_old
    if n_new == 0 or flips == 0:
        return 1.0
    denominator = math.comb(total, flips)
    return min(
        1.0,
        sum(math.comb(n_new, k) * math.comb(n_old, flips - k) for k in range(k_new, min(n_new, flips) + 1))
        / denominator,
    )


def same_image_set(result: ValidationResult, baseline: dict) -> bool:
    """Whether a baseline was measured on these images: by content hash; a baseline of schema 2 (no
    hash) by the folder's name and the count."""
    old = baseline.get("images") or {}
    if "sha256" in old:
        return old["sha256"] == result.images.get("sha256")
    return (
        Path(str(old.get("folder", ""))).name == Path(result.images["folder"]).name
        and old.get("count") == result.images["count"]
    )


def compare_baseline(result: ValidationResult, baseline: dict, alpha: float = REGRESSION_ALPHA) -> None:
    """Add a `baseline` check to each artifact the stored report also has: fail on a statistically
    supported regression of its decisions, not on a fixed margin one image can cross.

    Same images: a paired exact test on the images whose decision changed between the runs (newly
    flipped vs no longer flipped); one image flipping on another CPU (p = 0.5) passes, a real
    regression fails, on 50 images or on 5,000. Other images: Fisher's exact test of the flip rates,
    and nothing that grows with the sample (maxima) is compared. Values (|Δlogit|) are bounded by
    the budgets, not by the baseline: kernels differ between CPUs.
    """
    previous = {a["name"]: a for a in baseline.get("artifacts", []) if isinstance(a, dict) and "name" in a}
    paired = same_image_set(result, baseline)
    if not paired:
        old = baseline.get("images") or {}
        result.notes.append(
            f"the baseline was measured on other images ({old.get('count', '?')} from "
            f"{Path(str(old.get('folder', '?'))).name}): only flip rates are compared, unpaired"
        )
    machine = baseline.get("machine")
    if machine and result.machine and machine.get("cpu") != result.machine.get("cpu"):
        result.notes.append(
            f"the baseline was measured on {machine.get('cpu')} ({' '.join(machine.get('isa', []))}); "
            f"this run on {result.machine.get('cpu')}"
        )
    for artifact in result.artifacts:
        old = previous.get(artifact.name)
        if old is None or not artifact.metrics or not old.get("metrics"):
            continue
        new_m, old_m = artifact.metrics, old["metrics"]
        if paired:
            newly, no_longer = _paired_flips(new_m, old_m)
            p = mcnemar_worse_p(newly, no_longer)
            detail = f"{newly} images newly flipped, {no_longer} no longer flipped vs the baseline (paired p={p:.2g})"
        else:
            k_new, k_old = len(new_m.get("flips", [])), len(old_m.get("flips", []))
            p = _fisher_worse_p(k_new, new_m["images"], k_old, old_m.get("images", 0))
            detail = (
                f"flips {k_new}/{new_m['images']} vs baseline {k_old}/{old_m.get('images', 0)} on other images "
                f"(Fisher p={p:.2g})"
            )
        if old.get("sha256") and old["sha256"] != artifact.sha256:
            artifact.notes.append("artifact bytes differ from the baseline's (re-exported)")
        artifact.checks.append(
            Check(
                "baseline",
                p >= alpha,
                round(p, 6),
                alpha,
                f"baseline regression: {detail} < {alpha}" if p < alpha else detail,
            )
        )

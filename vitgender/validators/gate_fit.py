"""Fit the gate's budgets on the user's own model and images, and measure how good the fitted gate is.

`vitgender validate ARTIFACTS --images MY_IMAGES --fit-budgets budgets.toml`:

1. Splits the images into a *fit* half and a *judge* half by each file's content hash (stable
   across renames and runs; a duplicate file lands on one side).
2. Runs PyTorch, every artifact and a catalogue of broken variants of this model's own artifacts
   (`validators.broken`) once over all images (the ordinary run step).
3. Fits each budget per precision on the fit half only: a quantile budget is 1.5x the 99.9th
   percentile, over random 64-image subsets, of the worst correct artifact of that precision; a
   flip-rate budget three times the worst full-half rate; a maximum three times the worst full-half
   maximum. Floors keep fp32 budgets above float32 rounding differences between CPUs and rate
   budgets above one flip in a small sample. int8 artifacts that agree with PyTorch on fewer than
   97% of the fit half are damaged, not references: they are left out of the fit (and reported).
4. On the judge half, draws random subsets of 16, 64 and 256 images and applies exactly the checks
   `vitgender validate` applies: the share of subsets on which a correct artifact fails is its
   false-alarm rate; on which a broken variant fails, the detection rate.

Without labels every decision metric still works; with labels (UTKFace names, class folders or a
CSV) the paired accuracy test (McNemar) is budgeted and measured too.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitgender.errors import UsageError
from vitgender.precision import Precision
from vitgender.validators import budgets as budgets_mod
from vitgender.validators.broken import broken_variants
from vitgender.validators.compare import label_check
from vitgender.validators.metrics import compare_logits, logit_scale, paired_accuracy
from vitgender.validators.results import RunResult, RunResults

SIZES = (16, 64, 256)
BROKEN_PREFIX = "broken: "  # runner names of the broken variants in a fit run
FIT_SIZE = 64
MIN_IMAGES = 32
MIN_INT8_AGREEMENT = 0.97
RATE_FACTOR = 3
# The smallest budgets a fit may produce: below these, differences are float32 rounding.
FLOORS = {
    "q90_rel_logit_diff": 1e-4,
    "q90_abs_prob_diff": 5e-5,
    "max_rel_logit_diff": 1e-3,
    "batch_max_rel_logit_diff": 1e-4,
}
QUANTILE_METRICS = ("q90_rel_logit_diff", "q90_abs_prob_diff")
RATE_METRICS = {"flip_rate_lower99": ("flip_rate", 0.01), "confident_flip_rate_lower99": ("confident_flip_rate", 0.005)}
# Targets of the fitted gate (printed with the measured rates).
FALSE_ALARM_TARGET, DETECTION_TARGET, VISIBLE_DAMAGE = 0.01, 0.99, 0.01


@dataclass
class Member:
    """One runner's logits over all images, with what the judge needs."""

    run: RunResult
    precision: Precision
    broken: str = ""  # what is wrong, for a broken variant

    @property
    def logits(self) -> np.ndarray:
        return self.run.logits


def split(names: list[str], folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the fit and the judge half, by each file's content hash (even: fit, odd: judge)."""
    parity = np.array([int(hashlib.sha256((folder / n).read_bytes()).hexdigest(), 16) % 2 for n in names])
    return np.flatnonzero(parity == 0), np.flatnonzero(parity == 1)


def subset_metrics(ref: np.ndarray, member: Member, truth: np.ndarray | None, idx: np.ndarray) -> dict:
    metrics = compare_logits(ref[idx], member.logits[idx], member.run.labels, [""] * len(idx))
    if truth is not None:
        metrics.update(paired_accuracy(ref[idx].argmax(1) == truth[idx], member.logits[idx].argmax(1) == truth[idx]))
    if member.run.batch is not None:
        metrics.update(member.run.batch)
        metrics["batch_max_rel_logit_diff"] = member.run.batch["batch_max_abs_logit_diff"] / logit_scale(ref[idx])
    return metrics


def failing_checks(metrics: dict, budget: dict, artifact_labels, model_labels, labelled: bool) -> list[str]:
    checks = [label_check(artifact_labels, model_labels), *budgets_mod.check(metrics, budget, labelled=labelled)]
    return [c.name for c in checks if not c.passed]


def _round_up(value: float) -> float:
    """Two significant digits, rounded up (a budget never ends below what it was fitted to)."""
    if value <= 0:
        return 0.0
    exponent = int(np.floor(np.log10(value))) - 1
    return float(f"{np.ceil(value / 10.0**exponent) * 10.0**exponent:.3g}")


def fit_budgets(
    ref: np.ndarray,
    members: dict[str, Member],
    truth: np.ndarray | None,
    rng: np.random.Generator,
    resamples: int = 2000,
) -> dict[str, dict[str, float]]:
    """Budgets per precision from the correct artifacts' logits on the fit half (module docstring, step 3)."""
    fitted = {}
    n = len(ref)
    for precision in Precision:
        group = [m for m in members.values() if m.precision is precision]
        if not group:
            continue
        budget = {"accuracy_worse_p": 0.01} if truth is not None else {}
        size = min(FIT_SIZE, n)
        subsets = [rng.choice(n, size, replace=False) for _ in range(resamples)]
        everything = np.arange(n)
        full = [subset_metrics(ref, m, truth, everything) for m in group]
        for metric in QUANTILE_METRICS:
            worst = max(
                float(
                    np.quantile(
                        [compare_logits(ref[i], m.logits[i], m.run.labels, [""] * len(i))[metric] for i in subsets],
                        0.999,
                    )
                )
                for m in group
            )
            budget[metric] = _round_up(max(1.5 * worst, FLOORS[metric]))
        for metric, (rate, floor) in RATE_METRICS.items():
            budget[metric] = _round_up(max(RATE_FACTOR * max(f[rate] for f in full), floor))
        budget["max_rel_logit_diff"] = _round_up(
            max(3 * max(f["max_rel_logit_diff"] for f in full), FLOORS["max_rel_logit_diff"])
        )
        batch = [f["batch_max_rel_logit_diff"] for f in full if "batch_max_rel_logit_diff" in f]
        if batch:
            budget["batch_max_rel_logit_diff"] = _round_up(max(3 * max(batch), FLOORS["batch_max_rel_logit_diff"]))
        fitted[precision.value] = budget
    return fitted


def rates(
    ref: np.ndarray,
    member: Member,
    model_labels,
    truth,
    budget: dict,
    rng,
    resamples: int,
    sizes: tuple[int, ...] = SIZES,
) -> dict:
    """Share of random judge subsets (per size) on which the gate fails this runner, and which checks fail."""
    out = {}
    for size in (s for s in sizes if s <= len(ref)):
        failures, reasons = 0, {}
        for _ in range(resamples):
            idx = rng.choice(len(ref), size, replace=False)
            failed = failing_checks(
                subset_metrics(ref, member, truth, idx), budget, member.run.labels, model_labels, truth is not None
            )
            failures += bool(failed)
            for name in failed:
                reasons[name] = reasons.get(name, 0) + 1
        out[str(size)] = {"fail_rate": failures / resamples, "checks": reasons}
    return out


def _decision_change(ref: np.ndarray, member: Member, model_labels) -> float:
    """Share of images whose answer (by label name: a swapped sidecar changes every answer) differs."""
    answers = np.asarray(member.run.labels)[member.logits.argmax(1)]
    return float((answers != np.asarray(model_labels)[ref.argmax(1)]).mean())


def _check_inputs(results: RunResults, truth: np.ndarray | None) -> None:
    count = results.images.count
    if count < MIN_IMAGES:
        raise UsageError(
            results.images.folder,
            f"{count} images; fitting budgets needs at least {MIN_IMAGES} "
            "(a few hundred for rates that mean something)",
        )
    decided = truth if truth is not None else results.reference.logits.argmax(1)
    if len(set(decided.tolist())) < 2:
        what = "labelled" if truth is not None else "classified by the model"
        raise UsageError(
            results.images.folder,
            f"every image is {what} as one class; fitting needs images of " "at least two classes",
        )


def fit(
    results: RunResults,
    broken: dict[str, str],
    *,
    resamples: int = 2000,
    judge_resamples: int = 1000,
    seed: int = 0,
    on_step: Callable[[str], None] = lambda s: None,
) -> dict:
    """Fit on one half, judge on the other: the budgets and the gate-quality report (a dict).

    `results` holds the reference, the correct artifacts and the broken variants (named in
    `broken`: name -> what is wrong) over all images.
    """
    model_labels = tuple(results.model.get("labels") or results.reference.labels)
    truth = np.array([model_labels.index(label) for label in results.images.labels]) if results.images.labels else None
    _check_inputs(results, truth)
    rng = np.random.default_rng(seed)
    fit_idx, judge_idx = split(results.images.names, Path(results.images.folder))
    if min(len(fit_idx), len(judge_idx)) < MIN_IMAGES // 2:
        raise UsageError(
            results.images.folder,
            f"the content-hash split left {len(fit_idx)} + {len(judge_idx)} images; "
            f"need at least {MIN_IMAGES // 2} on each side",
        )
    ref = results.reference.logits
    members = {r.name: Member(r, Precision.parse(r.precision), broken.get(r.name, "")) for r in results.runs}

    def part(idx: np.ndarray) -> dict[str, Member]:
        return {
            name: Member(RunResult(**{**m.run.__dict__, "logits": m.logits[idx]}), m.precision, m.broken)
            for name, m in members.items()
        }

    fit_members, judge_members = part(fit_idx), part(judge_idx)
    fit_truth = truth[fit_idx] if truth is not None else None
    judge_truth = truth[judge_idx] if truth is not None else None
    correct = {n: m for n, m in fit_members.items() if not m.broken}
    damaged = {}
    for name, m in correct.items():
        agreement = float((m.logits.argmax(1) == ref[fit_idx].argmax(1)).mean())
        if m.precision.is_int8 and agreement < MIN_INT8_AGREEMENT:
            damaged[name] = agreement
    on_step("fitting budgets on the fit half")
    budgets = fit_budgets(
        ref[fit_idx], {n: m for n, m in correct.items() if n not in damaged}, fit_truth, rng, resamples
    )
    defaults = budgets_mod.DEFAULT_BUDGETS
    report = {
        "images": {
            "folder": results.images.folder,
            "sha256": results.images.sha256,
            "fit": int(len(fit_idx)),
            "judge": int(len(judge_idx)),
            "labelled": truth is not None,
        },
        "budgets": budgets,
        "left_out_of_fit": {
            n: f"agrees with PyTorch on {a:.1%} of the fit half "
            f"(< {MIN_INT8_AGREEMENT:.0%}): damaged, not a reference"
            for n, a in damaged.items()
        },
        "judge_resamples": judge_resamples,
        "correct": {},
        "broken": {},
    }
    jref = ref[judge_idx]
    for name, m in judge_members.items():
        on_step(f"judging {name}")
        budget = {**defaults.get(m.precision.value, {}), **budgets.get(m.precision.value, {})}
        default = dict(defaults.get(m.precision.value, defaults[Precision.FP32.value]))
        row = {
            "precision": m.precision.value,
            "decisions_changed": _decision_change(jref, m, model_labels),
            **rates(jref, m, model_labels, judge_truth, budget, rng, judge_resamples),
            # the same judge subsets' verdicts under the shipped default budgets (no fit)
            "default_budgets": rates(jref, m, model_labels, judge_truth, default, rng, judge_resamples, (64,)),
        }
        if m.broken:
            report["broken"][name] = {"what": m.broken, **row}
        else:
            report["correct"][name] = {"damaged": name in damaged, **row}
    report["verdict"] = verdict(report)
    return report


def verdict(report: dict) -> dict:
    """The fitted gate's quality in two sentences' worth of numbers (at 64-image subsets)."""
    size = "64" if any("64" in r for r in report["correct"].values()) else "16"
    should_pass = {
        n: r[size]["fail_rate"]
        for n, r in report["correct"].items()
        if not (Precision(r["precision"]).is_int8 and 1 - r["decisions_changed"] < MIN_INT8_AGREEMENT)
    }
    # A broken variant of a precision none of whose correct artifacts is sound (every int8 artifact
    # damaged) starts from damage already: how often it fails measures the damaged base, not the gate.
    sound = {r["precision"] for r in report["correct"].values() if not r["damaged"]}
    not_judged = {
        n: f"no sound {r['precision']} artifact to break (all agree < {MIN_INT8_AGREEMENT:.0%})"
        for n, r in report["broken"].items()
        if r["precision"] not in sound
    }
    should_fail = {
        n: r[size]["fail_rate"]
        for n, r in report["broken"].items()
        if r["decisions_changed"] >= VISIBLE_DAMAGE and n not in not_judged
    }
    worst_alarm = max(should_pass.values(), default=0.0)
    worst_detection = min(should_fail.values(), default=1.0)
    default_alarm = max(
        (
            report["correct"][n]["default_budgets"].get("64", {}).get("fail_rate", 0.0)
            for n in should_pass
            if not Precision(report["correct"][n]["precision"]).is_int8
        ),
        default=0.0,
    )
    return {
        "subset_size": int(size),
        "worst_false_alarm": worst_alarm,
        "worst_detection": worst_detection,
        "worst_float_false_alarm_default_budgets": default_alarm,
        "false_alarms_ok": worst_alarm <= FALSE_ALARM_TARGET,
        "detection_ok": worst_detection >= DETECTION_TARGET,
        "judged_correct": sorted(should_pass),
        "judged_broken": sorted(should_fail),
        "not_judged": not_judged,
    }


# --- files -------------------------------------------------------------------------------------


def _toml_value(value) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(float(value)) if isinstance(value, float) else str(value)


def budget_toml(budgets: dict[str, dict[str, float]], model_labels, provenance: dict) -> str:
    lines = [
        "# vitgender parity budgets, fitted by 'vitgender validate --fit-budgets' (see docs/gate.md).",
        "# Use: vitgender validate ARTIFACTS --images OTHER_IMAGES --budget THIS_FILE",
        "",
        "[model]",
        f"labels = {_toml_value(list(model_labels))}",
        "",
        "[provenance]",
    ]
    lines += [f"{k} = {_toml_value(v)}" for k, v in provenance.items()]
    for section, values in budgets.items():
        lines += ["", f"[{section}]"] + [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def refuse_package_path(path: Path) -> None:
    """The fit writes the user's files, never into the installed package."""
    package = Path(__file__).resolve().parent.parent
    if Path(path).resolve().is_relative_to(package):
        raise UsageError(str(path), "inside the installed vitgender package; write budgets next to your project")


def provenance(results: RunResults, report: dict, command: str) -> dict:
    from vitgender.validators.parity import runtime_versions

    versions = runtime_versions()
    return {
        "command": command,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "images_sha256": results.images.sha256,
        "images": results.images.count,
        "fit_images": report["images"]["fit"],
        "judge_images": report["images"]["judge"],
        "labelled": report["images"]["labelled"],
        "model_source": str(results.model.get("source", "")),
        "versions": [f"{k} {v}" for k, v in versions.items()],
    }


def write_fit(
    target: Path, results: RunResults, report: dict, command: str, render_markdown: Callable[[dict], str]
) -> dict[str, Path]:
    """budgets.toml plus <stem>.gate-quality.json/.md beside it, each written whole (temp file + rename).

    `render_markdown` is `vitgender.reporting.gate_quality.markdown` (rendering lives in reporting/)."""
    refuse_package_path(target)
    model_labels = tuple(results.model.get("labels") or results.reference.labels)
    prov = provenance(results, report, command)
    target.parent.mkdir(parents=True, exist_ok=True)
    files = {
        "budgets": target,
        "json": target.with_name(f"{target.stem}.gate-quality.json"),
        "md": target.with_name(f"{target.stem}.gate-quality.md"),
    }
    texts = {
        "budgets": budget_toml(report["budgets"], model_labels, prov)
        if target.suffix != ".json"
        else json.dumps({"model": {"labels": list(model_labels)}, "provenance": prov, **report["budgets"]}, indent=2)
        + "\n",
        "json": json.dumps({"provenance": prov, **report}, indent=2) + "\n",
        "md": render_markdown(report),
    }
    for key, path in files.items():
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as handle:
            handle.write(texts[key])
        Path(handle.name).replace(path)
    return files


def fit_command(
    artifact_dir: Path,
    target: Path,
    *,
    images: Path,
    labels: str = "auto",
    model: str | None = None,
    work: Path | None = None,
    resamples: int = 2000,
    judge_resamples: int = 1000,
    command: str = "",
    save_outputs: Path | None = None,
    load_outputs: Path | None = None,
    on_step: Callable[[str], None] = lambda s: None,
    render_markdown: Callable[[dict], str],
    runtime: str | None = None,
) -> tuple[dict, dict[str, Path]]:
    """Build the broken variants, run everything once (or load a saved run), fit and judge, write the files.

    `runtime` opens the artifacts it reads (as in `parity.run_all`): `openvino:precision=bf16` fits the bf16 budget."""
    from vitgender.validators.results import RunResults

    if load_outputs is not None:  # refit saved outputs (variants included) without running anything
        refuse_package_path(target)
        results = RunResults.load(load_outputs)
        broken = {r.name: r.path for r in results.runs if r.name.startswith(BROKEN_PREFIX)}
        report = fit(results, broken, resamples=resamples, judge_resamples=judge_resamples, on_step=on_step)
        return report, write_fit(Path(target), results, report, command, render_markdown)
    from vitgender.manifest import read_manifest
    from vitgender.validators.parity import load_images, run_all

    refuse_package_path(target)
    if images is None:
        raise UsageError(
            "--fit-budgets",
            "give --images: budgets are fitted on your own images (at least "
            f"{MIN_IMAGES}, a few hundred for rates that mean something)",
        )
    model_labels = read_manifest(Path(artifact_dir))["model"].get("labels") or ()
    paths, samples = load_images(Path(images), labels, model_labels)  # refuse bad input before minutes of running
    if len(paths) < MIN_IMAGES:
        raise UsageError(
            str(images),
            f"{len(paths)} images; fitting budgets needs at least {MIN_IMAGES} "
            "(a few hundred for rates that mean something)",
        )
    if samples and len({s.label for s in samples}) < 2:
        raise UsageError(
            str(images), f"every image is labelled {samples[0].label}; fitting needs images of at " "least two classes"
        )
    with tempfile.TemporaryDirectory(prefix="vitgender-fit-", dir=work) as scratch:
        variants, skipped = broken_variants(Path(artifact_dir), Path(scratch))
        for why in skipped:
            on_step(f"broken variant skipped: {why}")
        results = run_all(
            artifact_dir,
            model=model,
            images=images,
            labels=labels,
            extra={BROKEN_PREFIX + n: (v.path, v.precision) for n, v in variants.items()},
            on_artifact=on_step,
            runtime=runtime,
        )
        for run in results.runs:  # a saved run says what each variant breaks
            if run.name.startswith(BROKEN_PREFIX):
                run.path = variants[run.name[len(BROKEN_PREFIX) :]].what
        if save_outputs is not None:
            results.save(save_outputs)
        model_labels = tuple(results.model.get("labels") or results.reference.labels)
        truth = np.array([model_labels.index(x) for x in results.images.labels]) if results.images.labels else None
        _check_inputs(results, truth)
        report = fit(
            results,
            {BROKEN_PREFIX + n: v.what for n, v in variants.items()},
            resamples=resamples,
            judge_resamples=judge_resamples,
            on_step=on_step,
        )
    report["broken_skipped"] = skipped
    return report, write_fit(Path(target), results, report, command, render_markdown)

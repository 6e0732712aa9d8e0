"""Tolerance budgets per precision, and the check of metrics against them.

The defaults live in `default_budgets.json`: scale-free metrics (|Δlogit| relative to the
reference logits' spread, probabilities, decision rates), fitted by `vitgender.validators.gate_fit`
on several models (see docs/gate.md), so that a correct export of a model other than the default
one passes without a fitted file. `vitgender validate --fit-budgets FILE` fits them on the user's
own model and images.

A budget file (`--budget FILE`, TOML or JSON) overrides them. Sections are a precision (`fp32`,
`fp16`, `int8-dynamic`, `int8`) or an artifact name (`tflite-int8`); keys are metric names from
`metrics.METRICS`, values numbers: an upper bound for a lower-is-better metric, a lower bound for
a higher-is-better one. A `[model]` table (`labels = [...]`) ties the file to one model's labels;
a `[provenance]` table is kept for people and ignored by the gate:

    [model]
    labels = ["White", "Black", "Asian", "Indian", "Other"]
    [int8]
    q90_rel_logit_diff = 0.2
    [tflite-int8]
    flip_rate_lower99 = 0.05
"""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path

from vitgender.errors import UsageError
from vitgender.precision import Precision
from vitgender.validators.checks import Check
from vitgender.validators.metrics import METRICS

# precision -> metric -> threshold, fitted and measured across models (see the module docstring).
DEFAULT_BUDGETS: dict[str, dict[str, float]] = json.loads(
    (Path(__file__).with_name("default_budgets.json")).read_text()
)["budgets"]
# Tables of a budget file that are not budgets.
META_SECTIONS = ("model", "provenance")


def read_budget_file(path: Path) -> dict:
    """The file's tables as written (TOML or JSON); a missing or malformed file is a usage error."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
        data = tomllib.loads(text) if Path(path).suffix == ".toml" else json.loads(text)
    except FileNotFoundError:
        raise UsageError(str(path), "budget file not found") from None
    except (OSError, UnicodeDecodeError, RecursionError) as exc:
        raise UsageError(str(path), f"cannot read budget file ({type(exc).__name__})") from None
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(str(path), f"invalid budget file ({exc})") from None
    if not isinstance(data, dict):
        raise UsageError(str(path), "a budget file maps sections to tables of metric = number")
    return data


def load_budgets(
    path: Path | None, model_labels: tuple[str, ...] | list[str] | None = None
) -> dict[str, dict[str, float]]:
    """Defaults, overlaid by the user's file (sections: a precision or an artifact format name).

    Anything the gate would not use is refused, so a typo (`[fp33]`, `max_abs_logit_dif`) cannot
    silently leave a default budget in force, and a file fitted for a model with other labels
    (its `[model] labels`) is refused rather than applied to this one.
    """
    from vitgender.formats import FORMATS

    budgets = {k: dict(v) for k, v in DEFAULT_BUDGETS.items()}
    if path is None:
        return budgets
    data = read_budget_file(path)
    meta = data.get("model", {})
    fitted_for = meta.get("labels") if isinstance(meta, dict) else None
    if not isinstance(meta, dict) or not (
        fitted_for is None or (isinstance(fitted_for, list) and all(isinstance(x, str) for x in fitted_for))
    ):
        raise UsageError(str(path), '[model]: expected labels = ["label", ...]')
    if fitted_for is not None and model_labels and list(fitted_for) != list(model_labels):
        raise UsageError(
            str(path),
            f"budgets fitted for a model with labels {list(fitted_for)}, "
            f"not this model's {list(model_labels)}; fit them again with --fit-budgets",
        )
    data = {k: v for k, v in data.items() if k not in META_SECTIONS}
    sections = [p.value for p in Precision] + list(FORMATS)
    for key, values in data.items():
        if key not in sections:
            raise UsageError(
                str(path),
                f"[{key}]: unknown section; use a precision ({', '.join(p.value for p in Precision)}) "
                "or an artifact name (see 'vitgender export --help')",
            )
        if not isinstance(values, dict):
            raise UsageError(str(path), f"[{key}]: expected a table of metric = number")
        unknown = sorted(set(values) - set(METRICS))
        if unknown:
            raise UsageError(str(path), f"[{key}]: unknown metric(s) {unknown}; known: {sorted(METRICS)}")
        for metric, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise UsageError(str(path), f"[{key}] {metric}: expected a finite number, got {value!r}")
        budgets.setdefault(key, {}).update({k: float(v) for k, v in values.items()})
    return budgets


def budget_for(budgets: dict[str, dict[str, float]], name: str, precision: Precision) -> dict[str, float]:
    return {**budgets.get(precision.value, budgets[Precision.FP32.value]), **budgets.get(name, {})}


# Budgeted metrics that need labelled images; without labels they are not measured (and the
# report says the run was unlabelled), every other budgeted metric must be there.
LABELLED_ONLY = frozenset({"accuracy_worse_p", "accuracy_drop"})


def check(metrics: dict, budget: dict[str, float], *, labelled: bool | None = None) -> list[Check]:
    """One Check for finiteness and one per budgeted metric.

    A budgeted metric the comparison did not produce is a programming or schema error, raised:
    skipping it would quietly remove that gate (a renamed key must not pass). `labelled` False
    exempts the accuracy metrics (None: infer from the metrics).
    """
    if labelled is None:
        labelled = "accuracy_worse_p" in metrics
    checks = [
        Check(
            "finite",
            metrics["finite"],
            metrics["nonfinite_count"],
            0,
            f"non-finite logits ({metrics['nonfinite_count']} values are NaN/Inf)",
        )
    ]
    for name, limit in budget.items():
        if name not in metrics:
            if name in LABELLED_ONLY and not labelled:
                continue
            raise KeyError(f"budgeted metric {name!r} was not produced by the comparison")
        value, metric = metrics[name], METRICS[name]
        checks.append(
            Check(
                name,
                metric.within(value, limit),
                value,
                limit,
                f"{name} {value:.6g} {'>' if metric.better == 'lower' else '<'} budget {limit:.6g}",
            )
        )
    return checks

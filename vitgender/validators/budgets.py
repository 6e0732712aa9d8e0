"""Tolerance budgets per precision, and the check of metrics against them.

The defaults live in `default_budgets.json`, written by `benchmarks/gate_quality.py
--write-budgets`: fitted on one half of the default model's validation faces (disjoint from the
bundled reference set) and judged on the other half, where the same script measures how often the
gate fails a correct artifact (false alarm) and a deliberately broken one (detection). The README
table "Gate quality" is that script's output.

A budget file (`--budget FILE`, TOML or JSON) overrides them. Sections are a precision (`fp32`,
`fp16`, `int8-dynamic`, `int8`) or an artifact name (`tflite-int8`); keys are metric names from
`KINDS`, values numbers. An upper bound for "max" metrics, a lower bound for "min" ones:

    [int8]
    q90_abs_logit_diff = 0.5
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

# precision -> metric -> threshold, fitted and measured by benchmarks/gate_quality.py.
DEFAULT_BUDGETS: dict[str, dict[str, float]] = json.loads(
    (Path(__file__).with_name("default_budgets.json")).read_text())["budgets"]
# Whether a metric's budget is an upper ("max") or a lower ("min") bound.
KINDS = {"max_abs_logit_diff": "max", "mean_abs_logit_diff": "max", "p99_abs_logit_diff": "max",
         "q90_abs_logit_diff": "max", "max_abs_prob_diff": "max", "q90_abs_prob_diff": "max",
         "cosine_min": "min", "cosine_mean": "min", "top1_agreement": "min", "flip_rate_lower99": "max",
         "confident_flip_rate_lower99": "max", "accuracy_worse_p": "min", "accuracy_drop": "max",
         "flips_far_from_boundary": "max", "batch_max_abs_logit_diff": "max"}


def load_budgets(path: Path | None) -> dict[str, dict[str, float]]:
    """Defaults, overlaid by the user's file (sections: a precision or an artifact format name).

    Anything the gate would not use is refused, so a typo (`[fp33]`, `max_abs_logit_dif`) cannot
    silently leave a default budget in force.
    """
    from vitgender.formats import FORMATS

    budgets = {k: dict(v) for k, v in DEFAULT_BUDGETS.items()}
    if path is None:
        return budgets
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
    sections = [p.value for p in Precision] + list(FORMATS)
    for key, values in data.items():
        if key not in sections:
            raise UsageError(str(path), f"[{key}]: unknown section; use a precision ({', '.join(p.value for p in Precision)}) "
                                        "or an artifact name (see 'vitgender export --help')")
        if not isinstance(values, dict):
            raise UsageError(str(path), f"[{key}]: expected a table of metric = number")
        unknown = sorted(set(values) - set(KINDS))
        if unknown:
            raise UsageError(str(path), f"[{key}]: unknown metric(s) {unknown}; known: {sorted(KINDS)}")
        for metric, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise UsageError(str(path), f"[{key}] {metric}: expected a finite number, got {value!r}")
        budgets.setdefault(key, {}).update({k: float(v) for k, v in values.items()})
    return budgets


def budget_for(budgets: dict[str, dict[str, float]], name: str, precision: Precision) -> dict[str, float]:
    return {**budgets.get(precision.value, budgets[Precision.FP32.value]), **budgets.get(name, {})}


def check(metrics: dict, budget: dict[str, float]) -> list[Check]:
    """One Check for finiteness and one per budgeted metric the metrics contain."""
    checks = [Check("finite", metrics["finite"], metrics["nonfinite_count"], 0,
                    f"non-finite logits ({metrics['nonfinite_count']} values are NaN/Inf)")]
    for metric, limit in budget.items():
        value = metrics.get(metric)
        if value is None:
            continue
        upper = KINDS[metric] == "max"
        passed = value <= limit if upper else value >= limit
        checks.append(Check(metric, passed, value, limit, f"{metric} {value:.6g} {'>' if upper else '<'} budget {limit:.6g}"))
    return checks

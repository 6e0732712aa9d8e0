"""Tolerance budgets per precision, and the check of metrics against them.

Defaults come from the default model's artifacts on the bundled 50-image reference set
(`vitgender validate` on a fresh `vitgender export --formats all`), with headroom:

| precision    | measured max abs logit diff          | default budget                                  |
|--------------|--------------------------------------|-------------------------------------------------|
| fp32         | 6e-6 .. 8e-6 (ONNX, SavedModel, TFLite) | 1e-4, agreement 100%, no accuracy change       |
| fp16         | 4e-5 (TFLite) .. 2.4e-3 (ORT)        | 1e-2, agreement >= 98%, no confident flip       |
| int8-dynamic | 0.058 (TFLite) .. 0.066 (ORT)        | 0.25, agreement >= 98%, no confident flip, drop <= 2 pt |
| int8 (static/full integer) | 0.40 (ORT QDQ) .. 1.15 (TFLite) | 1.5, agreement >= 96%, <= 1 confident flip, drop <= 4 pt |

Logit cosine is reported but not budgeted by default: with two classes the logits are nearly
antisymmetric and cosine collapses to +-1, i.e. it only restates top-1 agreement.
Override any of them with `--budget FILE` (TOML or JSON: `[fp16] max_abs_logit_diff = 0.05`,
or a table named after one artifact, e.g. `[tflite-int8]`).
"""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path

from vitgender.errors import UsageError
from vitgender.precision import Precision
from vitgender.validators.checks import Check

# precision -> metric -> threshold; KINDS says whether it is an upper ("max") or lower ("min") bound.
DEFAULT_BUDGETS: dict[str, dict[str, float]] = {
    Precision.FP32: {"max_abs_logit_diff": 1e-4, "top1_agreement": 1.0, "accuracy_drop": 0.0},
    Precision.FP16: {"max_abs_logit_diff": 1e-2, "top1_agreement": 0.98, "flips_far_from_boundary": 0, "accuracy_drop": 0.02},
    Precision.INT8_DYNAMIC: {"max_abs_logit_diff": 0.25, "top1_agreement": 0.98, "flips_far_from_boundary": 0,
                     "accuracy_drop": 0.02},
    Precision.INT8: {"max_abs_logit_diff": 1.5, "top1_agreement": 0.96, "flips_far_from_boundary": 1, "accuracy_drop": 0.04},
}
KINDS = {"max_abs_logit_diff": "max", "mean_abs_logit_diff": "max", "p99_abs_logit_diff": "max",
         "max_abs_prob_diff": "max", "cosine_min": "min", "cosine_mean": "min", "top1_agreement": "min",
         "accuracy_drop": "max", "flips_far_from_boundary": "max"}


def load_budgets(path: Path | None) -> dict[str, dict[str, float]]:
    """Defaults, overlaid by the user's file (sections: a precision or an artifact format name).

    Anything the gate would not use is refused, so a typo (`[fp33]`, `max_abs_logit_dif`) cannot
    silently leave a default budget in force.
    """
    from vitgender.exporters.formats import FORMATS

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

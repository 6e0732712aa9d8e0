"""The gate-quality report of `validate --fit-budgets` as Markdown (the fit itself: validators/gate_fit.py)."""

from __future__ import annotations

from vitgender.reporting.validation import _text
from vitgender.validators.gate_fit import BROKEN_PREFIX, DETECTION_TARGET, FALSE_ALARM_TARGET, VISIBLE_DAMAGE


def markdown(report: dict) -> str:
    v = report["verdict"]
    images = report["images"]
    lines = [
        f"## Gate quality: {images['fit']} fit + {images['judge']} judge images "
        f"({'labelled' if images['labelled'] else 'unlabelled: decision metrics only'})",
        "",
        f"- worst false-alarm rate of a correct artifact at {v['subset_size']} images: **{v['worst_false_alarm']:.1%}** "
        f"({'meets' if v['false_alarms_ok'] else 'misses'} the {FALSE_ALARM_TARGET:.0%} target)",
        f"- worst detection rate of a broken variant changing ≥ {VISIBLE_DAMAGE:.0%} of decisions: "
        f"**{v['worst_detection']:.1%}** ({'meets' if v['detection_ok'] else 'misses'} the "
        f"{DETECTION_TARGET:.0%} target)",
        f"- without fitting (the shipped default budgets), worst false-alarm rate of an fp32/fp16 artifact at 64 "
        f"images: **{v['worst_float_false_alarm_default_budgets']:.1%}**",
        "",
    ]
    for name, why in report["left_out_of_fit"].items():
        lines.append(f"- {_text(name)} left out of the fit: {_text(why)}")
    for name, why in v.get("not_judged", {}).items():
        lines.append(f"- {_text(name.removeprefix(BROKEN_PREFIX))} not counted in the detection rate: {_text(why)}")
    lines += [
        "",
        "| runner | precision | decisions changed | fails at 16 | at 64 | at 256 | failing checks (64) "
        "| fails at 64, default budgets |",
        "|---|---|---|---|---|---|---|---|",
    ]
    resamples = report["judge_resamples"]
    for kind in ("correct", "broken"):
        for name, row in report[kind].items():
            rate = {n: f"{row[n]['fail_rate']:.1%}" if n in row else "-" for n in ("16", "64", "256")}
            reasons = ", ".join(
                f"{k} {c / resamples:.0%}" for k, c in sorted(row.get("64", {"checks": {}})["checks"].items())
            )
            label = _text(name) if kind == "correct" else f"**broken:** {_text(name.removeprefix(BROKEN_PREFIX))}"
            if kind == "correct" and row["damaged"]:
                label += " (damaged)"
            default = row["default_budgets"].get("64")
            default_rate = f"{default['fail_rate']:.1%}" if default else "-"
            lines.append(
                f"| {label} | {row['precision']} | {row['decisions_changed']:.1%} | {rate['16']} | "
                f"{rate['64']} | {rate['256']} | {_text(reasons) or '-'} | {default_rate} |"
            )
    return "\n".join(lines) + "\n"

"""Writers for validation reports: report.json, report.md, report.html and JUnit XML."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from xml.etree import ElementTree as ET

from vitgender.validators import svg

def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 and value else f"{value:.{digits}f}"
    return str(value)


def _json_ready(report: dict) -> dict:
    """The JSON report omits per-image probability arrays (they only feed the HTML plots)."""
    slim = dict(report)
    slim["artifacts"] = [{k: v for k, v in a.items() if k != "probabilities"} for a in report["artifacts"]]
    return slim


def markdown(report: dict) -> str:
    lines = [f"## vitgender parity report: {'PASSED' if report['passed'] else 'FAILED'}", "",
             f"{report['images']['count']} reference images from `{report['images']['folder']}` "
             f"({report['images']['labelled']} labelled); reference = PyTorch fp32 "
             f"({_fmt(report['torch']['latency_ms_per_image'], 3)} ms/image).", "",
             "| artifact | precision | result | max abs logit diff | cosine min | top-1 agreement | flips (near/far) "
             "| accuracy torch → artifact | ms/image |",
             "|---|---|---|---|---|---|---|---|---|"]
    for a in report["artifacts"]:
        m = a["metrics"]
        acc = a.get("accuracy")
        acc_text = f"{acc['torch']['accuracy']:.3f} → {acc['artifact']['accuracy']:.3f}" if acc else "-"
        lines.append(f"| {a['name']} | {a['precision']} | {'✅ pass' if a['passed'] else '❌ FAIL'} | "
                     f"{_fmt(m['max_abs_logit_diff'])} | {_fmt(m['cosine_min'], 6)} | {m['top1_agreement']:.2%} | "
                     f"{m['flips_near_boundary']}/{m['flips_far_from_boundary']} | {acc_text} | "
                     f"{_fmt(m['latency_ms_per_image'], 3)} |")
    failing = [a for a in report["artifacts"] if not a["passed"]]
    if failing:
        lines += ["", "### Failures", ""]
        for a in failing:
            lines += [f"- **{a['name']}**: " + "; ".join(a["failures"])]
    lines += ["", "### Worst images per artifact", ""]
    for a in report["artifacts"]:
        worst = ", ".join(f"`{w['image']}` ({_fmt(w['max_abs_logit_diff'])})" for w in a["metrics"]["worst_images"][:3])
        flips = ", ".join(f"`{f['image']}` {f['reference']}→{f['artifact']}" for f in a["metrics"]["flips"][:5])
        lines.append(f"- {a['name']}: {worst}" + (f"; flipped: {flips}" if flips else ""))
    return "\n".join(lines) + "\n"


def html(report: dict) -> str:
    sections = []
    for a in report["artifacts"]:
        m = a["metrics"]
        charts = [svg.histogram(a["histogram"]["log10_edges"], a["histogram"]["counts"],
                                f"{a['name']}: |logit diff|", "log10 |PyTorch - artifact| per logit"),
                  svg.scatter(a["probabilities"]["torch"], a["probabilities"]["artifact"],
                              f"{a['name']}: P(label 0)", "PyTorch", "artifact")]
        deltas = [d for d in a.get("group_deltas", []) if set(d["group"]) in ({"race"}, {"gender"}, {"gender", "race"})]
        if deltas:
            charts.append(svg.bars([" ".join(d["group"].values()) for d in deltas], [d["delta"] for d in deltas],
                                   f"{a['name']}: accuracy delta per group", "artifact - PyTorch", low=-0.2, high=0.2,
                                   reference=0.0))
        failures = "".join(f"<li>{escape(f)}</li>" for f in a["failures"]) or "<li>none</li>"
        inv = a.get("inventory") or {}
        sections.append(
            f"<section><h2>{escape(a['name'])} <small>{escape(a['precision'])}</small> "
            f"<span class='{'ok' if a['passed'] else 'bad'}'>{'PASS' if a['passed'] else 'FAIL'}</span></h2>"
            f"<p>max |Δlogit| {_fmt(m['max_abs_logit_diff'])}, mean {_fmt(m['mean_abs_logit_diff'])}, "
            f"p99 {_fmt(m['p99_abs_logit_diff'])}, cosine min {_fmt(m['cosine_min'], 6)}, "
            f"top-1 agreement {m['top1_agreement']:.2%}, flips {len(m['flips'])}; "
            f"weights by dtype {escape(json.dumps(inv.get('weight_share_by_dtype', {})))}</p>"
            f"<ul>{failures}</ul><div class='charts'>{''.join(charts)}</div></section>"
        )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>vitgender parity report</title><style>"
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}.ok{color:#2a7a2a}.bad{color:#b00}"
        ".charts{display:flex;flex-wrap:wrap;gap:1em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:2px 6px}</style></head><body>"
        f"<h1>Parity report: {'PASSED' if report['passed'] else 'FAILED'}</h1>"
        f"<p>{report['images']['count']} images from <code>{escape(report['images']['folder'])}</code>; "
        f"model <code>{escape(str(report['model'].get('source')))}</code>.</p>{''.join(sections)}</body></html>"
    )


def _checks(artifact: dict) -> list[str]:
    """The checks this artifact went through: sha256 (verified before running), the budget's metrics..."""
    checks = ["sha256", "finite", *[m for m in artifact["budget"] if m in artifact["metrics"]], "quantization_proof"]
    return checks + (["baseline"] if artifact.get("baseline_checked") else [])


def _check_of(failure: str) -> str:
    if failure.startswith("baseline regression"):
        return "baseline"
    if failure.startswith("non-finite"):
        return "finite"
    if failure.startswith("declared"):
        return "quantization_proof"
    return failure.split(" ", 1)[0]


def junit(report: dict) -> str:
    """One testcase per artifact x check, for CI systems' test tabs."""
    suite = ET.Element("testsuite", name="vitgender.validate")
    tests = failures = 0
    for a in report["artifacts"]:
        for check in _checks(a):
            relevant = [f for f in a["failures"] if _check_of(f) == check]
            case = ET.SubElement(suite, "testcase", classname=f"vitgender.{a['name']}", name=check)
            tests += 1
            if relevant:
                failures += 1
                ET.SubElement(case, "failure", message="; ".join(relevant)[:500]).text = "\n".join(relevant)
    suite.set("tests", str(tests))
    suite.set("failures", str(failures))
    return ET.tostring(suite, encoding="unicode", xml_declaration=True)


def write_reports(report: dict, directory: Path) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"json": directory / "report.json", "md": directory / "report.md", "html": directory / "report.html"}
    paths["json"].write_text(json.dumps(_json_ready(report), indent=2) + "\n")
    paths["md"].write_text(markdown(report))
    paths["html"].write_text(html(report))
    return paths

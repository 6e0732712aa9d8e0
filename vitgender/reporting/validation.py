"""Renderers for `vitgender validate`: report.json, report.md, report.html and JUnit XML.

All of them read the typed `ValidationResult`; none decides a verdict.
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from xml.etree import ElementTree as ET

from vitgender.reporting import svg
from vitgender.validators.checks import ArtifactResult, ValidationResult


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 and value else f"{value:.{digits}f}"
    return str(value)


def _code(text: str) -> str:
    """A file name as a Markdown code span: names are attacker-controlled, so no backtick or pipe escapes it."""
    return "`" + str(text).replace("`", "'").replace("|", "\\|").replace("\n", " ") + "`"


def _text(text: str) -> str:
    """A label in Markdown prose or a table cell: markup shown as text."""
    return escape(str(text)).replace("|", "\\|").replace("\n", " ")


def _metric(a: ArtifactResult, name: str, digits: int = 4) -> str:
    return _fmt(a.metrics.get(name), digits)


def markdown(result: ValidationResult) -> str:
    lines = [f"## vitgender parity report: {'PASSED' if result.passed else 'FAILED'}", "",
             f"{result.images['count']} reference images from {_code(result.images['folder'])} "
             f"({result.images['labelled']} labelled); reference = PyTorch fp32 "
             f"({_fmt(result.torch['latency_ms_per_image'], 3)} ms/image).", "",
             "| artifact | precision | result | max abs logit diff | cosine min | top-1 agreement | flips (near/far) "
             "| accuracy torch → artifact | ms/image |",
             "|---|---|---|---|---|---|---|---|---|"]
    for a in result.artifacts:
        m = a.metrics
        acc = a.accuracy
        acc_text = f"{acc['torch']['accuracy']:.3f} → {acc['artifact']['accuracy']:.3f}" if acc else "-"
        agreement = f"{m['top1_agreement']:.2%}" if m else "-"
        flips = f"{m['flips_near_boundary']}/{m['flips_far_from_boundary']}" if m else "-"
        lines.append(f"| {_text(a.name)} | {a.precision} | {'✅ pass' if a.passed else '❌ FAIL'} | "
                     f"{_metric(a, 'max_abs_logit_diff')} | {_metric(a, 'cosine_min', 6)} | {agreement} | {flips} | "
                     f"{acc_text} | {_metric(a, 'latency_ms_per_image', 3)} |")
    failing = [a for a in result.artifacts if not a.passed]
    if failing:
        lines += ["", "### Failures", ""]
        lines += [f"- **{_text(a.name)}**: " + _text("; ".join(a.failures)) for a in failing]
    localized = [a for a in result.artifacts if a.localization]
    if localized:
        lines += ["", "### Where artifacts start to differ (block-by-block against PyTorch)", ""]
        for a in localized:
            d = a.localization["divergence"]
            if d is None:
                lines.append(f"- {_text(a.name)}: no stage differs beyond float32 rounding")
                continue
            lines.append(f"- {_text(a.name)}: divergence starts at **{d['stage']}** (relative error "
                         f"{d['relative_l2']:.3g}, {d['growth']:.3g}x the stage before); logits "
                         f"{a.localization['stages'][-1]['relative_l2']:.3g}")
    lines += ["", "### Worst images per artifact", ""]
    for a in result.artifacts:
        if not a.metrics:
            continue
        worst = ", ".join(f"{_code(w['image'])} ({_fmt(w['max_abs_logit_diff'])})" for w in a.metrics["worst_images"][:3])
        flips = ", ".join(f"{_code(f['image'])} {_text(f['reference'])}→{_text(f['artifact'])}"
                          for f in a.metrics["flips"][:5])
        lines.append(f"- {_text(a.name)}: {worst}" + (f"; flipped: {flips}" if flips else ""))
    return "\n".join(lines) + "\n"


def _charts(a: ArtifactResult) -> list[str]:
    if not a.metrics:
        return []
    charts = [svg.histogram(a.histogram["log10_edges"], a.histogram["counts"], f"{a.name}: |logit diff|",
                            "log10 |PyTorch - artifact| per logit"),
              svg.scatter(a.probabilities["torch"], a.probabilities["artifact"], f"{a.name}: P(label 0)", "PyTorch",
                          "artifact")]
    deltas = [d for d in a.group_deltas or [] if set(d["group"]) in ({"race"}, {"gender"}, {"gender", "race"})]
    if deltas:
        charts.append(svg.bars([" ".join(d["group"].values()) for d in deltas], [d["delta"] for d in deltas],
                               f"{a.name}: accuracy delta per group", "artifact - PyTorch", low=-0.2, high=0.2,
                               reference=0.0))
    return charts


def html(result: ValidationResult) -> str:
    sections = []
    for a in result.artifacts:
        m = a.metrics
        failures = "".join(f"<li>{escape(f)}</li>" for f in a.failures) or "<li>none</li>"
        figures = (f"max |Δlogit| {_metric(a, 'max_abs_logit_diff')}, mean {_metric(a, 'mean_abs_logit_diff')}, "
                   f"p99 {_metric(a, 'p99_abs_logit_diff')}, cosine min {_metric(a, 'cosine_min', 6)}, "
                   f"top-1 agreement {m['top1_agreement']:.2%}, flips {len(m['flips'])}; ") if m else ""
        sections.append(
            f"<section><h2>{escape(a.name)} <small>{escape(a.precision)}</small> "
            f"<span class='{'ok' if a.passed else 'bad'}'>{'PASS' if a.passed else 'FAIL'}</span></h2>"
            f"<p>{figures}weights by dtype {escape(json.dumps((a.inventory or {}).get('weight_share_by_dtype', {})))}</p>"
            f"<ul>{failures}</ul><div class='charts'>{''.join(_charts(a))}</div></section>"
        )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>vitgender parity report</title><style>"
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}.ok{color:#2a7a2a}.bad{color:#b00}"
        ".charts{display:flex;flex-wrap:wrap;gap:1em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:2px 6px}</style></head><body>"
        f"<h1>Parity report: {'PASSED' if result.passed else 'FAILED'}</h1>"
        f"<p>{result.images['count']} images from <code>{escape(result.images['folder'])}</code>; "
        f"model <code>{escape(str(result.model.get('source')))}</code>.</p>{''.join(sections)}</body></html>"
    )


def junit(result: ValidationResult) -> str:
    """One testcase per artifact x check actually performed, for CI systems' test tabs."""
    suite = ET.Element("testsuite", name="vitgender.validate")
    tests = failures = 0
    for a in result.artifacts:
        for check in a.checks:
            case = ET.SubElement(suite, "testcase", classname=f"vitgender.{a.name}", name=check.name)
            tests += 1
            if not check.passed:
                failures += 1
                ET.SubElement(case, "failure", message=check.detail[:500]).text = check.detail
    suite.set("tests", str(tests))
    suite.set("failures", str(failures))
    return ET.tostring(suite, encoding="unicode", xml_declaration=True)


def write_reports(result: ValidationResult, directory: Path) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"json": directory / "report.json", "md": directory / "report.md", "html": directory / "report.html"}
    paths["json"].write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    paths["md"].write_text(markdown(result))
    paths["html"].write_text(html(result))
    return paths

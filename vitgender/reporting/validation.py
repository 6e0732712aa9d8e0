"""Renderers for `vitgender validate`: report.json, report.md, report.html and JUnit XML.

All of them read the typed `ValidationResult`; none decides a verdict.
"""

from __future__ import annotations

import base64
import io
import json
import os
from html import escape
from pathlib import Path
from xml.etree import ElementTree as ET

from vitgender.reporting import figures
from vitgender.validators.checks import ArtifactResult, ValidationResult
from vitgender.validators.metrics import METRICS


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
    """A label in Markdown prose or a table cell: markup shown as text.

    Only what can open markup is escaped (`&`, `<`, the table's `|`); `>` stays a plain `>`, which
    Markdown shows as text mid-line (an HTML entity would show as `&gt;` on a terminal)."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace("|", "\\|").replace("\n", " ")


def _metric(a: ArtifactResult, name: str, digits: int = 4) -> str:
    return _fmt(a.metrics.get(name), digits)


def _relative(path: str) -> str:
    """Paths under the working directory are shown relative to it (reports travel between machines)."""
    try:
        return os.path.relpath(path) if Path(path).resolve().is_relative_to(Path.cwd()) else path
    except (OSError, ValueError):
        return path


def headroom(check) -> float | None:
    """How much of its budget a figure uses: value/budget for lower-is-better metrics, budget/value for
    higher-is-better ones (1.0 = at the budget, above 1 = failing); None where it does not apply."""
    metric = METRICS.get(check.name)
    if metric is None or check.budget is None or not isinstance(check.value, (int, float)):
        return None
    value, budget = float(check.value), float(check.budget)
    if metric.better == "lower":
        return value / budget if budget > 0 else (0.0 if value <= 0 else float("inf"))
    return budget / value if value > 0 else (0.0 if budget <= 0 else float("inf"))


def _tightest(a: ArtifactResult) -> str:
    """The budgeted figure closest to (or furthest over) its budget, as a share of the budget."""
    used = [(headroom(c), c) for c in a.checks]
    used = [(u, c) for u, c in used if u is not None]
    if not used:
        return "-"
    share, check = max(used, key=lambda item: item[0])
    return f"{check.name} {share:.0%}"


def _budgeted(a: ArtifactResult) -> str:
    """Each budgeted figure next to its budget and the share of it used, failing ones marked."""
    parts = []
    for c in a.checks:
        share = headroom(c)
        if share is None:
            continue
        mark = "" if c.passed else "**"
        parts.append(f"{mark}{c.name} {_fmt(c.value)} {METRICS[c.name].symbol} {_fmt(c.budget)} ({share:.0%}){mark}")
    return "; ".join(parts)


def markdown(result: ValidationResult) -> str:
    lines = [
        f"## vitgender parity report: {'PASSED' if result.passed else 'FAILED'}",
        "",
        f"{result.images['count']} reference images from {_code(_relative(result.images['folder']))} "
        f"({result.images['labelled']} labelled); reference = {_text(_reference_name(result))} "
        f"({_fmt(result.torch['latency_ms_per_image'], 3)} ms/image).",
        "",
    ]
    notes = [f"> {_text(note)}" for note in [result.images.get("note"), *result.notes] if note]
    lines += [
        *notes,
        *([""] if notes else []),
        "| artifact | precision | result | tightest budget (share used) | top-1 agreement | flips (confident) "
        "| accuracy torch → artifact | ms/image |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for a in result.artifacts:
        m = a.metrics
        acc = a.accuracy
        acc_text = f"{acc['torch']['accuracy']:.3f} → {acc['artifact']['accuracy']:.3f}" if acc else "-"
        agreement = _agreement(a)
        flips = f"{len(m['flips'])} ({m['confident_flips']})" if m else "-"
        lines.append(
            f"| {_text(a.name)} | {a.precision} | {'✅ pass' if a.passed else '❌ FAIL'} | {_tightest(a)} | "
            f"{agreement} | {flips} | {acc_text} | {_metric(a, 'latency_ms_per_image', 3)} |"
        )
    lines += ["", "### Budgets per artifact (value vs budget, share of the budget used; over 100% fails)", ""]
    lines += [f"- {_text(a.name)}: {_budgeted(a)}" for a in result.artifacts if a.checks]
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
            lines.append(
                f"- {_text(a.name)}: divergence starts at **{d['stage']}** (relative error "
                f"{d['relative_l2']:.3g}, {d['growth']:.3g}x the stage before); logits "
                f"{a.localization['stages'][-1]['relative_l2']:.3g}"
            )
    lines += ["", "### Worst images per artifact", ""]
    for a in result.artifacts:
        if not a.metrics:
            continue
        worst = ", ".join(
            f"{_code(w['image'])} ({_fmt(w['max_abs_logit_diff'])})" for w in a.metrics["worst_images"][:3]
        )
        flips = ", ".join(
            f"{_code(f['image'])} {_text(f['reference'])}→{_text(f['artifact'])}" for f in a.metrics["flips"][:5]
        )
        lines.append(f"- {_text(a.name)}: {worst}" + (f"; flipped: {flips}" if flips else ""))
    return "\n".join(lines) + "\n"


def _thumbnail(folder: str, name: str, size: int = 72) -> str:
    """A small inline JPEG of a reference image, so a flipped face can be seen in the report itself."""
    try:
        from vitgender.preprocess import decode_image

        image = decode_image(Path(folder) / name)
        image.thumbnail((size, size))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=80)
    except Exception:  # noqa: BLE001 - a missing thumbnail must not cost the report
        return ""
    return f"<img alt='{escape(name)}' src='data:image/jpeg;base64,{base64.b64encode(buffer.getvalue()).decode()}'>"


def _reference_name(result: ValidationResult) -> str:
    name = result.torch.get("reference", "torch")
    return "PyTorch fp32" if name == "torch" else f"artifact {name}"


def _image_cards(folder: str, items: list[dict]) -> str:
    cards = []
    for item in items:
        label = item.get("label", "label 0")  # reports of schema 2 gave P(label 0)
        caption = (
            f"PyTorch {item['reference']} {item['reference_prob']:.2f} → artifact {item['artifact']} "
            f"({item['artifact_prob']:.2f} for {item['reference']})"
            if "reference" in item
            else f"|Δlogit| {_fmt(item['max_abs_logit_diff'])}; P({label}) PyTorch {item['torch_prob']:.3f}, "
            f"artifact {item['artifact_prob']:.3f}"
        )
        cards.append(
            f"<figure>{_thumbnail(folder, item['image'])}<figcaption><code>{escape(item['image'])}</code>"
            f"<br>{escape(caption)}</figcaption></figure>"
        )
    return f"<div class='cards'>{''.join(cards)}</div>"


def _charts(a: ArtifactResult) -> list[str]:
    if not a.metrics:
        return []
    charts = [
        figures.histogram(
            a.histogram["log10_edges"],
            a.histogram["counts"],
            f"{a.name}: |logit diff|",
            "log10 |PyTorch - artifact| per logit",
        ),
        figures.scatter(
            a.probabilities["torch"],
            a.probabilities["artifact"],
            f"{a.name}: P(PyTorch's class)",
            "PyTorch",
            "artifact",
        ),
    ]
    deltas = [d for d in a.group_deltas or [] if set(d["group"]) in ({"race"}, {"gender"}, {"gender", "race"})]
    if deltas:
        charts.append(
            figures.deltas(
                [" ".join(d["group"].values()) for d in deltas],
                [d["delta"] for d in deltas],
                [d["n"] for d in deltas],
                f"{a.name}: accuracy change per group",
            )
        )
    if a.localization and a.localization["stages"]:
        charts.append(figures.stage_curve(a.localization["stages"], f"{a.name}: error by stage"))
    return charts


STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}.ok{color:#2a7a2a}.bad{color:#b00}"
    ".charts,.cards{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:2px 6px}figure{margin:0;width:170px;font-size:11px}"
    "section{border-top:1px solid #ddd;margin-top:1.5em}figure code{word-break:break-all}"
)


def _agreement(a: ArtifactResult) -> str:
    return f"{a.metrics['top1_agreement']:.2%}" if a.metrics else "-"


def html(result: ValidationResult) -> str:
    rows = []
    for a in result.artifacts:
        rows.append(
            f"<tr><td><a href='#{escape(a.name)}'>{escape(a.name)}</a></td><td>{escape(a.precision)}</td>"
            f"<td class='{'ok' if a.passed else 'bad'}'>{'PASS' if a.passed else 'FAIL'}</td>"
            f"<td>{escape(_tightest(a))}</td><td>{_agreement(a)}</td>"
            f"<td>{escape(_budgeted(a).replace('**', ''))}</td><td>{_metric(a, 'latency_ms_per_image', 3)}</td></tr>"
        )
    summary = (
        "<table><tr><th>artifact</th><th>precision</th><th>verdict</th>"
        "<th>tightest budget</th><th>top-1 agreement</th><th>budgeted figures (value vs budget, share used)</th><th>ms/image</th></tr>"
        + "".join(rows)
        + "</table>"
    )
    sections = []
    for a in result.artifacts:
        failures = "".join(f"<li>{escape(f)}</li>" for f in a.failures)
        flips = _image_cards(result.images["folder"], a.metrics.get("flips", [])[:12]) if a.metrics else ""
        worst = _image_cards(result.images["folder"], a.metrics.get("worst_images", [])[:5]) if a.metrics else ""
        sections.append(
            f"<section id='{escape(a.name)}'><h2>{escape(a.name)} <small>{escape(a.precision)}</small> "
            f"<span class='{'ok' if a.passed else 'bad'}'>{'PASS' if a.passed else 'FAIL'}</span></h2>"
            + (f"<p>Why it failed:</p><ul>{failures}</ul>" if failures else "")
            + f"<p>Weights by dtype: {escape(json.dumps((a.inventory or {}).get('weight_share_by_dtype', {})))}</p>"
            + f"<div class='charts'>{''.join(_charts(a))}</div>"
            + (f"<h3>Flipped images</h3>{flips}" if a.metrics and a.metrics["flips"] else "")
            + (f"<h3>Largest differences</h3>{worst}" if worst else "")
            + "</section>"
        )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>vitgender parity report</title><style>{STYLE}</style>"
        f"</head><body><h1>Parity report: {'PASSED' if result.passed else 'FAILED'}</h1>"
        f"<p>{result.images['count']} images from <code>{escape(_relative(result.images['folder']))}</code>; model "
        f"<code>{escape(_relative(str(result.model.get('source'))))}</code>; PyTorch "
        f"{_fmt(result.torch['latency_ms_per_image'], 3)} ms/image.</p>"
        + "".join(f"<p class='note'>{escape(n)}</p>" for n in [result.images.get("note"), *result.notes] if n)
        + f"{summary}{''.join(sections)}</body></html>"
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

"""Presenting an evaluation: a rich terminal table and a self-contained HTML page."""

from __future__ import annotations

from html import escape

from vitgender.reporting import svg


def _pct(value) -> str:
    return "-" if value is None else f"{value:.1%}"


def _ci(row: dict) -> str:
    return f"[{row['ci95'][0]:.1%}, {row['ci95'][1]:.1%}]"


def terminal(report: dict, console) -> None:
    from rich.table import Table

    overall = report["overall"]
    console.print(f"accuracy {_pct(report['accuracy'])} {_ci(overall)} on {overall['n']} images "
                  f"({report['unclassified']['count']} unreadable, {report['skipped_unlabelled']['count']} unlabelled "
                  f"names skipped); ECE {report['calibration']['ece']:.3f}")
    for name in ("genderxrace", "age_bucket"):
        rows = report["groups"].get(name)
        if not rows:
            continue
        table = Table(title=f"accuracy by {name.replace('x', ' x ')}")
        for column in ("group", "n", "accuracy", "95% CI"):
            table.add_column(column, justify="right" if column != "group" else "left")
        for row in rows:
            table.add_row(" ".join(row["group"].values()), str(row["n"]), _pct(row["accuracy"]), _ci(row))
        console.print(table)
    worst = report.get("worst_group")
    if worst:
        console.print(f"worst group: {' '.join(worst['group'].values())} ({worst['table']}) {_pct(worst['accuracy'])} "
                      f"on n={worst['n']}, {worst['gap_to_overall']:.1%} below overall")
    if "selective" in report:
        sel = report["selective"]
        console.print(f"answering only at confidence >= {sel['min_confidence']}: coverage {_pct(sel['coverage'])}, "
                      f"accuracy on answered {_pct(sel['covered']['accuracy'])}")


def html(report: dict, title: str = "vitgender evaluation") -> str:
    charts, tables = [], []
    for name, rows in report["groups"].items():
        if name == "racexgenderxage_bucket":
            continue
        charts.append(svg.bars([" ".join(r["group"].values()) for r in rows], [r["accuracy"] or 0 for r in rows],
                               f"accuracy by {name.replace('x', ' x ')}", low=0.5, high=1.0, reference=report["accuracy"]))
        body = "".join(f"<tr><td>{escape(' '.join(r['group'].values()))}</td><td>{r['n']}</td>"
                       f"<td>{_pct(r['accuracy'])}</td><td>{_ci(r)}</td></tr>" for r in rows)
        tables.append(f"<h3>{escape(name.replace('x', ' × '))}</h3><table><tr><th>group</th><th>n</th>"
                      f"<th>accuracy</th><th>95% CI</th></tr>{body}</table>")
    charts.append(svg.reliability(report["calibration"]["bins"], f"reliability (ECE {report['calibration']['ece']:.3f})"))
    unreadable = "".join(f"<li>{escape(e['image'])}: {escape(e['error'])}</li>" for e in report["unclassified"]["items"][:50])
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{escape(title)}</title><style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1300px}}"
        ".charts{display:flex;flex-wrap:wrap;gap:1em}table{border-collapse:collapse;margin-bottom:1em}"
        "td,th{border:1px solid #ccc;padding:2px 8px}</style></head><body>"
        f"<h1>{escape(title)}</h1><p>Overall accuracy {_pct(report['accuracy'])} {_ci(report['overall'])} on "
        f"{report['overall']['n']} images. {report['unclassified']['count']} unreadable images, "
        f"{report['skipped_unlabelled']['count']} unlabelled names (listed below, not in the denominator).</p>"
        "<p>Labels are perceived binary gender presentation, not identity; see the model card.</p>"
        f"<div class='charts'>{''.join(charts)}</div>{''.join(tables)}<h3>Unreadable</h3><ul>{unreadable}</ul>"
        "</body></html>"
    )

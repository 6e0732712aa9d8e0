"""Presenting an evaluation: a rich terminal table and a self-contained HTML page.

Words come from the report: table names are the data's fields ("label" for the true label),
the task line is the model card's (or names the labels), and the responsible-use text appears
only for the default model's labels.
"""

from __future__ import annotations

from html import escape

from vitgender.evaluation.metrics import is_default_labels
from vitgender.evaluation.task import RESPONSIBLE_USE
from vitgender.reporting import figures


def _pct(value) -> str:
    return "-" if value is None else f"{value:.1%}"


def _ci(row: dict) -> str:
    return f"[{row['ci95'][0]:.1%}, {row['ci95'][1]:.1%}]"


def _readable(name: str) -> str:
    return name.replace("x", " x ").replace("_", " ")


def shown_tables(report: dict) -> list[str]:
    """The tables worth a terminal: at most two fields, and a one-field table only when no two-field
    table already crosses it (race and gender are inside race x gender)."""
    names = [n for n in report["groups"] if len(report["groups"][n][0]["group"]) <= 2]
    crossed = {
        key for n in names for key in report["groups"][n][0]["group"] if len(report["groups"][n][0]["group"]) == 2
    }
    return [n for n in names if len(report["groups"][n][0]["group"]) == 2 or n not in crossed]


def task_of(report: dict) -> dict:
    """The report's task description; reports made without one (the Python API) get the neutral
    default, with the responsible-use text when the labels are the default model's."""
    if "task" in report:
        return report["task"]
    labels = list(report["per_class"])
    return {
        "text": f"image classifier with {len(labels)} labels: {', '.join(labels)}",
        "from": "labels",
        "responsible_use": RESPONSIBLE_USE if is_default_labels(labels) else None,
    }


def terminal(report: dict, console) -> None:
    from rich.markup import escape as escape_markup
    from rich.table import Table

    overall = report["overall"]
    console.print(f"model: {task_of(report)['text']}", markup=False, highlight=False)
    if report.get("data", {}).get("labels"):
        console.print(report["data"]["labels"]["text"], markup=False, highlight=False)
    console.print(
        f"accuracy {_pct(report['accuracy'])} {_ci(overall)} on {overall['n']} images "
        f"({report['unclassified']['count']} unreadable, {report['skipped_unlabelled']['count']} unlabelled "
        f"names skipped); ECE {report['calibration']['ece']:.3f}"
    )
    for name in shown_tables(report):
        rows = report["groups"][name]
        table = Table(title=f"accuracy by {_readable(name)}")
        for column in ("group", "n", "accuracy", "95% CI"):
            table.add_column(column, justify="right" if column != "group" else "left")
        for row in rows:
            table.add_row(
                escape_markup(" ".join(row["group"].values())), str(row["n"]), _pct(row["accuracy"]), _ci(row)
            )
        console.print(table)
    worst = report.get("worst_group")
    if worst:
        console.print(
            f"worst group: {' '.join(worst['group'].values())} ({_readable(worst['table'])}) "
            f"{_pct(worst['accuracy'])} on n={worst['n']}, {100 * worst['gap_to_overall']:.1f} percentage "
            "points below overall",
            markup=False,
            highlight=False,
        )
    if report.get("explain"):
        explain = report["explain"]
        cells = " x ".join(_readable(k) for k in explain["keys"])
        console.print(
            f"explained: mean {explain['method']} map of right and wrong answers in {len(explain['cells'])} "
            f"{cells} cells (up to {explain['per_cell']} images each; in the JSON and HTML reports)",
            markup=False,
            highlight=False,
        )
    if "selective" in report:
        sel = report["selective"]
        console.print(
            f"answering only at confidence >= {sel['min_confidence']}: coverage {_pct(sel['coverage'])}, "
            f"accuracy on answered {_pct(sel['covered']['accuracy'])}"
        )


STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:1300px}.charts{display:flex;flex-wrap:wrap;"
    "gap:1em;align-items:flex-start}table{border-collapse:collapse;margin-bottom:1em}td,th{border:1px solid #ccc;"
    "padding:2px 8px;text-align:right}td:first-child,th:first-child{text-align:left}"
)


def _table(head: list[str], rows: list[list[str]]) -> str:
    header = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{header}</tr>{body}</table>"


def _summary(report: dict) -> str:
    """What the command prints, first: overall, worst group, calibration, selective answering."""
    overall, worst = report["overall"], report.get("worst_group")
    rows = [
        ["accuracy", f"{_pct(report['accuracy'])} {_ci(overall)} on {overall['n']} images"],
        [
            "expected calibration error",
            f"{report['calibration']['ece']:.3f}" if report["calibration"]["ece"] is not None else "-",
        ],
    ]
    rows.append(
        [
            "worst group (n &ge; 30)",
            f"{escape(' '.join(worst['group'].values()))} ({escape(worst['table'])}): {_pct(worst['accuracy'])} "
            f"on n={worst['n']}, {100 * worst['gap_to_overall']:.1f} percentage points below overall"
            if worst
            else "none named: no group has 30 or more images",
        ]
    )
    if "selective" in report:
        sel = report["selective"]
        rows.append(
            [
                f"answering only at confidence &ge; {sel['min_confidence']}",
                f"coverage {_pct(sel['coverage'])}, accuracy on the answered {_pct(sel['covered']['accuracy'])}",
            ]
        )
    return _table(["", ""], rows)


def _per_class(report: dict) -> str:
    labels = list(report["per_class"])
    classes = _table(
        ["label", "precision", "recall", "support"],
        [
            [escape(c), _pct(v["precision"]), _pct(v["recall"]), str(v["support"])]
            for c, v in report["per_class"].items()
        ],
    )
    confusion = _table(
        ["true \\ predicted", *labels],
        [[escape(t), *(str(row.get(p, 0)) for p in labels)] for t, row in report["confusion"].items()],
    )
    return f"<div class='charts'><div><h3>Per label</h3>{classes}</div><div><h3>Confusion matrix</h3>{confusion}</div></div>"


def _about(report: dict) -> str:
    """What was evaluated: the task, where the labels came from, and the responsible-use text where it applies."""
    task = task_of(report)
    lines = [f"Model: {escape(task['text'])}"]
    if report.get("data", {}).get("labels"):
        lines.append(escape(report["data"]["labels"]["text"][0].upper() + report["data"]["labels"]["text"][1:]))
    if task.get("responsible_use"):
        lines.append(escape(task["responsible_use"]))
    return "".join(f"<p>{line}</p>" for line in lines)


def html(report: dict, title: str = "vitgender evaluation") -> str:
    charts, tables = [], []
    for name, rows in report["groups"].items():
        if len(rows[0]["group"]) > 2:
            continue
        readable = name.replace("x", " × ").replace("_", " ")
        charts.append(
            figures.accuracy_bars(
                [" ".join(r["group"].values()) for r in rows],
                [r["accuracy"] or 0 for r in rows],
                [tuple(r["ci95"]) for r in rows],
                [r["n"] for r in rows],
                report["accuracy"],
                f"accuracy by {readable}",
            )
        )
        tables.append(
            f"<h3>{escape(readable)}</h3>"
            + _table(
                ["group", "n", "accuracy", "95% CI"],
                [[escape(" ".join(r["group"].values())), str(r["n"]), _pct(r["accuracy"]), _ci(r)] for r in rows],
            )
        )
    ece = report["calibration"]["ece"]
    charts.append(
        figures.reliability(
            report["calibration"]["bins"], f"reliability (ECE {ece:.3f})" if ece is not None else "reliability"
        )
    )
    if report.get("explain"):
        explain = report["explain"]
        if explain["cells"]:
            charts.append(
                figures.cell_maps(
                    explain["cells"],
                    f"what decisions rest on ({explain['method']}, mean map "
                    f"per cell, up to {explain['per_cell']} images each)",
                )
            )
    unreadable = "".join(
        f"<li>{escape(e['image'])}: {escape(e['error'])}</li>" for e in report["unclassified"]["items"][:200]
    )
    unlabelled = "".join(f"<li>{escape(name)}</li>" for name in report["skipped_unlabelled"]["items"][:200])
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title><style>{STYLE}</style></head>"
        f"<body><h1>{escape(title)}</h1>{_summary(report)}"
        f"<p>{report['unclassified']['count']} unreadable images and {report['skipped_unlabelled']['count']} "
        "unlabelled names are listed at the end and are not in the denominator.</p>"
        f"{_about(report)}"
        f"<div class='charts'>{''.join(charts)}</div>{_per_class(report)}{''.join(tables)}"
        f"<h3>Unreadable images</h3><ul>{unreadable or '<li>none</li>'}</ul>"
        f"<h3>Unlabelled names (skipped)</h3><ul>{unlabelled or '<li>none</li>'}</ul>"
        "</body></html>"
    )

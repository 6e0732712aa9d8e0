"""mkdocs hook: reference pages generated from the code at build time, so they cannot drift.

- reference/cli.md: `vitgender COMMAND --help` for every subcommand of the Typer app;
- reference/budgets.md: the format registry and vitgender/validators/default_budgets.json;
- model-card.md: the embedded model's card (vitgender/default_model/README.md);
- changelog.md: CHANGELOG.md.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mkdocs.structure.files import File

REPO = Path(__file__).resolve().parents[2]
EXTRA_FOR_RUNTIME = {
    "onnx": "`onnx`",
    "tflite": "`tflite`",
    "savedmodel": "`tflite`",
    "executorch": "`onnx` + the ExecuTorch side environment",
    "inductor": "`onnx` + the ExecuTorch side environment to build; a C++ compiler to run",
}


def cli_reference() -> str:
    from typer.main import get_command
    from typer.testing import CliRunner

    from vitgender.cli import app

    os.environ["COLUMNS"] = "100"  # stable wrapping, whatever the terminal that builds the site
    parts = [
        "# CLI reference\n",
        "Generated from the installed `vitgender` command at build time "
        "(`vitgender COMMAND --help`). Exit codes for every command: 0 ok, 1 parity gate failed, "
        "2 usage or input error, 3 tool chain failed.\n",
    ]
    for name in sorted(get_command(app).commands):
        result = CliRunner().invoke(app, [name, "--help"], prog_name="vitgender")
        if result.exit_code != 0:
            raise RuntimeError(f"vitgender {name} --help failed: {result.output}")
        parts.append(f"## vitgender {name}\n\n```text\n{result.output.rstrip()}\n```\n")
    return "\n".join(parts)


def budgets_reference() -> str:
    from vitgender.formats import FORMATS, GROUPS
    from vitgender.validators.metrics import METRICS, Better

    data = json.loads((REPO / "vitgender" / "validators" / "default_budgets.json").read_text())
    budgets = data["budgets"]
    metrics = sorted({metric for values in budgets.values() for metric in values})
    lines = [
        "# Formats, budgets and metrics\n",
        "Generated at build time from the format registry (`vitgender/formats.py`) and "
        "`vitgender/validators/default_budgets.json`.\n",
        "## Export formats\n",
        "| format | runtime | precision | file | converted by | extra |",
        "|---|---|---|---|---|---|",
    ]
    for spec in FORMATS.values():
        lines.append(
            f"| `{spec.name}` | {spec.runtime} | {spec.precision.value} | `{spec.filename}` | "
            f"{spec.toolchain} | {EXTRA_FOR_RUNTIME.get(spec.runtime, 'core')} |"
        )
    lines += ["", "Groups for `--formats`:", ""]
    lines += [f"- `{group}`: {', '.join(f'`{n}`' for n in names)}" for group, names in GROUPS.items()]
    lines += [
        "",
        "## Default budgets per precision\n",
        "Upper bounds (the artifact fails above them) unless the metric's bound is *min* (it fails below). "
        f"Provenance: {data['provenance']}; batch invariance: {data['batch_provenance']}. "
        "How these were fitted and how often the gate is wrong, per model: [The gate in CI](../gate.md).\n",
        "| metric | bound | meaning | " + " | ".join(budgets) + " |",
        "|---|---|---|" + "---|" * len(budgets),
    ]
    for metric in metrics:
        cells = " | ".join(f"{budgets[p][metric]:g}" if metric in budgets[p] else "–" for p in budgets)
        bound = "min" if METRICS[metric].better is Better.HIGHER else "max"
        lines.append(f"| `{metric}` | {bound} | {METRICS[metric].meaning} | {cells} |")
    lines += [
        "",
        "## Every metric a budget file may set\n",
        "A budget file (`vitgender validate --budget FILE`, TOML or JSON) has sections named after a precision "
        f"({', '.join(f'`{p}`' for p in budgets)}) or an artifact name, and these keys:\n",
        "| metric | bound | meaning |",
        "|---|---|---|",
    ]
    lines += [
        f"| `{m.name}` | {'min' if m.better is Better.HIGHER else 'max'} | {m.meaning} |"
        for m in sorted(METRICS.values(), key=lambda m: m.name)
    ]
    return "\n".join(lines) + "\n"


def model_card() -> str:
    text = (REPO / "vitgender" / "default_model" / "README.md").read_text()
    return text


def on_files(files, config):
    for path, content in (
        ("reference/cli.md", cli_reference()),
        ("reference/budgets.md", budgets_reference()),
        ("model-card.md", model_card()),
        ("changelog.md", (REPO / "CHANGELOG.md").read_text()),
    ):
        files.append(File.generated(config, path, content=content))
    return files

"""`vitgender validate`: the parity gate. Exit 0 pass, 1 an artifact failed, 2 usage error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from vitgender.cli.app import app
from vitgender.cli.common import ALPHA_HELP, AlphaPolicy
from vitgender.errors import ExitCode, UsageError


@app.command()
def validate(
    artifact_dir: Path = typer.Argument(..., metavar="DIR", help="A directory written by 'vitgender export' (has manifest.json)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", metavar="MODEL", help="PyTorch reference (default: the manifest's model)."),
    images: Optional[Path] = typer.Option(None, metavar="DIR", help="Reference image folder (default: the bundled reference set)."),
    reference: Optional[str] = typer.Option(None, metavar="NAME", help="Name of a bundled reference set (default utkface-val-50)."),
    labels: str = typer.Option("auto", metavar="LABELS", help="auto (UTKFace names / class folders), none, or a CSV path,label file."),
    budget: Optional[Path] = typer.Option(None, metavar="FILE", help="TOML/JSON overriding tolerance budgets per precision or artifact."),
    baseline: Optional[Path] = typer.Option(None, metavar="FILE", help="An earlier report.json: fail on drift beyond a margin."),
    write_baseline: Optional[Path] = typer.Option(None, metavar="FILE", help="Also save this run's report.json here as a baseline."),
    report_dir: Optional[Path] = typer.Option(None, metavar="DIR", help="Where report.json/.md/.html go (default ARTIFACT_DIR/validation)."),
    junit: Optional[Path] = typer.Option(None, metavar="FILE", help="Write JUnit XML (one testcase per artifact x check)."),
    localize: bool = typer.Option(False, "--localize", help="Compare every ONNX and TFLite artifact with PyTorch block "
                                  "by block and name where they start to differ (always done for a failing one)."),
    only: Optional[str] = typer.Option(None, metavar="NAMES", help="Comma list of artifact names to validate (default: all)."),
    alpha: Optional[AlphaPolicy] = typer.Option(None, "--alpha", metavar="POLICY", help=ALPHA_HELP + " Applies to PyTorch "
                                        "and every artifact alike."),
) -> None:
    """Prove every artifact matches PyTorch on the same images. Exit 0 pass, 1 parity regression, 2 usage error."""
    alpha = alpha.value if alpha is not None else None
    from vitgender.reporting import validation as reports
    from vitgender.validators import parity

    stored = None
    if baseline is not None:  # read before the slow part, so a bad path fails in a second
        try:
            stored = json.loads(baseline.read_text())
        except (OSError, UnicodeDecodeError, RecursionError, json.JSONDecodeError) as exc:
            raise UsageError(str(baseline), f"cannot read baseline ({type(exc).__name__}: {exc})"[:300]) from None
        if not isinstance(stored, dict):
            raise UsageError(str(baseline), "not a vitgender report.json (expected a JSON object)")
    result = parity.validate(artifact_dir, model=model, images=images, reference=reference, labels=labels,
                             budget_file=budget, only=only.split(",") if only else None, localize=localize,
                             on_artifact=lambda name: typer.echo(f"[validate] {name}", err=True), alpha=alpha)
    if stored is not None:
        parity.compare_baseline(result, stored)
    written = reports.write_reports(result, report_dir or artifact_dir / "validation")
    if write_baseline is not None:
        write_baseline.parent.mkdir(parents=True, exist_ok=True)
        write_baseline.write_text(written["json"].read_text())
    if junit is not None:
        junit.write_text(reports.junit(result))
    typer.echo(reports.markdown(result))
    typer.echo(f"reports: {written['md']} {written['html']} {written['json']}", err=True)
    if not result.passed:
        raise typer.Exit(ExitCode.GATE_FAILED)

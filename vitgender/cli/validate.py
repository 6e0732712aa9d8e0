"""`vitgender validate`: the parity gate. Exit 0 pass, 1 an artifact failed, 2 usage error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from vitgender.cli.app import app
from vitgender.cli.common import ALPHA_HELP, RUNTIME_HELP, AlphaPolicy
from vitgender.errors import ExitCode, UsageError


@app.command()
def validate(
    artifact_dir: Path = typer.Argument(
        ..., metavar="DIR", help="A directory written by 'vitgender export' (has manifest.json)."
    ),
    model: Optional[str] = typer.Option(
        None, "--model", "-m", metavar="MODEL", help="PyTorch reference (default: the manifest's model)."
    ),
    images: Optional[Path] = typer.Option(
        None, metavar="DIR", help="Reference image folder (default: the bundled reference set)."
    ),
    reference: Optional[str] = typer.Option(
        None, metavar="NAME", help="Name of a bundled reference set (default utkface-val-50)."
    ),
    labels: str = typer.Option(
        "auto", metavar="LABELS", help="auto (UTKFace names / class folders), none, or a CSV path,label file."
    ),
    budget: Optional[Path] = typer.Option(
        None, metavar="FILE", help="TOML/JSON overriding tolerance budgets per precision or artifact."
    ),
    baseline: Optional[Path] = typer.Option(
        None,
        metavar="FILE",
        help="An earlier report.json: fail on a statistically "
        "supported regression of decisions (paired on the same images).",
    ),
    write_baseline: Optional[Path] = typer.Option(
        None,
        metavar="FILE",
        help="Also save this run's report.json here as a "
        "baseline (refused for a failing run unless --force-baseline).",
    ),
    force_baseline: bool = typer.Option(
        False, "--force-baseline", help="Write --write-baseline even though the run failed."
    ),
    fit_budgets: Optional[Path] = typer.Option(
        None,
        metavar="FILE",
        help="Fit budgets on --images (split by content "
        "hash into fit and judge halves), write FILE (TOML) and its gate-quality "
        "report (FILE stem .gate-quality.json/.md). Exit 0 when the fit succeeded.",
    ),
    save_outputs: Optional[Path] = typer.Option(
        None,
        metavar="DIR",
        help="Save every runner's raw outputs (logits, " "timing, stages) to DIR for --load-outputs.",
    ),
    load_outputs: Optional[Path] = typer.Option(
        None, metavar="DIR", help="Compare saved outputs instead of running " "anything (DIR from --save-outputs)."
    ),
    against: Optional[str] = typer.Option(
        None,
        metavar="ARTIFACT",
        help="Use this artifact (a manifest name or a file) "
        "as the reference instead of PyTorch: artifact vs artifact.",
    ),
    report_dir: Optional[Path] = typer.Option(
        None, metavar="DIR", help="Where report.json/.md/.html go (default ARTIFACT_DIR/validation)."
    ),
    junit: Optional[Path] = typer.Option(
        None, metavar="FILE", help="Write JUnit XML (one testcase per artifact x check)."
    ),
    localize: bool = typer.Option(
        False,
        "--localize",
        help="Compare every ONNX and TFLite artifact with PyTorch block "
        "by block and name where they start to differ (always done for a failing one).",
    ),
    only: Optional[str] = typer.Option(
        None, metavar="NAMES", help="Comma list of artifact names to validate (default: all)."
    ),
    alpha: Optional[AlphaPolicy] = typer.Option(
        None, "--alpha", metavar="POLICY", help=ALPHA_HELP + " Applies to PyTorch " "and every artifact alike."
    ),
    runtime: Optional[str] = typer.Option(
        None,
        metavar="RUNTIME",
        help="Open the artifacts this runtime reads with it instead of their own (e.g. openvino, "
        "openvino:precision=bf16; a bf16 run is judged by the bf16 budget). " + RUNTIME_HELP,
    ),
) -> None:
    """Prove every artifact matches PyTorch on the same images. Exit 0 pass, 1 parity regression, 2 usage error."""
    alpha = alpha.value if alpha is not None else None
    from vitgender.reporting import validation as reports
    from vitgender.validators import parity

    running_only = images or reference or against or only or save_outputs or runtime
    if load_outputs is not None and running_only and not fit_budgets:
        raise UsageError(
            "--load-outputs",
            "compares saved outputs as they are; --images, --reference, --against, "
            "--only, --runtime and --save-outputs apply when running",
        )
    if fit_budgets is not None:
        _fit(
            artifact_dir,
            fit_budgets,
            images=images,
            labels=labels,
            model=model,
            save_outputs=save_outputs,
            load_outputs=load_outputs,
            runtime=runtime,
        )
        return

    stored = None
    if baseline is not None:  # read before the slow part, so a bad path fails in a second
        try:
            stored = json.loads(baseline.read_text())
        except (OSError, UnicodeDecodeError, RecursionError, json.JSONDecodeError) as exc:
            raise UsageError(str(baseline), f"cannot read baseline ({type(exc).__name__}: {exc})"[:300]) from None
        if not isinstance(stored, dict):
            raise UsageError(str(baseline), "not a vitgender report.json (expected a JSON object)")
    result = parity.validate(
        artifact_dir,
        model=model,
        images=images,
        reference=reference,
        labels=labels,
        budget_file=budget,
        only=only.split(",") if only else None,
        against=against,
        localize=localize,
        save_outputs=save_outputs,
        load_outputs=load_outputs,
        on_artifact=lambda name: typer.echo(f"[validate] {name}", err=True),
        alpha=alpha,
        runtime=runtime,
    )
    if result.images.get("note"):
        typer.echo(f"vitgender: note: {result.images['note']}", err=True)
    if stored is not None:
        parity.compare_baseline(result, stored)
    written = reports.write_reports(result, report_dir or artifact_dir / "validation")
    if write_baseline is not None:
        if not result.passed and not force_baseline:
            typer.echo(reports.markdown(result))
            typer.echo(
                f"vitgender: not writing baseline {write_baseline}: the run failed "
                "(fix it, or --force-baseline to record a failing run)",
                err=True,
            )
            raise typer.Exit(ExitCode.GATE_FAILED)
        write_baseline.parent.mkdir(parents=True, exist_ok=True)
        write_baseline.write_text(written["json"].read_text())
    if junit is not None:
        junit.write_text(reports.junit(result))
    typer.echo(reports.markdown(result))
    typer.echo(f"reports: {written['md']} {written['html']} {written['json']}", err=True)
    if not result.passed:
        raise typer.Exit(ExitCode.GATE_FAILED)


def _fit(
    artifact_dir: Path,
    target: Path,
    *,
    images: Optional[Path],
    labels: str,
    model: Optional[str],
    save_outputs: Optional[Path],
    load_outputs: Optional[Path],
    runtime: Optional[str],
) -> None:
    import shlex
    import sys

    from vitgender.reporting import gate_quality
    from vitgender.validators import gate_fit

    report, files = gate_fit.fit_command(
        artifact_dir,
        target,
        images=images,
        labels=labels,
        model=model,
        save_outputs=save_outputs,
        load_outputs=load_outputs,
        command="vitgender " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        on_step=lambda step: typer.echo(f"[fit] {step}", err=True),
        render_markdown=gate_quality.markdown,
        runtime=runtime,
    )
    typer.echo(gate_quality.markdown(report))
    typer.echo(f"budgets: {files['budgets']}; gate quality: {files['md']} {files['json']}", err=True)

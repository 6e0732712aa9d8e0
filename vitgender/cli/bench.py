"""`vitgender bench`: throughput, latency, memory and size of every runtime, as ratios to PyTorch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from vitgender.cli.app import app
from vitgender.cli.common import MODEL_HELP
from vitgender.errors import UsageError


@app.command()
def bench(
    model: Optional[str] = typer.Option(None, "--model", "-m", metavar="MODEL", help=MODEL_HELP),
    artifacts: Optional[Path] = typer.Option(
        None, metavar="DIR", help="An export directory: benchmark every artifact in it too."
    ),
    batch_sizes: str = typer.Option("1,8,32", metavar="SIZES", help="Comma list of batch sizes."),
    threads: Optional[int] = typer.Option(
        None,
        metavar="N",
        min=1,
        help="Threads for every runtime, equal for all " "(default: the CPUs this process may use).",
    ),
    seconds: float = typer.Option(
        3.0, metavar="SECONDS", min=0.1, help="Timed seconds per candidate and batch size (after warm-up)."
    ),
    json_out: Optional[Path] = typer.Option(
        None, "--json", metavar="FILE", help="Write the results (schema 3) as JSON."
    ),
    plot: Optional[Path] = typer.Option(
        None,
        metavar="FILE",
        help="Write an SVG: images/s per batch size and % of the " "measured roof, one bar per candidate.",
    ),
    roof_seconds: float = typer.Option(1.0, metavar="SECONDS", min=0.05, help="Seconds per roof GEMM measurement."),
    peers: bool = typer.Option(
        True,
        "--peers/--no-peers",
        help="Also measure each artifact file on the installed peer engines (OpenVINO: fp32, the bf16 hint "
        "where the CPU has bf16 arithmetic, static int8), as NAME@RUNTIME rows marked peer.",
    ),
    tta: str = typer.Option(
        "none",
        metavar="MODE",
        help="Also measure every runner with this test-time " "augmentation (flip), as extra NAME+flip rows.",
    ),
) -> None:
    """Throughput, latency, memory, size and top-1 agreement of PyTorch, the HF pipeline and every artifact
    (a .pt2 artifact also with its float parts in bf16 where the CPU has bf16 arithmetic, as
    NAME@inductor:precision=bf16), as ratios to PyTorch and as shares of this machine's measured GEMM roofs."""
    from vitgender.bench import run_benchmark
    from vitgender.machine import available_cores
    from vitgender.reporting.bench import breakdown_table, header, plot_svg, table
    from vitgender.runtimes.tta import check_tta

    check_tta(tta)

    try:
        sizes = [int(b) for b in batch_sizes.split(",") if b.strip()]
    except ValueError:
        raise UsageError(batch_sizes, "batch sizes must be a comma list of integers") from None
    if not sizes or min(sizes) < 1:
        raise UsageError(batch_sizes, "batch sizes must be positive")
    report = run_benchmark(
        model,
        artifacts,
        sizes,
        threads or available_cores(),
        seconds,
        on_candidate=lambda name: typer.echo(f"[bench] {name}", err=True),
        roof_seconds=roof_seconds,
        tta=tta,
        peers=peers,
    )
    typer.echo(header(report))
    typer.echo(table(report))
    typer.echo("")
    typer.echo(breakdown_table(report))
    if json_out is not None:
        json_out.write_text(json.dumps(report, indent=2) + "\n")
    if plot is not None:
        plot.write_text(plot_svg(report))

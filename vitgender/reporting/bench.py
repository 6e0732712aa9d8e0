"""Presenting a `vitgender bench` report: a Markdown table and an SVG plot."""

from __future__ import annotations

from vitgender.reporting import figures


def table(report: dict) -> str:
    lines = ["| artifact | precision | batch | images/s | p50 ms | p90 ms | × PyTorch | GFLOP/s | % peak | RSS MB | MB on disk | load s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        lines.append(f"| {r['name']} | {r['precision']} | {r['batch_size']} | {r['images_per_s']:.1f} | {r['p50_ms']:.1f} | "
                     f"{r['p90_ms']:.1f} | {r['ratio_vs_torch']:.2f} | {r['gflops']:.0f} | "
                     f"{r['pct_of_peak'] if r['pct_of_peak'] is not None else '-'} | {r['peak_rss_mb']:.0f} | "
                     f"{r['bytes'] / 2**20:.1f} | {r['load_seconds']:.1f} |")
    return "\n".join(lines)


def plot_svg(report: dict) -> str:
    """One standalone SVG file: throughput per batch size, agreement against speed."""
    names = sorted({r["name"] for r in report["results"]})
    series = {n: [(r["batch_size"], r["images_per_s"]) for r in report["results"] if r["name"] == n] for n in names}
    largest = max(r["batch_size"] for r in report["results"])
    points = [(r["images_per_s"], r["top1_agreement"], r["name"]) for r in report["results"]
              if r["batch_size"] == largest and r["top1_agreement"] is not None]
    return figures.bench(series, points, largest)

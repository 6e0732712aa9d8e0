"""Presenting a `vitgender bench` report: a header, a Markdown table and an SVG plot."""

from __future__ import annotations

from vitgender.reporting import figures


def header(report: dict) -> str:
    """The machine, its measured roofs and the workload: what every ratio below is relative to."""
    m, roofs = report["machine"], report["roofs"]["roofs"]
    measured = "; ".join(
        f"{arith} {r['gops']:.0f} GOP/s ({r['library']}, {r['shape']} GEMM)" for arith, r in roofs.items()
    )
    signed = report["roofs"]["measured"]["vit_mlp"].get("int8_s8s8", {}).get("onnxruntime")
    if signed:  # why quantized artifacts take uint8 activations
        measured += f" (onnxruntime int8 x int8: {signed:.0f} GOP/s)"
    if report["roofs"].get("int8_saturates"):
        measured += (
            "\nonnxruntime's uint8 x int8 GEMM saturates on this CPU (no VNNI: 16-bit pair sums), "
            "so its int8 artifacts can answer differently here: validate them on this CPU"
        )
    return (
        f"machine: {m['cpu']}, {m['cores']} cores, ISA flags: {' '.join(m['isa']) or 'none detected'}; "
        f"threads {report['threads']}\nmeasured roofs: {measured}\n"
        f"{report['gflop_per_image']} GFLOP/image; top-1 agreement with PyTorch on the "
        f"{report['reference']['images']} '{report['reference']['set']}' reference faces"
    )


def table(report: dict) -> str:
    lines = [
        "| candidate | computes in | batch | images/s | p50 ms | p90 ms | × PyTorch | GOP/s | % of roof | "
        "top-1 agreement | RSS MB | MB on disk | load s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['name']}{' (peer)' if r.get('peer') else ''} | {r['precision']} | {r['batch_size']} | {r['images_per_s']:.1f} | {r['p50_ms']:.1f} | "
            f"{r['p90_ms']:.1f} | {r['ratio_vs_torch']:.2f} | {r['gflops']:.0f} | "
            f"{r['pct_of_roof']:.0f}% of {r['arithmetic']} | {r['top1_agreement']:.1%} | {r['peak_rss_mb']:.0f} | "
            f"{r['bytes'] / 2**20:.1f} | {r['load_seconds']:.1f} |"
        )
    return "\n".join(lines)


def breakdown_table(report: dict) -> str:
    """Where each candidate's time per image goes at the largest batch: its matrix products at the
    measured roof against the rest, and, where the engine has a profiler, the rest by kind of op."""
    from vitgender.runtimes.profiling import KINDS

    largest = max(r["batch_size"] for r in report["results"])
    rows = [r for r in report["results"] if r["batch_size"] == largest]
    kinds = [k for k in KINDS if any(k in r["breakdown"].get("kinds_ms", {}) for r in rows)]
    lines = [
        f"Where the time goes at batch {largest}, ms per image: the matrix products as they would run at "
        "the measured roof, the rest outside it, and each kind of op's share of the engine's own profile "
        "scaled to the timed ms (— where the engine has no profiler here)",
        "",
        "| candidate | computes in | ms/image | matrix products at roof | outside that | profiled by | "
        "matrix products at % of roof | " + " | ".join(kinds) + " |",
        "|---|---|---|---|---|---|---|" + "---|" * len(kinds),
    ]
    for r in rows:
        b = r["breakdown"]
        measured = b.get("kinds_ms", {})
        efficiency = b.get("matmul_pct_of_roof")
        cells = [f"{measured[k]:.2f}" if k in measured else "—" for k in kinds]
        lines.append(
            f"| {r['name']}{' (peer)' if r.get('peer') else ''} | {r['arithmetic']} | {b['ms_per_image']:.2f} | "
            f"{b['matmul_ms_at_roof']:.2f} | {b['outside_roof_ms']:.2f} | {b['profiler'] or '—'} | "
            f"{f'{efficiency:.0f}%' if efficiency is not None else '—'} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def plot_svg(report: dict) -> str:
    """One standalone SVG: images/s per batch size and % of roof, one row per candidate, fastest first."""
    largest = max(r["batch_size"] for r in report["results"])
    at_largest = {r["name"]: r for r in report["results"] if r["batch_size"] == largest}
    names = sorted(at_largest, key=lambda n: at_largest[n]["images_per_s"])
    throughput = {n: {r["batch_size"]: r["images_per_s"] for r in report["results"] if r["name"] == n} for n in names}
    roof = {
        n: (at_largest[n]["pct_of_roof"], at_largest[n]["arithmetic"], at_largest[n]["top1_agreement"]) for n in names
    }
    return figures.bench(names, throughput, roof, largest)

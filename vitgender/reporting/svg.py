"""Tiny inline-SVG charts, so HTML reports are self-contained (no JS, no network, no matplotlib)."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

WIDTH, HEIGHT, PAD = 420, 220, 36


def _frame(body: str, title: str, x_label: str, y_label: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" role="img" '
        f'aria-label="{escape(title)}"><title>{escape(title)}</title>'
        f'<rect x="{PAD}" y="10" width="{WIDTH - PAD - 10}" height="{HEIGHT - PAD - 10}" fill="#fafafa" stroke="#ccc"/>'
        f'{body}<text x="{WIDTH / 2}" y="{HEIGHT - 4}" font-size="11" text-anchor="middle">{escape(x_label)}</text>'
        f'<text x="10" y="{HEIGHT / 2}" font-size="11" transform="rotate(-90 10 {HEIGHT / 2})" '
        f'text-anchor="middle">{escape(y_label)}</text></svg>'
    )


def _x(value: float, low: float, high: float) -> float:
    return PAD + (value - low) / ((high - low) or 1) * (WIDTH - PAD - 10)


def _y(value: float, low: float, high: float) -> float:
    return HEIGHT - PAD - (value - low) / ((high - low) or 1) * (HEIGHT - PAD - 10)


def bars(labels: Sequence[str], values: Sequence[float], title: str, y_label: str = "accuracy",
         low: float = 0.0, high: float = 1.0, reference: float | None = None) -> str:
    n = max(len(values), 1)
    width = (WIDTH - PAD - 10) / n
    body = []
    for i, (label, value) in enumerate(zip(labels, values)):
        top = _y(max(min(value, high), low), low, high)
        body.append(f'<rect x="{PAD + i * width + 2:.1f}" y="{top:.1f}" width="{max(width - 4, 1):.1f}" '
                    f'height="{HEIGHT - PAD - top:.1f}" fill="#4c78a8"><title>{escape(label)}: {value:.4f}</title></rect>')
        if n <= 16:
            body.append(f'<text x="{PAD + (i + 0.5) * width:.1f}" y="{HEIGHT - PAD + 11}" font-size="8" '
                        f'text-anchor="middle">{escape(label[:12])}</text>')
    if reference is not None:
        y = _y(reference, low, high)
        body.append(f'<line x1="{PAD}" x2="{WIDTH - 10}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e45756" stroke-dasharray="4"/>')
    body.append(f'<text x="{PAD - 3}" y="14" font-size="9" text-anchor="end">{high:g}</text>'
                f'<text x="{PAD - 3}" y="{HEIGHT - PAD}" font-size="9" text-anchor="end">{low:g}</text>')
    return _frame("".join(body), title, "", y_label)


def scatter(xs: Sequence[float], ys: Sequence[float], title: str, x_label: str, y_label: str) -> str:
    body = [f'<line x1="{_x(0, 0, 1):.1f}" y1="{_y(0, 0, 1):.1f}" x2="{_x(1, 0, 1):.1f}" y2="{_y(1, 0, 1):.1f}" stroke="#bbb"/>']
    body += [f'<circle cx="{_x(x, 0, 1):.1f}" cy="{_y(y, 0, 1):.1f}" r="2.5" fill="#4c78a8" fill-opacity="0.7"/>'
             for x, y in zip(xs, ys)]
    return _frame("".join(body), title, x_label, y_label)


def histogram(edges: Sequence[float], counts: Sequence[int], title: str, x_label: str) -> str:
    top = max(max(counts, default=0), 1)
    body = []
    for i, count in enumerate(counts):
        x0, x1 = _x(edges[i], edges[0], edges[-1]), _x(edges[i + 1], edges[0], edges[-1])
        y = _y(count, 0, top)
        body.append(f'<rect x="{x0:.1f}" y="{y:.1f}" width="{max(x1 - x0 - 1, 1):.1f}" height="{HEIGHT - PAD - y:.1f}" '
                    f'fill="#72b7b2"><title>[{edges[i]:.1f}, {edges[i + 1]:.1f}): {count}</title></rect>')
    body.append(f'<text x="{PAD}" y="{HEIGHT - PAD + 11}" font-size="9">{edges[0]:g}</text>'
                f'<text x="{WIDTH - 10}" y="{HEIGHT - PAD + 11}" font-size="9" text-anchor="end">{edges[-1]:.1f}</text>')
    return _frame("".join(body), title, x_label, "count")


def reliability(bins: Sequence[dict], title: str) -> str:
    body = [f'<line x1="{_x(0, 0, 1):.1f}" y1="{_y(0, 0, 1):.1f}" x2="{_x(1, 0, 1):.1f}" y2="{_y(1, 0, 1):.1f}" stroke="#bbb"/>']
    for b in bins:
        if b["n"]:
            x0, x1 = _x(b["low"], 0, 1), _x(b["high"], 0, 1)
            y = _y(b["accuracy"], 0, 1)
            body.append(f'<rect x="{x0:.1f}" y="{y:.1f}" width="{x1 - x0 - 1:.1f}" height="{HEIGHT - PAD - y:.1f}" '
                        f'fill="#4c78a8" fill-opacity="0.8"><title>conf {b["low"]:.1f}-{b["high"]:.1f}: '
                        f'acc {b["accuracy"]:.3f} (n={b["n"]})</title></rect>')
    return _frame("".join(body), title, "confidence", "accuracy")


PALETTE = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#eeca3b", "#b279a2", "#ff9da6", "#9d755d",
           "#bab0ac", "#1f77b4")


def lines(series: dict[str, Sequence[tuple[float, float]]], title: str, x_label: str, y_label: str) -> str:
    xs = [x for pts in series.values() for x, _ in pts] or [0, 1]
    ys = [y for pts in series.values() for _, y in pts] or [0, 1]
    x_lo, x_hi, y_hi = min(xs), max(xs), max(ys) * 1.05
    body = []
    for i, (name, pts) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        path = " ".join(f"{_x(x, x_lo, x_hi):.1f},{_y(y, 0, y_hi):.1f}" for x, y in sorted(pts))
        body.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        body.append(f'<text x="{WIDTH - 12}" y="{22 + 11 * i}" font-size="9" text-anchor="end" fill="{color}">'
                    f'{escape(name)}</text>')
    body.append(f'<text x="{PAD - 3}" y="14" font-size="9" text-anchor="end">{y_hi:.0f}</text>')
    return _frame("".join(body), title, x_label, y_label)


def labelled_scatter(points: Sequence[tuple[float, float, str]], title: str, x_label: str, y_label: str) -> str:
    if not points:
        return _frame("", title, x_label, y_label)
    x_hi = max(p[0] for p in points) * 1.1
    y_lo = min(min(p[1] for p in points) - 0.01, 0.95)
    body = []
    for i, (x, y, name) in enumerate(points):
        color = PALETTE[i % len(PALETTE)]
        cx, cy = _x(x, 0, x_hi), _y(y, y_lo, 1.0)
        body.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="4" fill="{color}"/>'
                    f'<text x="{cx + 5:.1f}" y="{cy - 4:.1f}" font-size="8">{escape(name)}</text>')
    body.append(f'<text x="{PAD - 3}" y="{HEIGHT - PAD}" font-size="9" text-anchor="end">{y_lo:.2f}</text>')
    return _frame("".join(body), title, x_label, y_label)


def page(charts: Sequence[str]) -> str:
    """Several charts side by side in one standalone SVG file."""
    inner = "".join(f'<g transform="translate({i * (WIDTH + 10)},0)">{c}</g>' for i, c in enumerate(charts))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{len(charts) * (WIDTH + 10)}" height="{HEIGHT}">'
            f'<rect width="100%" height="100%" fill="white"/>{inner}</svg>')

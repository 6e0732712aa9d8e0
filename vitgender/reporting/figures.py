"""Figures for the HTML reports and the benchmark plot, drawn with matplotlib as inline SVG.

Each function takes plain data and returns an `<svg>` string, so a report stays one
self-contained file (no scripts, no network).
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # no display; set before pyplot is imported anywhere in this process
import matplotlib.pyplot as plt  # noqa: E402

SMALL = (4.6, 3.0)


def _svg(fig) -> str:
    buffer = io.StringIO()
    fig.tight_layout()
    fig.savefig(buffer, format="svg")
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def histogram(edges: Sequence[float], counts: Sequence[int], title: str, x_label: str) -> str:
    fig, ax = plt.subplots(figsize=SMALL)
    ax.stairs(counts, edges, fill=True, color="#4c78a8")
    ax.set(title=title, xlabel=x_label, ylabel="logits")
    return _svg(fig)


def scatter(x: Sequence[float], y: Sequence[float], title: str, x_label: str, y_label: str) -> str:
    fig, ax = plt.subplots(figsize=(3.4, 3.2))
    ax.plot([0, 1], [0, 1], color="#bbb", linewidth=1)
    ax.scatter(x, y, s=9, color="#4c78a8")
    ax.set(title=title, xlabel=x_label, ylabel=y_label, xlim=(0, 1), ylim=(0, 1))
    return _svg(fig)


def deltas(labels: Sequence[str], values: Sequence[float], counts: Sequence[int], title: str) -> str:
    """Horizontal bars around a zero line, each group named with its n."""
    fig, ax = plt.subplots(figsize=(5.2, 0.32 * len(labels) + 1.1))
    colors = ["#b03a2e" if v < 0 else "#2e7d32" for v in values]
    ax.barh([f"{name} (n={n})" for name, n in zip(labels, counts)], [100 * v for v in values], color=colors)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.invert_yaxis()
    ax.set(title=title, xlabel="accuracy change, percentage points (artifact - PyTorch)")
    return _svg(fig)


def accuracy_bars(labels: Sequence[str], accuracy: Sequence[float], ci: Sequence[tuple[float, float]],
                  counts: Sequence[int], overall: float | None, title: str) -> str:
    """Accuracy per group with its 95% interval as an error bar and the overall accuracy as a line."""
    fig, ax = plt.subplots(figsize=(5.6, 0.32 * len(labels) + 1.1))
    low = [100 * (a - lo) for a, (lo, _) in zip(accuracy, ci)]
    high = [100 * (hi - a) for a, (_, hi) in zip(accuracy, ci)]
    ax.barh([f"{name} (n={n})" for name, n in zip(labels, counts)], [100 * a for a in accuracy],
            xerr=[low, high], color="#4c78a8", ecolor="#333", capsize=2)
    if overall is not None:
        ax.axvline(100 * overall, color="#b03a2e", linewidth=1, label=f"overall {overall:.1%}")
        ax.legend(loc="lower right", fontsize=8)
    ax.invert_yaxis()
    ax.set(title=title, xlabel="accuracy, % (bars: 95% Wilson interval)", xlim=(min([50, *(100 * a for a in accuracy)]), 100))
    return _svg(fig)


def reliability(bins: Sequence[dict], title: str) -> str:
    fig, ax = plt.subplots(figsize=(3.6, 3.4))
    ax.plot([0, 1], [0, 1], color="#bbb", linewidth=1, label="perfectly calibrated")
    used = [b for b in bins if b["n"]]
    ax.plot([b["confidence"] for b in used], [b["accuracy"] for b in used], marker="o", color="#4c78a8",
            label="this model")
    ax.set(title=title, xlabel="confidence of the top answer", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=8)
    return _svg(fig)


def stage_curve(stages: Sequence[dict], title: str) -> str:
    """Relative error of each stage against PyTorch, on a log scale, in forward order."""
    fig, ax = plt.subplots(figsize=(6.4, 3.0))
    names = [s["stage"] for s in stages]
    ax.semilogy(range(len(names)), [max(s["relative_l2"], 1e-9) for s in stages], marker=".", color="#4c78a8")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
    ax.set(title=title, ylabel="relative L2 error vs PyTorch")
    return _svg(fig)


def bench(series: dict[str, list[tuple[float, float]]], points: Sequence[tuple[float, float, str]],
          largest_batch: int) -> str:
    """`vitgender bench --plot`: images/s per batch size, and top-1 agreement against speed."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12.0, 4.4))
    for name, line in series.items():
        left.plot([p[0] for p in line], [p[1] for p in line], marker="o", label=name)
    left.set(title="images/s vs batch size", xlabel="batch size", ylabel="images/s")
    left.legend(fontsize=6, ncol=2)
    for x, y, name in points:
        right.scatter([x], [y], s=14)
        right.annotate(name, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    right.set(title=f"top-1 agreement vs images/s (batch {largest_batch})", xlabel="images/s", ylabel="top-1 agreement")
    return _svg(fig)

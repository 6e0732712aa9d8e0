"""Figures for the HTML reports and the benchmark plot, drawn with matplotlib as inline SVG.

Each function takes plain data and returns an `<svg>` string, so a report stays one
self-contained file (no scripts, no network).
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # no display; set before pyplot is imported anywhere in this process
import matplotlib.pyplot as plt

SMALL = (4.6, 3.0)


def _svg(fig) -> str:
    buffer = io.StringIO()
    fig.tight_layout()
    fig.savefig(buffer, format="svg")
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg") :]


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
    ax.barh(
        [f"{name} (n={n})" for name, n in zip(labels, counts, strict=False)], [100 * v for v in values], color=colors
    )
    ax.axvline(0, color="black", linewidth=0.8)
    ax.invert_yaxis()
    ax.set(title=title, xlabel="accuracy change, percentage points (artifact - PyTorch)")
    return _svg(fig)


def accuracy_bars(
    labels: Sequence[str],
    accuracy: Sequence[float],
    ci: Sequence[tuple[float, float]],
    counts: Sequence[int],
    overall: float | None,
    title: str,
) -> str:
    """Accuracy per group with its 95% interval as an error bar and the overall accuracy as a line."""
    fig, ax = plt.subplots(figsize=(5.6, 0.32 * len(labels) + 1.1))
    low = [100 * (a - lo) for a, (lo, _) in zip(accuracy, ci, strict=False)]
    high = [100 * (hi - a) for a, (_, hi) in zip(accuracy, ci, strict=False)]
    ax.barh(
        [f"{name} (n={n})" for name, n in zip(labels, counts, strict=False)],
        [100 * a for a in accuracy],
        xerr=[low, high],
        color="#4c78a8",
        ecolor="#333",
        capsize=2,
    )
    if overall is not None:
        ax.axvline(100 * overall, color="#b03a2e", linewidth=1, label=f"overall {overall:.1%}")
        ax.legend(loc="lower right", fontsize=8)
    ax.invert_yaxis()
    ax.set(
        title=title,
        xlabel="accuracy, % (bars: 95% Wilson interval)",
        xlim=(min([50, *(100 * a for a in accuracy)]), 100),
    )
    return _svg(fig)


def reliability(bins: Sequence[dict], title: str) -> str:
    fig, ax = plt.subplots(figsize=(3.6, 3.4))
    ax.plot([0, 1], [0, 1], color="#bbb", linewidth=1, label="perfectly calibrated")
    used = [b for b in bins if b["n"]]
    ax.plot(
        [b["confidence"] for b in used], [b["accuracy"] for b in used], marker="o", color="#4c78a8", label="this model"
    )
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


def bench(
    names: Sequence[str],
    throughput: dict[str, dict[int, float]],
    roof: dict[str, tuple[float, str, float]],
    largest_batch: int,
) -> str:
    """`vitgender bench --plot`: horizontal bars, one row per candidate (readable with 20+).

    Left: images/s at each batch size. Right: % of the measured roof for the candidate's
    arithmetic at the largest batch, annotated with its top-1 agreement with PyTorch.
    """
    import numpy as np

    rows = np.arange(len(names))
    batches = sorted({b for per in throughput.values() for b in per})
    height = 0.8 / len(batches)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12.0, 1.2 + 0.32 * len(names)), sharey=True)
    for i, batch in enumerate(batches):
        left.barh(
            rows + (i - (len(batches) - 1) / 2) * height,
            [throughput[n].get(batch, 0) for n in names],
            height=height,
            label=f"batch {batch}",
        )
    left.set(yticks=rows, title="images/s", xlabel="images/s")
    left.set_yticklabels(names, fontsize=7)
    left.legend(fontsize=7, loc="lower right")
    colours = {"fp32": "tab:blue", "fp16": "tab:orange", "int8": "tab:green"}
    right.barh(rows, [roof[n][0] for n in names], color=[colours.get(roof[n][1], "tab:gray") for n in names])
    for row, name in zip(rows, names, strict=False):
        right.annotate(
            f"{roof[name][1]}, agreement {roof[name][2]:.0%}",
            (roof[name][0], row),
            fontsize=6,
            xytext=(3, -2),
            textcoords="offset points",
        )
    right.set(title=f"% of the measured roof for its arithmetic (batch {largest_batch})", xlabel="% of roof")
    right.set_xlim(0, max(100.0, 1.35 * max(roof[n][0] for n in names)))
    return _svg(fig)


def cell_maps(cells: Sequence[dict], title: str) -> str:
    """`evaluate --explain`: per cell of a group table, the average map of right and of wrong answers
    (patch grid, brighter = more of the decision rests there), with how many images each averages."""
    import numpy as np

    fig, axes = plt.subplots(2, len(cells), figsize=(1.15 * len(cells) + 0.8, 3.0), squeeze=False)
    for column, cell in enumerate(cells):
        for row, side in enumerate(("correct", "wrong")):
            ax = axes[row][column]
            ax.set_xticks([])
            ax.set_yticks([])
            entry = cell[side]
            if entry["map"] is not None:
                ax.imshow(np.asarray(entry["map"]), cmap="inferno")
            ax.set_xlabel(f"n={entry['n']}", fontsize=6)
            if column == 0:
                ax.set_ylabel(side, fontsize=7)
        axes[0][column].set_title(" ".join(cell["group"].values()), fontsize=6)
    fig.suptitle(title, fontsize=8)
    return _svg(fig)

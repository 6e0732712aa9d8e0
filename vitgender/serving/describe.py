"""What the demo page says about the model it serves: the model card's title, or neutral words.

The page must not call a 5-class scene classifier a gender classifier: the task description is
the first `# ` heading of the model card (README.md next to the checkpoint or artifact), or
"Image classifier with labels ...". The responsible-use note is shown only where the labels are
the default model's (female/male).
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_LABELS = ("female", "male")


def card_title(model: str | Path | None) -> str | None:
    """The first level-1 heading of the model card, after any YAML front matter."""
    if model is None:
        from vitgender.checkpoint import DEFAULT_MODEL_DIR

        model = DEFAULT_MODEL_DIR
    path = Path(model)
    card = path / "README.md" if path.is_dir() else path.parent / "README.md"
    try:
        lines = card.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    if lines and lines[0].strip() == "---":
        closing = next((i for i, line in enumerate(lines[1:], 1) if line.strip() == "---"), len(lines))
        lines = lines[closing + 1 :]
    title = next((line[2:].strip() for line in lines if line.startswith("# ")), None)
    return title[:200] if title else None


def describe(model: str | Path | None, labels: tuple[str, ...]) -> dict:
    shown = ", ".join(labels[:10]) + (f" and {len(labels) - 10} more" if len(labels) > 10 else "")
    return {
        "task": card_title(model) or f"Image classifier with {len(labels)} labels: {shown}",
        "labels": list(labels),
        "responsible_use": sorted(labels) == sorted(DEFAULT_LABELS),
    }

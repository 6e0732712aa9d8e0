"""What a model does, in the words its reports use: from its model card, or a neutral default.

Reports, sheets and help texts must not call a user's five-race or age model a gender
classifier. The task line comes from the checkpoint's own card (the first heading of its
README.md, as on the HF hub) or, without one, names the labels; the responsible-use text that
the default model's card requires appears only where the labels are the default model's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from vitgender.evaluation.metrics import is_default_labels

RESPONSIBLE_USE = (
    "Labels are perceived binary gender presentation, not identity: non-binary and transgender "
    "people are misclassified by such systems by construction. Not for surveillance, access control "
    "or automated decisions about people; see the model card."
)
_MAX_TITLE = 200


def card_title(directory: Path) -> str | None:
    """The first `# heading` of a checkpoint's README.md (after any YAML front matter), or None."""
    try:
        text = (Path(directory) / "README.md").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    if text.startswith("---"):
        end = text.find("\n---", 3)
        text = text[end + 4 :] if end != -1 else ""
    for line in text.splitlines():
        if line.startswith("# "):
            title = re.sub(r"[`*_]", "", line[2:]).strip()
            return title[:_MAX_TITLE] or None
    return None


def checkpoint_of(source: str | Path | None) -> Path | None:
    """The checkpoint folder behind a model argument: itself, the embedded model for None, or for an
    exported artifact the checkpoint its export manifest names (None when unknown)."""
    from vitgender.checkpoint import DEFAULT_MODEL_DIR

    if source is None:
        return DEFAULT_MODEL_DIR
    path = Path(source)
    if (path / "config.json").is_file():
        return path
    for folder in (path.parent, path.parent.parent):
        try:
            manifest = json.loads((folder / "manifest.json").read_text())
            return Path(manifest["model"]["source"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def describe_task(source: str | Path | None, labels: Sequence[str]) -> dict:
    """{"text", "from", "responsible_use"}: the model card's title or a neutral line naming the labels,
    and the responsible-use text for the default model's labels (None otherwise)."""
    directory = checkpoint_of(source)
    title = card_title(directory) if directory is not None else None
    text = title or f"image classifier with {len(labels)} labels: {', '.join(labels)}"
    return {
        "text": text,
        "from": "model card" if title else "labels",
        "responsible_use": RESPONSIBLE_USE if is_default_labels(labels) else None,
    }

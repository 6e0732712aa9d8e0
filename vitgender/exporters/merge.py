"""How an export updates an earlier one in the same folder (the folder policy itself is `vitgender.output_folders`).

- An existing export of the same checkpoint is merged: artifacts built now replace theirs, the
  others (and any other files, such as validation reports) are carried over by hard link.
- An export of another model (or of other weights) is replaced only with `overwrite`.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from vitgender.errors import UsageError
from vitgender.manifest import MANIFEST, read_manifest

DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def is_export(folder: Path) -> bool:
    """An export written before output folders carried a marker: it holds a manifest."""
    return (Path(folder) / MANIFEST).is_file()


def existing_export(out: Path, source: Path, sha256: dict | None, overwrite: bool) -> dict | None:
    """The manifest of an earlier export of the same checkpoint in `out` to merge with, if any.

    Only an export of the same checkpoint *content* merges: artifacts of other weights must not
    sit beside the new ones under one manifest. Folders that are not exports are judged by
    `output_folders.check_target`.
    """
    if overwrite or not out.is_dir() or not is_export(out):
        return None
    existing = read_manifest(out)
    model = existing["model"]
    same_place = Path(str(model.get("source"))).resolve() == source.resolve()
    if not same_place or model.get("checkpoint_sha256") != sha256:
        what = "another model" if not same_place else "other weights (SHA256SUMS differ)"
        raise UsageError(
            str(out),
            f"holds an export of {what} ({model.get('source')}); choose another --out, " "or --overwrite to replace it",
        )
    return existing


def carry_over(existing_dir: Path, scratch: Path, rebuilt: list[str]) -> None:
    """Hard-link (or copy) every file of the existing export that this run did not rebuild.

    `rebuilt` are the artifact paths written now; nothing below them is carried (a rebuilt
    SavedModel must not inherit the old one's files).
    """
    for source in sorted(existing_dir.rglob("*")):
        relative = source.relative_to(existing_dir)
        target = scratch / relative
        if source.is_dir() or target.exists() or relative.as_posix() == MANIFEST:
            continue
        if any(relative.is_relative_to(path) for path in rebuilt):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)

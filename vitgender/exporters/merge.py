"""Where an export is written: a private scratch folder beside the target, published in one swap.

- The scratch folder `.NAME.partial-XXXX` records its owner (pid and process start time); the
  next export into the same parent sweeps scratch folders whose owner is gone (a killed
  export), and says so.
- An existing export of the same checkpoint is merged: artifacts built now replace theirs, the
  others (and any other files, such as validation reports) are carried over by hard link. An
  export of another model, or a folder that is not an export, is refused unless `overwrite`.
- Folders get the user's umask (mkdtemp's private 0700 is for the scratch phase only).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

from vitgender.errors import UsageError
from vitgender.manifest import MANIFEST, read_manifest

OWNER = ".owner"
DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _owner_alive(scratch: Path) -> bool:
    try:
        owner = json.loads((scratch / OWNER).read_text())
        pid = int(owner["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return True  # not ours to judge: leave it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return owner.get("started") in (None, _start_time(pid))


def sweep_stale(out: Path) -> list[Path]:
    """Remove scratch folders of earlier exports to `out` whose process is gone; warn for each."""
    swept = []
    for candidate in sorted(out.parent.glob(f".{out.name}.partial-*")):
        if candidate.is_dir() and not _owner_alive(candidate):
            shutil.rmtree(candidate, ignore_errors=True)
            warnings.warn(f"removed {candidate}: left by an export that was killed", stacklevel=2)
            swept.append(candidate)
    return swept


def check_target(out: Path, source: Path, sha256: dict | None, overwrite: bool) -> dict | None:
    """Fail fast on a target we must not touch; return the existing manifest to merge with, if any.

    Only an export of the same checkpoint *content* merges: artifacts of other weights must not
    sit beside the new ones under one manifest.
    """
    if not out.exists() or overwrite:
        return None
    if not out.is_dir():
        raise UsageError(str(out), "exists and is not a folder")
    if not (out / MANIFEST).is_file():
        if any(out.iterdir()):
            raise UsageError(str(out), "exists and is not a vitgender export; choose another --out, or --overwrite")
        return None
    existing = read_manifest(out)
    model = existing["model"]
    same_place = Path(str(model.get("source"))).resolve() == source.resolve()
    if not same_place or model.get("checkpoint_sha256") != sha256:
        what = "another model" if not same_place else "other weights (SHA256SUMS differ)"
        raise UsageError(str(out), f"holds an export of {what} ({model.get('source')}); choose another --out, "
                                   "or --overwrite to replace it")
    return existing


def make_scratch(out: Path) -> Path:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent)).resolve()
    except OSError as exc:
        raise UsageError(str(out), f"cannot write there ({exc.strerror})") from None
    (scratch / OWNER).write_text(json.dumps({"pid": os.getpid(), "started": _start_time(os.getpid())}))
    return scratch


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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


def publish(scratch: Path, out: Path) -> None:
    """Give the folder the user's permissions and swap it into place; the old one is removed last."""
    (scratch / OWNER).unlink(missing_ok=True)
    mode = 0o777 & ~_umask()
    for folder in [scratch, *(p for p in scratch.rglob("*") if p.is_dir())]:
        folder.chmod(mode)
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / "export")
    os.replace(scratch, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

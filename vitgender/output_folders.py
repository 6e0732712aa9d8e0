"""How every command writes an output folder: whole or not at all, and never over a user's files.

One policy for `export`, `explain`, `train` (and one for single files, `classify -o`,
`evaluate --json/--html`):

- The target is checked *before any work*: an absent or empty folder is fine; a folder this
  command wrote earlier (it holds the marker file `.vitgender-output.json` naming the command,
  or, for folders written before the marker existed, the command's own recogniser) is replaced
  only with `--overwrite` (export instead *updates* an export of the same checkpoint); anything
  else is refused with exit 2, **with or without `--overwrite`**, so a typo such as `--out ~`
  cannot delete anything.
- The output is written into a hidden scratch folder beside the target, `.NAME.partial-<random>`,
  which records its owner (pid and process start time), and renamed onto the target only when
  whole. The previous folder is moved aside (`.NAME.old-<random>`) and removed last.
- A killed run leaves only its scratch folder; the next run of any command writing into the
  same parent folder removes every scratch folder whose owner is gone, and says so.
- Folders get the user's umask (mkdtemp's private 0700 is for the scratch phase only).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from vitgender.errors import UsageError

MARKER = ".vitgender-output.json"
OWNER = ".owner"
SCRATCH_KINDS = ("partial", "old")  # .NAME.partial-<random> while writing, .NAME.old-<random> while swapping


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
        return True  # no owner record: not ours to judge, leave it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return owner.get("started") in (None, _start_time(pid))


def _claim(folder: Path) -> None:
    (folder / OWNER).write_text(json.dumps({"pid": os.getpid(), "started": _start_time(os.getpid())}))


def sweep_stale(parent: Path) -> list[Path]:
    """Remove every scratch folder in `parent` whose owning process is gone (a killed run); warn for each."""
    swept = []
    for kind in SCRATCH_KINDS:
        for candidate in sorted(Path(parent).glob(f".*.{kind}-*")):
            if candidate.is_dir() and not candidate.is_symlink() and not _owner_alive(candidate):
                shutil.rmtree(candidate, ignore_errors=True)
                warnings.warn(f"removed {candidate}: left by a vitgender run that was killed", stacklevel=2)
                swept.append(candidate)
    return swept


def written_by(folder: Path) -> str | None:
    """The command named by the folder's marker file, or None."""
    try:
        command = json.loads((Path(folder) / MARKER).read_text()).get("command")
    except (OSError, ValueError, AttributeError):
        return None
    return command if isinstance(command, str) else None


def check_target(
    out: Path,
    command: str,
    *,
    overwrite: bool = False,
    recognise: Callable[[Path], bool] | None = None,
    updates: bool = False,
) -> bool:
    """Refuse (exit 2) a target this command must not touch; return whether it holds the command's own output.

    `recognise` identifies outputs written before the marker file existed. `updates`: the
    command merges into its own earlier output (export), so that needs no `--overwrite`.
    """
    out = Path(out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise UsageError(str(out), "exists and is not a folder")
    if not out.exists() or not any(out.iterdir()):
        return False
    own = written_by(out) == command or (written_by(out) is None and recognise is not None and recognise(out))
    if not own:
        raise UsageError(
            str(out),
            f"folder exists and is not empty, and is not an earlier 'vitgender {command}' "
            "output: choose another --out (--overwrite never deletes other files)",
        )
    if not overwrite and not updates:
        raise UsageError(str(out), f"holds an earlier 'vitgender {command}' output; --overwrite replaces it")
    return True


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_scratch(out: Path) -> Path:
    """A private scratch folder beside `out`, with an owner record so a later run can tell it was abandoned."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent)).resolve()
    except OSError as exc:
        raise UsageError(str(out), f"cannot write there ({exc.strerror})") from None
    _claim(scratch)
    return scratch


def publish(scratch: Path, out: Path, command: str) -> None:
    """Mark the folder as this command's output, give it the user's permissions and swap it into place."""
    (scratch / OWNER).unlink(missing_ok=True)
    (scratch / MARKER).unlink(missing_ok=True)  # may be a hard link into the folder it replaces (export's merge)
    (scratch / MARKER).write_text(json.dumps({"command": command}) + "\n")
    mode = 0o777 & ~_umask()
    for folder in [scratch, *(p for p in scratch.rglob("*") if p.is_dir())]:
        folder.chmod(mode)
    if not out.exists():
        os.replace(scratch, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    _claim(old)
    os.replace(out, old / "previous")
    try:
        os.replace(scratch, out)
    except OSError:
        os.replace(old / "previous", out)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_dir(
    out: Path,
    command: str,
    *,
    overwrite: bool = False,
    recognise: Callable[[Path], bool] | None = None,
    updates: bool = False,
) -> Iterator[Path]:
    """Yield a scratch folder that replaces `out` when the block succeeds; see the module docstring.

    The target is checked on entry, before the block's work. An OSError writing into the
    scratch folder (a full disk, a vanished folder) becomes one line and exit 2; nothing is left
    behind. Errors about other files pass through unchanged.
    """
    out = Path(out).absolute()
    check_target(out, command, overwrite=overwrite, recognise=recognise, updates=updates)
    if out.parent.is_dir():
        sweep_stale(out.parent)
    scratch = make_scratch(out)
    try:
        try:
            yield scratch
        except OSError as exc:
            if exc.filename is not None and not Path(exc.filename).absolute().is_relative_to(scratch):
                raise
            raise UsageError(str(out), f"cannot write ({exc.strerror or exc})") from None
        publish(scratch, out, command)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def check_file_target(path: Path) -> Path:
    """Refuse (exit 2) a report file that cannot be written, before the work that fills it."""
    path = Path(path)
    if not path.parent.is_dir():
        raise UsageError(str(path), "output folder does not exist")
    if path.is_dir():
        raise UsageError(str(path), "is a folder, not a file")
    return path


@contextmanager
def atomic_file(path: Path | None) -> Iterator[IO[str]]:
    """A text file written to `.NAME.partial` and renamed into place when the block succeeds
    (None: sys.stdout), so a reader never sees half a report."""
    if path is None:
        yield sys.stdout
        return
    path = check_file_target(path)
    partial = path.with_name(f".{path.name}.partial")
    try:
        with partial.open("w") as handle:
            yield handle
        partial.replace(path)
    except OSError as exc:
        raise UsageError(str(path), f"cannot write ({exc.strerror or exc})") from None
    finally:
        partial.unlink(missing_ok=True)

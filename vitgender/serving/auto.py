"""`serve --model auto`: the fastest artifact of an export that is proven faithful and batch-invariant.

Serving batches strangers' images together, so an artifact qualifies only on evidence saved in the
export folder, never on its name:
- the parity gate passed for it (a `report.json` that `vitgender validate` wrote in a folder inside
  the export, `validation/` by default), with the same file (sha256) and the same runtime;
- its answers do not depend on the other images of a batch: the gate's batch probe changed no
  decision, and a dynamic int8 artifact must have measured exactly no change at all (ORT's takes
  its activation scales from the whole batch; XNNPACK's, in LiteRT and ExecuTorch, from each row);
- a throughput measured by `vitgender bench --artifacts DIR --json DIR/bench.json` on that file and
  runtime (peer rows such as OpenVINO bf16 included), at the largest measured batch size not above
  the server's `--max-batch-size`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from vitgender.errors import UsageError
from vitgender.precision import Precision

BENCH_FILE = "bench.json"


@dataclass(frozen=True)
class Choice:
    name: str  # the bench row (artifact, or ARTIFACT@RUNTIME for a peer row)
    runtime: str  # a runtime spec for open_runner, settings included
    path: Path
    images_per_s: float
    batch_size: int
    report: Path  # the validation report that passed it
    machine: dict  # where the bench measured it (compare with where it is served)


def _read(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(str(path), f"no {what}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(str(path), f"cannot read {what} ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise UsageError(str(path), f"not {what}")
    return data


def _faithful(export_dir: Path, hashes: dict[str, str]) -> dict[tuple[str, str], Path]:
    """(artifact, runtime) -> the report that passed it, batch-invariant, on the manifest's own file."""
    passed = {}
    for report in sorted(export_dir.glob("*/report.json")):
        for artifact in _read(report, "validation report").get("artifacts", []):
            metrics = artifact.get("metrics", {})
            if (
                artifact.get("passed")
                and hashes.get(artifact.get("name")) == artifact.get("sha256")
                and metrics.get("batch_flips") == 0
                and (
                    artifact.get("precision") != Precision.INT8_DYNAMIC.value
                    or metrics.get("batch_max_rel_logit_diff") == 0
                )
            ):
                passed.setdefault((artifact["name"], artifact.get("format", "")), report)
    return passed


def choose(export_dir: Path, max_batch_size: int) -> Choice:
    """The fastest qualifying (artifact, runtime) of `export_dir`; a usage error naming what is missing."""
    from vitgender.manifest import read_manifest

    export_dir = Path(export_dir)
    entries = {e["name"]: e for e in read_manifest(export_dir)["artifacts"]}
    faithful = _faithful(export_dir, {name: e.get("sha256", "") for name, e in entries.items()})
    if not faithful:
        raise UsageError(
            str(export_dir),
            "no artifact passed the parity gate batch-invariantly here; run 'vitgender validate "
            f"{export_dir}' (and with --runtime for peer engines, --report-dir inside the export)",
        )
    bench = _read(
        export_dir / BENCH_FILE,
        f"bench results (run 'vitgender bench --artifacts {export_dir} --json " f"{export_dir / BENCH_FILE}')",
    )
    rows = [r for r in bench.get("results", []) if r.get("name", "").partition("@")[0] in entries]
    sizes = sorted({r["batch_size"] for r in rows})
    if not sizes:
        raise UsageError(str(export_dir / BENCH_FILE), "measures none of this export's artifacts")
    size = max((s for s in sizes if s <= max_batch_size), default=sizes[0])
    ranked = []
    for row in rows:
        artifact = row["name"].partition("@")[0]
        report = faithful.get((artifact, row["runtime"]))
        if row["batch_size"] == size and report is not None and row.get("sha256") == entries[artifact].get("sha256"):
            ranked.append((row["images_per_s"], row, artifact, report))
    if not ranked:
        raise UsageError(
            str(export_dir / BENCH_FILE),
            f"no measured row at batch {size} is an artifact and runtime that passed the gate "
            "(validate and bench the same files with the same runtimes)",
        )
    speed, row, artifact, report = max(ranked, key=lambda r: r[0])
    return Choice(
        row["name"],
        row["runtime"],
        export_dir / entries[artifact]["path"],
        speed,
        size,
        report,
        bench.get("machine", {}),
    )

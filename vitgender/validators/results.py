"""What a validation run measured, before anything is compared: `RunResults` (polygraphy's RunResults).

`validate` is three steps: run every runner once on the same images (this module's data),
compare two runs (`validators.compare`, pure), judge and report. Keeping the raw outputs lets a
run be saved (`--save-outputs DIR`) and compared again later, on another machine or against
another runner, without running anything (`--load-outputs DIR`).

On disk: `results.json` (everything but arrays) and `outputs.npz` (logits and stage activations,
keyed `<runner>/logits` and `<runner>/stage/<name>`).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from vitgender.errors import UsageError

SCHEMA = 1


@dataclass
class RunResult:
    """One runner's outputs on the image set: logits, timing, and what was read off the artifact."""

    name: str  # "torch" for the reference, else the artifact's manifest name
    runtime: str
    precision: str
    labels: tuple[str, ...]
    logits: np.ndarray
    latency_ms_per_image: float
    path: str = ""
    sha256: str = ""
    calibration: dict | None = None
    batch: dict | None = None  # validators.batching.batch_variation of this runner
    stages: dict[str, np.ndarray] | None = None  # stage activations of the first images (localization)
    inventory: dict | None = None

    def meta(self) -> dict:
        data = {k: v for k, v in asdict(self).items() if k not in ("logits", "stages")}
        data["labels"] = list(self.labels)
        data["stage_names"] = list(self.stages) if self.stages else None
        return data


@dataclass
class ImageSet:
    """The images a run saw: their names (relative to the folder), a content hash and the labels if any."""

    folder: str
    names: list[str]
    sha256: str  # over the sorted per-file content hashes: the same faces under other names hash the same
    labels: list[str] | None = None  # ground truth per image (labelled runs)
    groups: list[dict] | None = None  # demographic attributes per image (labelled runs)
    note: str = ""  # e.g. why a run is unlabelled

    @property
    def count(self) -> int:
        return len(self.names)


@dataclass
class RunResults:
    model: dict  # the manifest's model entry
    images: ImageSet
    reference: RunResult
    runs: list[RunResult] = field(default_factory=list)

    def get(self, name: str) -> RunResult:
        for run in [self.reference, *self.runs]:
            if run.name == name:
                return run
        raise UsageError(name, f"no runner of that name in the saved outputs ({', '.join(r.name for r in self.runs)})")

    def save(self, directory: Path) -> Path:
        """Write results.json + outputs.npz into `directory` (created; replaced atomically if it holds an earlier save)."""
        directory = Path(directory)
        if directory.exists() and not (directory / "results.json").is_file() and any(directory.iterdir()):
            raise UsageError(str(directory), "not empty and not an earlier --save-outputs folder; choose another")
        directory.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        arrays = {}
        for run in [self.reference, *self.runs]:
            arrays[f"{run.name}/logits"] = run.logits
            for stage, value in (run.stages or {}).items():
                arrays[f"{run.name}/stage/{stage}"] = value
        np.savez_compressed(scratch / "outputs.npz", **arrays)
        (scratch / "results.json").write_text(
            json.dumps(
                {
                    "schema": SCHEMA,
                    "model": self.model,
                    "images": asdict(self.images),
                    "reference": self.reference.meta(),
                    "runs": [r.meta() for r in self.runs],
                },
                indent=2,
            )
            + "\n"
        )
        if directory.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old.", dir=directory.parent))
            os.rename(directory, old / "d")
            os.rename(scratch, directory)
            for name in ("results.json", "outputs.npz"):
                (old / "d" / name).unlink(missing_ok=True)
            (old / "d").rmdir()
            old.rmdir()
        else:
            os.rename(scratch, directory)
        return directory

    @classmethod
    def load(cls, directory: Path) -> RunResults:
        directory = Path(directory)
        try:
            meta = json.loads((directory / "results.json").read_text())
            arrays = np.load(directory / "outputs.npz", allow_pickle=False)
        except FileNotFoundError:
            raise UsageError(
                str(directory),
                "no saved outputs here (expected results.json and outputs.npz "
                "written by 'vitgender validate --save-outputs')",
            ) from None
        except (OSError, ValueError, json.JSONDecodeError) as exc:
            raise UsageError(str(directory), f"cannot read saved outputs ({type(exc).__name__})") from None
        if meta.get("schema") != SCHEMA:
            raise UsageError(
                str(directory), f"saved outputs of schema {meta.get('schema')}; this version reads {SCHEMA}"
            )

        def run(data: dict) -> RunResult:
            stage_names = data.pop("stage_names", None)
            stages = {s: arrays[f"{data['name']}/stage/{s}"] for s in stage_names} if stage_names else None
            return RunResult(
                **{**data, "labels": tuple(data["labels"])}, logits=arrays[f"{data['name']}/logits"], stages=stages
            )

        return cls(meta["model"], ImageSet(**meta["images"]), run(meta["reference"]), [run(r) for r in meta["runs"]])


def content_hash(paths: list[Path]) -> tuple[str, dict[Path, str]]:
    """sha256 over the sorted per-file sha256s (independent of names and order), and each file's own."""
    each = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}
    return hashlib.sha256("".join(sorted(each.values())).encode()).hexdigest(), each

"""Typed results of `vitgender validate`: every verdict is a `Check`, never a parsed message.

Renderers (JSON, Markdown, HTML, JUnit) read these objects; a JUnit test case is one `Check`,
so only checks that were actually performed (and so can fail) appear in a report.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vitgender.precision import Precision


@dataclass(frozen=True)
class Check:
    """One judged quantity: `value` against `budget` (None for checks without a number)."""

    name: str
    passed: bool
    value: float | int | str | None = None
    budget: float | None = None
    detail: str = ""  # a plain reason, shown when the check fails

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "passed": self.passed,
            "value": self.value,
            "budget": self.budget,
            "detail": self.detail,
        }


@dataclass
class ArtifactResult:
    """One artifact's comparison with PyTorch: its metrics, the checks they went through, and data for plots."""

    name: str
    format: str
    precision: Precision
    path: str
    sha256: str
    metrics: dict
    checks: list[Check]
    budget: dict[str, float]
    histogram: dict | None = None
    probabilities: dict | None = None  # per-image P(reference's top class), PyTorch and artifact: HTML plots only
    accuracy: dict | None = None
    group_deltas: list[dict] | None = None
    inventory: dict | None = None
    calibration: dict | None = None
    localization: dict | None = None  # per-stage error curve against PyTorch (validate --localize)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def failures(self) -> list[str]:
        return [check.detail for check in self.checks if not check.passed]

    def to_dict(self) -> dict:
        data = {
            "name": self.name,
            "format": self.format,
            "precision": self.precision.value,
            "path": self.path,
            "sha256": self.sha256,
            "passed": self.passed,
            "failures": self.failures,
            "checks": [c.to_dict() for c in self.checks],
            "budget": self.budget,
            "metrics": self.metrics,
            "histogram": self.histogram,
        }
        for key in ("accuracy", "group_deltas", "inventory", "calibration", "localization"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        if self.notes:
            data["notes"] = self.notes
        if any(c.name == "baseline" for c in self.checks):
            data["baseline_checked"] = True  # schema 1 had this flag before `checks` existed
        return data


@dataclass
class ValidationResult:
    artifact_dir: str
    model: dict
    images: dict
    torch: dict
    artifacts: list[ArtifactResult]
    machine: dict = field(default_factory=dict)  # CPU model, ISA flags, runtime versions
    notes: list[str] = field(default_factory=list)

    # 2: per-artifact `checks` and `localization`; statistical metrics; no cosine for two classes.
    # 3: images.sha256 (content) and `machine`; scale-free metrics (*_rel_logit_diff); worst_images give
    #    the probability of the reference's top class; the baseline check is a paired test of decisions.
    SCHEMA = 3

    @property
    def passed(self) -> bool:
        return all(a.passed for a in self.artifacts)

    def to_dict(self) -> dict:
        """report.json; `--baseline` also reads reports of schemas 1 and 2."""
        data = {
            "schema": self.SCHEMA,
            "passed": self.passed,
            "artifact_dir": self.artifact_dir,
            "model": self.model,
            "images": self.images,
            "machine": self.machine,
            "torch": self.torch,
            "artifacts": [a.to_dict() for a in self.artifacts],
        }
        if self.notes:
            data["notes"] = self.notes
        return data

"""Labelled image sets: UTKFace file names, ImageFolder trees and CSV files (training, validate, evaluate).

Every loader yields the same `Sample` record, so training, `evaluate` and `validate` read labels
and groups the same way whatever the source layout. Labels come from the model, groups from the
data: a class folder or a CSV column names each image's label (which must be one of the model's
labels), and a UTKFace name carries four fields (gender, race, age, age_bucket), any of which
can serve as the label; whatever metadata the data carries besides the label (UTKFace fields,
other CSV columns) is available for per-group tables.

UTKFace (Zhang, Song, Qi, CVPR 2017) is licensed for non-commercial research only; the
project uses it to train and evaluate the default model and never redistributes it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vitgender.errors import UsageError
from vitgender.inputs import IMAGE_SUFFIXES

UTKFACE_RACES = ("White", "Black", "Asian", "Indian", "Other")
UTKFACE_GENDERS = ("male", "female")  # UTKFace codes gender 0 = male, 1 = female
UTKFACE_FIELDS = ("gender", "race", "age", "age_bucket")
UTKFACE_MAX_AGE = 116
AGE_BUCKETS = ((0, 2), (3, 9), (10, 19), (20, 29), (30, 39), (40, 49), (50, 59), (60, 69), (70, None))

_UTK_NAME = re.compile(r"^(\d{1,3})_([01])_([0-4])_(\d+)\.jpg\.chip\.jpg$")
_AGE_RANGE = re.compile(r"^\s*(\d{1,3})\s*(?:-\s*(\d{1,3})|\+)\s*$")


@dataclass(frozen=True)
class Sample:
    """One labelled image; `groups` holds the metadata the source provides (UTKFace fields, CSV columns)."""

    path: Path
    label: str
    groups: dict[str, str] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class LabelSource:
    """Where every label of a set came from, in words a report shows next to its numbers."""

    kind: str  # "folders", "csv" or "utkface"
    field: str  # the class folder, the CSV column, or the UTKFace field that gave the label
    mapping: tuple[tuple[str, str], ...] = ()  # (value in the data, label) where they differ, e.g. ("2", "Asian")

    def describe(self) -> str:
        if self.kind == "folders":
            return "labels: the class folder names"
        if self.kind == "csv":
            return f"labels: the CSV column {self.field!r}"
        shown = ", ".join(f"{value} -> {label}" for value, label in self.mapping)
        return f"labels: the UTKFace file names' {self.field} field" + (f" ({shown})" if shown else "")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "field": self.field, "mapping": dict(self.mapping), "text": self.describe()}


@dataclass
class LabelledSet:
    samples: list[Sample]
    skipped: list[str]  # names that carry no label (malformed UTKFace names), counted in reports
    source: LabelSource

    @property
    def fields(self) -> list[str]:
        """The metadata fields some sample carries (what `--group-by` may name)."""
        return sorted({key for sample in self.samples for key in sample.groups})


def age_bucket(age: int) -> str:
    for low, high in AGE_BUCKETS:
        if (high is None or age <= high) and age >= low:
            return f"{low}+" if high is None else f"{low}-{high}"
    raise ValueError(f"negative age {age}")


def utkface_fields(name: str) -> dict[str, str] | None:
    """The four fields of `age_gender_race_timestamp.jpg.chip.jpg`, or None for another name."""
    match = _UTK_NAME.match(name)
    if not match:
        return None
    age, gender, race = int(match[1]), int(match[2]), int(match[3])
    return {
        "gender": UTKFACE_GENDERS[gender],
        "race": UTKFACE_RACES[race],
        "age": str(age),
        "age_bucket": age_bucket(age),
    }


def parse_utkface_name(name: str) -> Sample | None:
    """The name's fields, labelled by its gender field (the default model's task), or None if malformed."""
    fields = utkface_fields(name)
    return None if fields is None else Sample(Path(name), fields["gender"], fields)


def age_ranges(labels: Sequence[str]) -> dict[str, tuple[int, int]] | None:
    """Labels that name age ranges ("0-19", "20-49", "50+") -> {label: (low, high)}, else None."""
    ranges = {}
    for label in labels:
        match = _AGE_RANGE.match(label)
        if not match:
            return None
        low = int(match[1])
        high = int(match[2]) if match[2] is not None else 10**6
        if high < low:
            return None
        ranges[label] = (low, high)
    return ranges


def _age_label(age: int, ranges: dict[str, tuple[int, int]]) -> str:
    return next((label for label, (low, high) in ranges.items() if low <= age <= high), str(age))


def _field_labeller(name: str, labels: Sequence[str] | None):
    """(value -> label, the mapping to show) for one UTKFace field, matched to the model's labels."""
    by_folded = {label.casefold(): label for label in labels or ()}

    def matched(value: str) -> str:
        return by_folded.get(value.casefold(), value)

    if name == "age":
        ranges = age_ranges(labels) if labels else None
        if ranges:
            shown = tuple(
                (f"age {low}-{high}" if high < 10**6 else f"age {low}+", label) for label, (low, high) in ranges.items()
            )
            return (lambda fields: _age_label(int(fields["age"]), ranges)), shown
        return (lambda fields: fields["age"]), ()
    codes = {"gender": UTKFACE_GENDERS, "race": UTKFACE_RACES}.get(name, ())
    shown = tuple((str(code), matched(value)) for code, value in enumerate(codes))
    return (lambda fields: matched(fields[name])), shown


def _vocabulary(name: str, labels: Sequence[str]) -> set[str]:
    """Every label the field can produce for these model labels."""
    if name == "gender":
        values = set(UTKFACE_GENDERS)
    elif name == "race":
        values = set(UTKFACE_RACES)
    elif name == "age_bucket":
        values = {age_bucket(lo) for lo, _ in AGE_BUCKETS}
    else:
        ranges = age_ranges(labels)
        if not ranges:
            return {"<raw ages>"}
        return {_age_label(age, ranges) for age in range(UTKFACE_MAX_AGE + 1)}
    by_folded = {label.casefold(): label for label in labels}
    return {by_folded.get(v.casefold(), v) for v in values}


def utkface_label_field(labels: Sequence[str] | None) -> str | None:
    """The UTKFace field whose every value is one of the model's labels (gender for the default model,
    race for a five-race model, age for age-range labels); None if no field fits. Without model
    labels (training a new model) the gender field, the default model's task."""
    if labels is None:
        return "gender"
    return next((name for name in UTKFACE_FIELDS if _vocabulary(name, labels) <= set(labels)), None)


def utkface_source(label_field: str, labels: Sequence[str] | None = None) -> LabelSource:
    """The label source of UTKFace names labelled by `label_field` (exit 2 for a field they lack)."""
    if label_field not in UTKFACE_FIELDS:
        raise UsageError(f"--label-field {label_field}", f"UTKFace file names carry {', '.join(UTKFACE_FIELDS)}")
    return LabelSource("utkface", label_field, _field_labeller(label_field, labels)[1])


def utkface_samples(
    root: Path, label_field: str = "gender", labels: Sequence[str] | None = None
) -> tuple[list[Sample], list[str]]:
    """Samples labelled by `label_field`, and the names skipped as malformed (counted in reports,
    never silently dropped)."""
    utkface_source(label_field)
    label_of, _ = _field_labeller(label_field, labels)
    samples, skipped = [], []
    for path in sorted(root.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        fields = utkface_fields(path.name)
        if fields is None:
            skipped.append(path.name)
            continue
        samples.append(Sample(path, label_of(fields), fields))
    if skipped:
        warnings.warn(
            f"skipped {len(skipped)} UTKFace file(s) with malformed names: {', '.join(skipped[:5])}"
            + (" ..." if len(skipped) > 5 else ""),
            stacklevel=2,
        )
    return samples, skipped


def imagefolder_samples(root: Path) -> list[Sample]:
    """Labels from class folder names; UTKFace-named files inside them also carry their fields as groups."""
    samples = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(class_dir.rglob("*")):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                samples.append(Sample(path, class_dir.name, utkface_fields(path.name) or {}))
    return samples


def csv_samples(csv_path: Path, label_column: str = "label") -> list[Sample]:
    """`path,label[,group columns...]`; relative paths are relative to the CSV's folder."""
    try:
        text = csv_path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UsageError(str(csv_path), "CSV is not UTF-8 text") from None
    if "\0" in text:
        raise UsageError(str(csv_path), "CSV contains NUL bytes: not a text file")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        columns = set(reader.fieldnames or ())
        missing = {"path", label_column} - columns
        if missing:
            if label_column != "label" and label_column in missing:
                raise UsageError(
                    f"--label-field {label_column}",
                    f"{csv_path} has no such column "
                    f"(columns: {', '.join(sorted(c for c in columns if c)) or 'none'})",
                )
            raise UsageError(
                f"{csv_path}", f"CSV needs columns path,{label_column} (missing {', '.join(sorted(missing))})"
            )
        samples = []
        for row in reader:
            if not row.get("path") or not row.get(label_column):
                raise UsageError(f"{csv_path}:{reader.line_num}", f"every row needs a path and a {label_column}")
            path = Path(row["path"])
            if not path.is_absolute():
                path = csv_path.parent / path
            groups = {
                k: v
                for k, v in row.items()
                if isinstance(k, str) and k not in ("path", "label", label_column) and isinstance(v, str) and v
            }
            if "age" in groups and "age_bucket" not in groups and groups["age"].isdecimal():
                groups["age_bucket"] = age_bucket(int(groups["age"]))
            samples.append(Sample(path, row[label_column], groups))
    except csv.Error as exc:
        raise UsageError(f"{csv_path}:{reader.line_num}", f"malformed CSV ({exc})") from None
    return samples


def open_labelled(source: Path, *, labels: Sequence[str] | None = None, label_field: str | None = None) -> LabelledSet:
    """Detect the layout (CSV file, ImageFolder tree, UTKFace names) and label every image.

    `labels` are the model's: they pick the UTKFace field that gives them (unless `label_field`
    names one) and bin ages when they are age ranges. `label_field` names a UTKFace field or a CSV
    column; class folders name their labels themselves, so it is refused there.
    """
    if not source.exists():
        raise UsageError(str(source), "no such file or directory")
    if source.is_file():
        if source.suffix.lower() != ".csv":
            raise UsageError(str(source), "labelled data must be a folder or a .csv file")
        column = label_field or "label"
        labelled = LabelledSet(csv_samples(source, column), [], LabelSource("csv", column))
    elif any(p.is_dir() for p in source.iterdir()):
        if label_field is not None:
            raise UsageError(
                f"--label-field {label_field}",
                f"{source} holds class folders, which name the labels "
                "themselves (--label-field picks a UTKFace file-name field or a CSV column)",
            )
        labelled = LabelledSet(imagefolder_samples(source), [], LabelSource("folders", "class folder"))
    else:
        chosen = label_field or utkface_label_field(labels)
        if chosen is None:
            raise UsageError(
                str(source),
                f"none of the UTKFace file-name fields ({', '.join(UTKFACE_FIELDS)}) "
                f"gives the model's labels ({', '.join(labels or ())}): pass --label-field FIELD, "
                "or label the images with class folders or a CSV",
            )
        source_of_labels = utkface_source(chosen, labels)
        labelled = LabelledSet(*utkface_samples(source, chosen, labels), source_of_labels)
    if not labelled.samples:
        raise UsageError(str(source), "no labelled images found (expected UTKFace names, class folders or a CSV)")
    return labelled


def load_labelled(source: Path) -> tuple[list[Sample], list[str]]:
    """Samples and skipped names, UTKFace names labelled by gender (training and the parity gate's reference)."""
    labelled = open_labelled(source)
    return labelled.samples, labelled.skipped


def split_of(path: Path, val_fraction: float = 0.2) -> str:
    """'train' or 'val', decided by the file's *content* hash.

    Content, not name: UTKFace holds exact duplicates under different names, and a
    name-based split would leak them across the split. Fixed forever, independent of
    the order or number of files, so numbers stay comparable between runs.
    """
    digest = hashlib.sha256(path.read_bytes()).digest()
    return "val" if int.from_bytes(digest[:8], "big") / 2**64 < val_fraction else "train"


def split_samples(samples: list[Sample], val_fraction: float = 0.2) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = {"train": [], "val": []}
    for sample in samples:
        out[split_of(sample.path, val_fraction)].append(sample)
    return out


class ExpectedLabels:
    """The label each image should get, where the data says so (`vitgender explain` flags answers
    that contradict it): a row of a CSV; else a UTKFace name's `label_field`; else, without one, a
    parent folder named after a model label (class folders) or the UTKFace field whose values are
    the model's labels. Only model labels count: an image without one has no expectation."""

    def __init__(self, labels: Sequence[str], *, csv_path: Path | None = None, label_field: str | None = None) -> None:
        self.labels = set(labels)
        self.by_path: dict[Path, str] | None = None
        self.folders = label_field is None and csv_path is None
        self.label_of = None
        if csv_path is not None:
            self.by_path = {s.path.resolve(): s.label for s in csv_samples(csv_path, label_field or "label")}
            self.source = LabelSource("csv", label_field or "label")
            return
        field = label_field or utkface_label_field(labels)
        if field is not None:
            self.source = utkface_source(field, labels)
            self.label_of = _field_labeller(field, labels)[0]
        else:
            self.source = LabelSource("folders", "class folder")

    def __call__(self, name: str) -> str | None:
        path = Path(name)
        if self.by_path is not None:
            found = self.by_path.get(path.resolve())
        else:
            found = path.parent.name if self.folders and path.parent.name in self.labels else None
            fields = utkface_fields(path.name) if found is None and self.label_of is not None else None
            found = self.label_of(fields) if fields is not None else found
        return found if found in self.labels else None

"""Labelled image sets: UTKFace file names, ImageFolder trees and CSV files (training, validate, evaluate).

Every loader yields the same `Sample` record, so training, `evaluate` and `validate`
read labels and demographic groups the same way whatever the source layout.

UTKFace (Zhang, Song, Qi, CVPR 2017) is licensed for non-commercial research only; the
project uses it to train and evaluate the default model and never redistributes it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from vitgender.errors import UsageError
from vitgender.inputs import IMAGE_SUFFIXES

UTKFACE_RACES = ("White", "Black", "Asian", "Indian", "Other")
UTKFACE_GENDERS = ("male", "female")  # UTKFace codes gender 0 = male, 1 = female
AGE_BUCKETS = ((0, 2), (3, 9), (10, 19), (20, 29), (30, 39), (40, 49), (50, 59), (60, 69), (70, None))

_UTK_NAME = re.compile(r"^(\d{1,3})_([01])_([0-4])_(\d+)\.jpg\.chip\.jpg$")


@dataclass(frozen=True)
class Sample:
    """One labelled image; `groups` holds the demographic attributes the source provides."""

    path: Path
    label: str
    groups: dict[str, str] = field(default_factory=dict, compare=False, hash=False)


def age_bucket(age: int) -> str:
    for low, high in AGE_BUCKETS:
        if high is None or age <= high:
            if age >= low:
                return f"{low}+" if high is None else f"{low}-{high}"
    raise ValueError(f"negative age {age}")


def parse_utkface_name(name: str) -> Sample | None:
    """Labels from `age_gender_race_timestamp.jpg.chip.jpg`, or None for a malformed name."""
    match = _UTK_NAME.match(name)
    if not match:
        return None
    age, gender, race = int(match[1]), int(match[2]), int(match[3])
    label = UTKFACE_GENDERS[gender]
    groups = {"gender": label, "race": UTKFACE_RACES[race], "age": str(age), "age_bucket": age_bucket(age)}
    return Sample(Path(name), label, groups)


def utkface_samples(root: Path) -> tuple[list[Sample], list[str]]:
    """Samples, and the names skipped as malformed (counted in reports, never silently dropped)."""
    samples, skipped = [], []
    for path in sorted(root.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        parsed = parse_utkface_name(path.name)
        if parsed is None:
            skipped.append(path.name)
            continue
        samples.append(Sample(path, parsed.label, parsed.groups))
    if skipped:
        warnings.warn(
            f"skipped {len(skipped)} UTKFace file(s) with malformed names: {', '.join(skipped[:5])}"
            + (" ..." if len(skipped) > 5 else ""),
            stacklevel=2,
        )
    return samples, skipped


def imagefolder_samples(root: Path) -> list[Sample]:
    samples = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(class_dir.rglob("*")):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                samples.append(Sample(path, class_dir.name, {"gender": class_dir.name}))
    return samples


def csv_samples(csv_path: Path) -> list[Sample]:
    """`path,label[,group columns...]`; relative paths are relative to the CSV's folder."""
    try:
        text = csv_path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UsageError(str(csv_path), "CSV is not UTF-8 text") from None
    if "\0" in text:
        raise UsageError(str(csv_path), "CSV contains NUL bytes: not a text file")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        missing = {"path", "label"} - set(reader.fieldnames or ())
        if missing:
            raise UsageError(f"{csv_path}", f"CSV needs columns path,label (missing {', '.join(sorted(missing))})")
        samples = []
        for row in reader:
            if not row.get("path") or not row.get("label"):
                raise UsageError(f"{csv_path}:{reader.line_num}", "every row needs a path and a label")
            path = Path(row["path"])
            if not path.is_absolute():
                path = csv_path.parent / path
            groups = {k: v for k, v in row.items() if isinstance(k, str) and k not in ("path", "label")
                      and isinstance(v, str) and v}
            if "age" in groups and "age_bucket" not in groups and groups["age"].isdecimal():
                groups["age_bucket"] = age_bucket(int(groups["age"]))
            samples.append(Sample(path, row["label"], groups))
    except csv.Error as exc:
        raise UsageError(f"{csv_path}:{reader.line_num}", f"malformed CSV ({exc})") from None
    return samples


def load_labelled(source: Path) -> tuple[list[Sample], list[str]]:
    """Detect the layout (CSV file, ImageFolder tree, UTKFace names); return samples and skipped names."""
    if not source.exists():
        raise UsageError(str(source), "no such file or directory")
    if source.is_file():
        if source.suffix.lower() != ".csv":
            raise UsageError(str(source), "labelled data must be a folder or a .csv file")
        samples, skipped = csv_samples(source), []
    elif any(p.is_dir() for p in source.iterdir()):
        samples, skipped = imagefolder_samples(source), []
    else:
        samples, skipped = utkface_samples(source)
    if not samples:
        raise UsageError(str(source), "no labelled images found (expected UTKFace names, class folders or a CSV)")
    return samples, skipped


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

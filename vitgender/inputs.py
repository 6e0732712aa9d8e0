"""Turn command-line inputs (files, folders, globs) into a lazy stream of image paths."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vitgender.preprocess import ImageSource

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".jfif"})


def expand_inputs(specs: Iterable[str]) -> Iterator[str | tuple[str, str]]:
    """Yield image paths lazily and in a stable order, or `(spec, why)` for a spec that failed.

    A file is yielded whatever its suffix (so a mislabelled file gets a clear error record
    instead of vanishing); folders are walked recursively for image suffixes; a pattern with
    glob characters is expanded. A spec that matches nothing becomes an error record, since a
    typo must not look like an empty successful run, nor abort the other inputs.
    """
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            found = False
            for sub in sorted(path.rglob("*")):
                if sub.is_file() and sub.suffix.lower() in IMAGE_SUFFIXES:
                    found = True
                    yield str(sub)
            if not found:
                yield spec, "directory contains no images"
        elif path.exists():
            yield spec
        elif glob.has_magic(spec):
            matches = sorted(m for m in glob.iglob(spec, recursive=True) if Path(m).is_file())
            if not matches:
                yield spec, "pattern matches no files"
            yield from matches
        else:
            yield spec, "no such file or directory"


def as_image_list(images: ImageSource | Sequence[ImageSource]) -> Sequence[ImageSource]:
    """One image (path, bytes, PIL image) or a sequence of them -> a sequence."""
    if isinstance(images, (str, bytes, os.PathLike)) or not isinstance(images, Sequence):
        return [images]
    return images

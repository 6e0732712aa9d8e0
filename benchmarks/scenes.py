"""Synthetic "full-body-like" scenes: real face crops pasted small into large cluttered canvases.

Used to measure face-first classification (detector recall per race group, accuracy of face-first
vs whole-frame) without any new data: the faces and their labels come from a labelled set such
as UTKFace, the scene layout from a seeded random generator, so every run sees the same scenes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from vitgender.data import Sample
from vitgender.preprocess import decode_image


@dataclass
class Scene:
    image: Image.Image
    faces: list[tuple[tuple[int, int, int, int], Sample]] = field(default_factory=list)  # pasted box, source


def _background(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    width, height = size
    gradient = np.linspace(rng.uniform(0, 255, 3), rng.uniform(0, 255, 3), width)[None].repeat(height, 0)
    noise = rng.normal(0, 12, (height, width, 3))
    canvas = Image.fromarray(np.clip(gradient + noise, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(3, 9))):  # clutter: furniture-ish blocks
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        draw.rectangle(
            [x, y, x + int(rng.integers(20, 200)), y + int(rng.integers(20, 200))],
            fill=tuple(int(v) for v in rng.integers(0, 255, 3)),
        )
    return canvas.filter(ImageFilter.GaussianBlur(1))


def make_scene(
    samples: list[Sample],
    rng: np.random.Generator,
    size: tuple[int, int] = (640, 480),
    face_px: tuple[int, int] = (56, 160),
) -> Scene:
    """Paste each sample's face at a random scale and position, without overlaps."""
    scene = Scene(_background(rng, size))
    taken: list[tuple[int, int, int, int]] = []
    for sample in samples:
        for _ in range(50):
            side = int(rng.integers(*face_px))
            x, y = int(rng.integers(0, size[0] - side)), int(rng.integers(0, size[1] - side))
            if all(x + side <= a or a + s <= x or y + side <= b or b + s <= y for a, b, s, _ in taken):
                break
        else:
            continue
        face = decode_image(sample.path).resize((side, side), Image.BILINEAR)
        scene.image.paste(face, (x, y))
        taken.append((x, y, side, side))
        scene.faces.append(((x, y, side, side), sample))
    return scene


def matches(truth: tuple[int, int, int, int], box: tuple[int, int, int, int]) -> bool:
    """A detection hits a pasted face when its centre lies inside it and its size is plausible."""
    x, y, side, _ = truth
    cx, cy = box[0] + box[2] / 2, box[1] + box[3] / 2
    return x <= cx <= x + side and y <= cy <= y + side and 0.2 * side <= max(box[2], box[3]) <= 1.3 * side

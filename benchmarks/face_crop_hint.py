"""How often the face-crop hint's per-image check is wrong: real crops flagged, scenes caught.

Crops: 1,000 random UTKFace faces (non-commercial research data); scenes: 100 synthetic scenes
of 1-3 of 300 other faces pasted small into cluttered 640x480 canvases (benchmarks/scenes.py). Run:

    .venv/bin/python benchmarks/face_crop_hint.py
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from scenes import make_scene  # benchmarks/scenes.py, beside this script

from vitgender.data import load_labelled
from vitgender.faces import HaarDetector, looks_like_a_scene
from vitgender.preprocess import decode_image

UTKFACE = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "utkface"


def main() -> None:
    detector = HaarDetector()
    samples, _ = load_labelled(UTKFACE)
    picked = random.Random(0).sample(samples, 1300)
    crops, pool = picked[:1000], picked[1000:]
    flagged = sum(looks_like_a_scene(detector, decode_image(s.path)) for s in crops)
    rng = np.random.default_rng(0)
    caught = sum(
        looks_like_a_scene(detector, make_scene(pool[3 * i : 3 * i + 1 + i % 3], rng).image) for i in range(100)
    )
    print(f"face crops flagged as scenes: {flagged} / {len(crops)} ({flagged / len(crops):.1%})")
    print(f"synthetic scenes flagged: {caught} / 100")


if __name__ == "__main__":
    main()

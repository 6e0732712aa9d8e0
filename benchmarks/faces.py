"""Face-first measurement: detector recall per race group and speed, face-first vs whole-frame accuracy.

Scenes: UTKFace validation faces (non-commercial research data) pasted at 56-160 px into
640x480 cluttered canvases, 1-3 faces per scene, seeded. Run:

    .venv/bin/python benchmarks/faces.py --scenes 300 --json artifacts/evaluations/faces.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from scenes import make_scene, matches  # benchmarks/scenes.py, beside this script

from vitgender.classify import load_classifier
from vitgender.data import load_labelled, split_samples
from vitgender.faces import crop, open_detector

UTKFACE = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "utkface"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scenes", type=int, default=300)
    parser.add_argument("--detectors", default="blazeface,haar")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    val = [s for s in split_samples(load_labelled(UTKFACE)[0])["val"] if int(s.groups["age"]) >= 15]
    order = rng.permutation(len(val))
    scenes, cursor = [], 0
    for _ in range(args.scenes):
        count = int(rng.integers(1, 4))
        scenes.append(make_scene([val[i] for i in order[cursor : cursor + count]], rng))
        cursor += count
    classifier = load_classifier()
    report = {"scenes": len(scenes), "faces": sum(len(s.faces) for s in scenes), "detectors": {}}
    single = [s for s in scenes if len(s.faces) == 1]
    whole = classifier.classify([s.image for s in single], batch_size=16)
    report["whole_frame_accuracy_single_face"] = float(
        np.mean([w[0]["label"] == s.faces[0][1].label for w, s in zip(whole, single, strict=False)])
    )
    for name in args.detectors.split(","):
        detector = open_detector(name)
        hits, totals, seconds, false_positives = defaultdict(int), defaultdict(int), [], 0
        correct_first = 0
        for scene in scenes:
            began = time.perf_counter()
            faces = detector.detect(scene.image)
            seconds.append(time.perf_counter() - began)
            used = set()
            for truth, sample in scene.faces:
                race = sample.groups["race"]
                totals[race] += 1
                found = next((i for i, f in enumerate(faces) if i not in used and matches(truth, f.box)), None)
                if found is not None:
                    used.add(found)
                    hits[race] += 1
            false_positives += len(faces) - len(used)
            if len(scene.faces) == 1 and faces:
                top = classifier.classify(crop(scene.image, faces[0]))[0][0]["label"]
                correct_first += top == scene.faces[0][1].label
        report["detectors"][name] = {
            "recall": sum(hits.values()) / sum(totals.values()),
            "recall_by_race": {r: {"n": totals[r], "recall": hits[r] / totals[r]} for r in sorted(totals)},
            "false_positives_per_scene": false_positives / len(scenes),
            "ms_per_640x480_image": 1000 * float(np.median(seconds)),
            "face_first_accuracy_single_face": correct_first / len(single),
        }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

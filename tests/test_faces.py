"""Face-first mode: detection on synthetic scenes, one result per face, explicit 'no face'."""

from __future__ import annotations

import base64
import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("mediapipe", reason="face-first mode needs the faces extra: pip install .[faces]")

import vitgender  # noqa: E402
from benchmarks.scenes import make_scene, matches  # noqa: E402
from vitgender.data import Sample, parse_utkface_name  # noqa: E402
from vitgender.faces import Face, crop, open_detector  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
REFERENCE = sorted((REPO / "vitgender" / "reference" / "utkface-val-50").glob("*.jpg"))


def samples() -> list[Sample]:
    out = []
    for path in REFERENCE:
        parsed = parse_utkface_name(path.name)
        out.append(Sample(path, parsed.label, parsed.groups))
    return out


@pytest.fixture(scope="module")
def scenes():
    rng = np.random.default_rng(0)
    pool = samples()
    return [make_scene(pool[i : i + 2], rng) for i in range(0, len(pool), 2)]


@pytest.mark.parametrize(("name", "min_recall"), [("blazeface", 0.8), ("haar", 0.5)])
def test_detectors_find_pasted_faces(scenes, name, min_recall):
    detector = open_detector(name)
    hits = total = 0
    for scene in scenes:
        faces = detector.detect(scene.image)
        for truth, _ in scene.faces:
            total += 1
            hits += any(matches(truth, f.box) for f in faces)
    assert hits / total >= min_recall, f"{name} recall {hits}/{total}"


def test_face_first_beats_whole_frame_on_small_faces(scenes):
    classifier = vitgender.load_classifier()
    detector = open_detector("blazeface")
    single = [make_scene([s], np.random.default_rng(i), face_px=(56, 90)) for i, s in enumerate(samples())]
    whole = classifier.classify([s.image for s in single], batch_size=16)
    whole_correct = sum(w[0]["label"] == s.faces[0][1].label for w, s in zip(whole, single, strict=False))
    faces = classifier.classify_faces([s.image for s in single], detector, max_faces=1)
    face_correct = sum(
        bool(f) and f[0]["predictions"][0]["label"] == s.faces[0][1].label for f, s in zip(faces, single, strict=False)
    )
    assert face_correct > whole_correct, (face_correct, whole_correct)


def test_several_faces_several_results_and_max_faces(scenes):
    classifier = vitgender.load_classifier()
    detector = open_detector("blazeface")
    scene = max(scenes, key=lambda s: len(s.faces))
    result = classifier.classify_faces(scene.image, detector)[0]
    assert len(result) >= 2
    for face in result:
        x, y, w, h = face["box"]
        assert x >= 0 and y >= 0 and w > 0 and h > 0 and 0 < face["detector_score"] <= 1
        assert {p["label"] for p in face["predictions"]} == {"female", "male"}
    assert len(classifier.classify_faces(scene.image, detector, max_faces=1)[0]) == 1


def test_no_face_is_an_explicit_empty_list(tmp_path):
    blank = tmp_path / "wall.png"
    Image.new("RGB", (640, 480), (120, 140, 160)).save(blank)
    result = subprocess.run(
        [sys.executable, "-m", "vitgender.cli", "classify", "--faces", str(blank)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"image": str(blank), "faces": []}
    as_csv = subprocess.run(
        [
            sys.executable,
            "-m",
            "vitgender.cli",
            "classify",
            "--faces",
            "--format",
            "csv",
            str(blank),
            str(REFERENCE[0]),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert as_csv.returncode == 0 and {r["image"] for r in rows} == {str(blank), str(REFERENCE[0])}  # a row each
    assert [r["face"] for r in rows if r["image"] == str(blank)] == ["none"]


def test_scenes_without_faces_flag_get_one_hint_and_crops_none(scenes, tmp_path):
    for i, scene in enumerate(scenes[:4]):
        scene.image.save(tmp_path / f"scene{i}.jpg")
    wide = subprocess.run(
        [sys.executable, "-m", "vitgender.cli", "classify", str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert wide.returncode == 0 and wide.stderr.count("hint:") == 1 and "--faces" in wide.stderr
    crops = subprocess.run(
        [sys.executable, "-m", "vitgender.cli", "classify", *map(str, REFERENCE[:16])],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert crops.returncode == 0 and crops.stderr == ""


def test_blazeface_keeps_stderr_for_the_user():
    result = subprocess.run(
        [sys.executable, "-m", "vitgender.cli", "classify", "--faces", "--detector", "blazeface", str(REFERENCE[0])],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0 and result.stderr == ""  # no TensorFlow/MediaPipe load chatter
    assert json.loads(result.stdout)["faces"]


def test_crop_is_square_with_margin():
    image = Image.new("RGB", (400, 300))
    assert crop(image, Face((100, 100, 40, 60), 0.9), margin=0.5).size == (120, 120)


def test_server_faces_parameter(tmp_path, scenes):
    from fastapi.testclient import TestClient

    from vitgender.serving.app import ServeSettings, create_app

    scene_path = tmp_path / "scene.jpg"
    scenes[0].image.save(scene_path)
    blank = tmp_path / "blank.png"
    Image.new("RGB", (320, 240), (10, 200, 30)).save(blank)
    with TestClient(create_app(ServeSettings())) as client:
        import time

        deadline = time.time() + 60
        while client.get("/health/ready").status_code != 200 and time.time() < deadline:
            time.sleep(0.2)

        def post(path, **parameters):
            return client.post(
                "/", json={"inputs": base64.b64encode(path.read_bytes()).decode(), "parameters": parameters}
            )

        faces = post(scene_path, faces=True)
        assert faces.status_code == 200 and len(faces.json()) >= 1 and "box" in faces.json()[0]
        none = post(blank, faces=True)
        assert none.status_code == 422 and none.json()["error"] == "no face detected"
        unsure = post(scene_path, min_confidence=1.0)
        assert unsure.json()[0]["label"] == "uncertain"

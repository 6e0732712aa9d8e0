"""Face-first classification for full-body and group photos: detect, crop with a margin, classify.

The default model was trained on aligned face crops; on a wide photo it sees a small face in a
large frame. A detector behind one small interface (like the Runner's) finds the faces; each
crop goes through the usual preprocessing and Runner, so the CLI, the Python API and the server
share this path. Detectors whose weights ship inside a registry package, so they run offline:
- `haar`: OpenCV's bundled frontal-face Haar cascade (opencv 4.x wheels), the default;
- `blazeface`: MediaPipe's BlazeFace full-range model (mediapipe 0.10.21 wheel).
`benchmarks/faces.py` measured both on 613 UTKFace faces pasted into 300 scenes: Haar found
92.7% (lowest group Black 83.7%), BlazeFace 80.9% (Asian 72.2%, Black 75.2%) at 5.6x the speed.
Recall, and its spread across race groups, decided the default; see the README.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image

from vitgender.errors import UsageError
from vitgender.native import quiet_native_stderr


@dataclass(frozen=True)
class Face:
    box: tuple[int, int, int, int]  # x, y, width, height in pixels of the decoded image
    score: float


class FaceDetector(Protocol):
    name: str

    def detect(self, image: Image.Image) -> list[Face]:
        """Faces in an RGB image, best first."""


def _clip(x: float, y: float, w: float, h: float, width: int, height: int) -> tuple[int, int, int, int]:
    x0, y0 = max(0, int(round(x))), max(0, int(round(y)))
    x1, y1 = min(width, int(round(x + w))), min(height, int(round(y + h)))
    return x0, y0, max(0, x1 - x0), max(0, y1 - y0)


class BlazeFaceDetector:
    name = "blazeface"

    def __init__(self, min_score: float = 0.5, full_range: bool = True) -> None:
        with quiet_native_stderr():  # MediaPipe imports TensorFlow's C++ runtime, which logs at load
            try:
                from mediapipe.python.solutions.face_detection import FaceDetection
            except ImportError:
                raise UsageError("blazeface", "needs mediapipe (pip install .[faces])") from None
            self._detector = FaceDetection(model_selection=1 if full_range else 0, min_detection_confidence=min_score)
            self._detector.process(np.zeros((64, 64, 3), np.uint8))  # the graph's first run logs too

    def detect(self, image: Image.Image) -> list[Face]:
        width, height = image.size
        result = self._detector.process(np.asarray(image.convert("RGB")))
        faces = []
        for detection in result.detections or []:
            box = detection.location_data.relative_bounding_box
            faces.append(
                Face(
                    _clip(box.xmin * width, box.ymin * height, box.width * width, box.height * height, width, height),
                    float(detection.score[0]),
                )
            )
        return sorted((f for f in faces if f.box[2] and f.box[3]), key=lambda f: -f.score)


class HaarDetector:
    name = "haar"

    def __init__(self, min_neighbors: int = 5) -> None:
        try:
            import cv2
        except ImportError:
            raise UsageError("haar", "needs OpenCV (pip install .[faces])") from None
        self._cv2 = cv2
        self._cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
        self._min_neighbors = min_neighbors

    def detect(self, image: Image.Image) -> list[Face]:
        gray = np.asarray(image.convert("L"))
        boxes, _, weights = self._cascade.detectMultiScale3(
            gray, scaleFactor=1.1, minNeighbors=self._min_neighbors, minSize=(20, 20), outputRejectLevels=True
        )
        faces = [
            Face(tuple(int(v) for v in box), float(1 / (1 + np.exp(-weight))))  # squash levelWeight to (0, 1)
            for box, weight in zip(boxes, np.ravel(weights), strict=False)
        ]
        return sorted(faces, key=lambda f: -f.score)


DETECTORS: dict[str, Callable[[], FaceDetector]] = {"blazeface": BlazeFaceDetector, "haar": HaarDetector}


def open_detector(name: str = "haar") -> FaceDetector:
    if name not in DETECTORS:
        raise UsageError(name, f"unknown face detector (choose from {', '.join(DETECTORS)})")
    return DETECTORS[name]()


def looks_like_a_scene(detector: FaceDetector, image: Image.Image, min_share: float = 0.1) -> bool:
    """Evidence that an image is a scene (group photo, full-body or wide shot), not a face crop.

    Faces were found but none fills `min_share` of the image; or none was found and the image is
    far from square. A square image without a detection is not evidence: the cascade misses some
    real crops (turned heads, children), and a false hint is worse than none.
    """
    small = image.copy()
    small.thumbnail((320, 320))
    faces = detector.detect(small)
    if faces:
        return all(f.box[2] * f.box[3] < min_share * small.width * small.height for f in faces)
    aspect = small.width / small.height
    return not 0.7 <= aspect <= 1.4


class FaceCropHint:
    """Says once per run, at its end, when most inputs look like scenes rather than face crops.

    Checks the first `checks` images with the cheap Haar detector and hints only when at least
    half of them look like scenes: on 1,000 UTKFace crops the per-image test is wrong 1.3% of the
    time (benchmarks/face_crop_hint.py), so one image alone is not enough. Silent where OpenCV is
    not installed: a hint, never an error.
    """

    def __init__(self, say: Callable[[str], None], checks: int = 16) -> None:
        self.say, self.checks = say, checks
        self.checked: list[str] = []
        self.scenes: list[str] = []
        try:
            self.detector: FaceDetector | None = HaarDetector()
        except UsageError:
            self.detector = None

    def __call__(self, name: str, image: Image.Image) -> None:
        if self.detector is None or len(self.checked) >= self.checks:
            return
        self.checked.append(name)
        if looks_like_a_scene(self.detector, image):
            self.scenes.append(name)

    def finish(self) -> None:
        if self.scenes and 2 * len(self.scenes) >= len(self.checked):
            self.say(
                f"hint: {len(self.scenes)} of the first {len(self.checked)} images look like scenes, not face "
                f"crops (e.g. {self.scenes[0]}); the model was trained on face crops: --faces detects and "
                "classifies each face"
            )


def crop(image: Image.Image, face: Face, margin: float = 0.1) -> Image.Image:
    """A square crop around the face, grown by `margin` on each side, like UTKFace's aligned crops."""
    x, y, w, h = face.box
    side = max(w, h) * (1 + 2 * margin)
    cx, cy = x + w / 2, y + h / 2
    return image.crop((int(cx - side / 2), int(cy - side / 2), int(cx + side / 2), int(cy + side / 2)))


def faces_and_crops(
    detector: FaceDetector, image: Image.Image, max_faces: int, margin: float = 0.1
) -> tuple[list[Face], list[Image.Image]]:
    faces = detector.detect(image)[:max_faces]
    return faces, [crop(image, face, margin) for face in faces]


def face_records(faces: Sequence[Face], predictions: Sequence[list[dict]]) -> list[dict]:
    return [
        {"box": list(face.box), "detector_score": round(face.score, 4), "predictions": preds}
        for face, preds in zip(faces, predictions, strict=False)
    ]

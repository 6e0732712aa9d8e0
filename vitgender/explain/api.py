"""`Explainer`: the Python API beside `Classifier`, for heat maps of what the PyTorch model looked at.

    >>> from vitgender.explain import Explainer
    >>> explainer = Explainer()                    # the embedded model; or a checkpoint dir / hub id
    >>> [e] = explainer.explain(["face.jpg"])      # default method: see DEFAULT_METHOD
    >>> e.label, e.score, e.map.shape              # ('female', 0.97, (10, 10)), the map sums to 1

It explains the PyTorch reference model (float32, eager attention), never an exported artifact:
exports are checked for parity against this model, so its maps stand for theirs. Images go
through the same decoding and ViTImageProcessor-identical preprocessing as `Classifier`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image

from vitgender.errors import ImageError, UsageError
from vitgender.explain.maps import METHODS, MapResult, explain_pixels
from vitgender.inputs import as_image_list
from vitgender.preprocess import DEFAULT_MAX_PIXELS, ImageSource, Preprocessor
from vitgender.scoring import apply_function, rank

# Chosen by the deletion test (benchmarks/explain_deletion.py, 300 UTKFace validation faces,
# docs/explain.md): removing patches in attribution's order drops the predicted class's
# probability much faster (deletion AUC 0.604) than in random order (0.802) or rollout's (0.763).
DEFAULT_METHOD = "attribution"


@dataclass
class Explanation:
    """One map: the whole image, or one face (then `box` is the detector's face box and `region`
    the square crop the model saw, both as x, y, width, height in the decoded image's pixels)."""

    image: str
    label: str
    score: float
    map: np.ndarray
    method: str
    predictions: list[dict] = field(default_factory=list)
    box: tuple[int, int, int, int] | None = None
    region: tuple[int, int, int, int] | None = None
    detector_score: float | None = None


@dataclass
class ExplainedImage:
    """One input of `Explainer.stream`: its decoded image and explanations, or why it failed, and the
    label the data says it should get (None when it does not say)."""

    name: str
    image: Image.Image | None = None
    explanations: list[Explanation] = field(default_factory=list)
    error: str | None = None
    expected: str | None = None


def crop_region(box: tuple[int, int, int, int], margin: float = 0.1) -> tuple[int, int, int, int]:
    """The square `vitgender.faces.crop` cuts around a face box, as (x, y, width, height); it may
    reach past the image's edges (Pillow pads those pixels black), and so may the map."""
    x, y, w, h = box
    side = max(w, h) * (1 + 2 * margin)
    cx, cy = x + w / 2, y + h / 2
    left, top = int(cx - side / 2), int(cy - side / 2)
    return left, top, int(cx + side / 2) - left, int(cy + side / 2) - top


def _name(source: ImageSource, index: int) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return f"<image {index}>"


class Explainer:
    """Heat maps over the patch grid for a checkpoint's predictions (None = the embedded default model)."""

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        *,
        allow_pickle: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        alpha: str | None = None,
    ) -> None:
        from vitgender.checkpoint import open_checkpoint
        from vitgender.preprocess import check_alpha

        checkpoint = open_checkpoint(model, allow_pickle)
        self.model = checkpoint.load_model().float()  # gradients in float32, whatever the file stores
        self.labels = checkpoint.labels
        try:
            preprocess = (
                checkpoint.preprocess if alpha is None else replace(checkpoint.preprocess, alpha=check_alpha(alpha))
            )
        except ValueError as exc:
            raise UsageError(f"--alpha {alpha}", str(exc)) from None
        self.preprocessor = Preprocessor(preprocess)
        self.max_pixels = max_pixels

    @property
    def input_size(self) -> tuple[int, int]:
        """(width, height) of the model input."""
        return self.preprocessor.config.width, self.preprocessor.config.height

    @property
    def patch_size(self) -> int:
        patch = self.model.config.patch_size
        return int(patch if isinstance(patch, int) else patch[0])

    def pixels(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Decoded RGB images -> the float32 NCHW pixel_values the model sees."""
        return self.preprocessor(images)

    def _maps(self, images: Sequence[Image.Image], method: str) -> MapResult:
        if method not in METHODS:
            raise UsageError(method, f"unknown explanation method (choose from {', '.join(METHODS)})")
        return explain_pixels(self.model, self.pixels(images), method)

    def _explanations(self, names: Sequence[str], images: Sequence[Image.Image], method: str) -> list[Explanation]:
        result = self._maps(images, method)
        scores = apply_function(result.logits, "softmax")
        out = []
        for name, row, target, heat in zip(names, scores, result.target, result.maps, strict=False):
            out.append(
                Explanation(
                    name, self.labels[int(target)], float(row[int(target)]), heat, method, rank(row, self.labels, None)
                )
            )
        return out

    def explain(
        self, images: ImageSource | Sequence[ImageSource], method: str = DEFAULT_METHOD, *, batch_size: int = 8
    ) -> list[Explanation]:
        """One whole-image explanation per input; raises ImageError on the first undecodable image."""
        images = as_image_list(images)
        out: list[Explanation] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            decoded = [self.preprocessor.decode(image, self.max_pixels) for image in chunk]
            out.extend(self._explanations([_name(s, start + i) for i, s in enumerate(chunk)], decoded, method))
        return out

    def explain_faces(
        self,
        image: ImageSource,
        detector,
        method: str = DEFAULT_METHOD,
        *,
        max_faces: int = 20,
        name: str | None = None,
    ) -> list[Explanation]:
        """One explanation per detected face (maybe none), each placed by its box in the original photo."""
        from vitgender.faces import faces_and_crops

        decoded = image if isinstance(image, Image.Image) else self.preprocessor.decode(image, self.max_pixels)
        faces, crops = faces_and_crops(detector, decoded, max_faces)
        if not crops:
            return []
        label = name or _name(image, 0)
        out = self._explanations([label] * len(crops), crops, method)
        for explanation, face in zip(out, faces, strict=False):
            explanation.box = tuple(int(v) for v in face.box)
            explanation.region = crop_region(explanation.box)
            explanation.detector_score = round(face.score, 4)
        return out

    def stream(
        self,
        paths: Iterable[str | tuple[str, str]],
        method: str = DEFAULT_METHOD,
        *,
        detector=None,
        max_faces: int = 20,
        batch_size: int = 8,
        expected: Callable[[str], str | None] = lambda name: None,
    ) -> Iterator[ExplainedImage]:
        """Results in input order, one batch in memory at a time; bad inputs become error records.

        `paths` may carry `(name, error)` pairs for inputs that failed before decoding (as
        `vitgender.inputs.expand_inputs` yields them). With a `detector`, each image yields its faces.
        `expected(name)` gives the label the data states for an input (`vitgender.data.ExpectedLabels`).
        """
        if method not in METHODS:
            raise UsageError(method, f"unknown explanation method (choose from {', '.join(METHODS)})")
        pending: list[ExplainedImage] = []

        def flush() -> Iterator[ExplainedImage]:
            good = [item for item in pending if item.error is None]
            if good:
                explanations = self._explanations([g.name for g in good], [g.image for g in good], method)
                for item, explanation in zip(good, explanations, strict=False):
                    item.explanations = [explanation]
            yield from pending
            pending.clear()

        for entry in paths:
            if isinstance(entry, tuple):
                pending.append(ExplainedImage(entry[0], error=entry[1]))
            else:
                try:
                    image = self.preprocessor.decode(entry, self.max_pixels)
                except ImageError as exc:
                    pending.append(ExplainedImage(entry, error=exc.why))
                else:
                    if detector is not None:
                        yield from flush()
                        yield ExplainedImage(
                            entry,
                            image,
                            self.explain_faces(image, detector, method, max_faces=max_faces, name=entry),
                            expected=expected(entry),
                        )
                        continue
                    pending.append(ExplainedImage(entry, image, expected=expected(entry)))
            if len(pending) >= batch_size:
                yield from flush()
        yield from flush()

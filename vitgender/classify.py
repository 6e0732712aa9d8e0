"""Batch classification: inputs -> preprocess -> Runner -> HF-pipeline-shaped predictions.

`Classifier` is the Python API (`vitgender.load_classifier(model).classify(images)`) and the
engine behind `vitgender classify`. Results follow `transformers.pipeline("image-classification")`:
a list of `{"label", "score"}` per image, sorted by score, softmax by default.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image

from vitgender.errors import ImageError, UsageError, VitgenderError
from vitgender.inputs import as_image_list
from vitgender.preprocess import DEFAULT_MAX_PIXELS, ImageSource, Preprocessor
from vitgender.runtimes import Runner, open_runner, runner_input
from vitgender.scoring import Result, apply_function, rank, with_uncertainty


def available_memory() -> int:
    """Bytes of memory free now (physical pages available), or 2 GiB where the OS will not say."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 2 * 2**30


def auto_batch_size(runner: Runner, ceiling: int = 64, memory: int | None = None) -> int:
    """Largest power of two (<= ceiling) whose activations fit in a quarter of `memory` (default: free now).

    Sizes come from the model's own architecture (token count, width, heads), so a ViT-B/16 at
    224 px gets a smaller batch than a ViT-S/14 at 140 px.
    """
    arch, cfg = runner.info.architecture, runner.info.preprocess
    if arch is None:
        raise UsageError(
            runner.info.source,
            "--batch-size auto needs the model's architecture, which this "
            "artifact's sidecar lacks (re-export it, or give a number)",
        )
    per_image = arch.activation_bytes(cfg.height, cfg.width)
    budget = (available_memory() if memory is None else memory) // 4
    size = 1
    while size * 2 <= ceiling and size * 2 * per_image <= budget:
        size *= 2
    return size


class Classifier:
    def __init__(self, runner: Runner, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.runner = runner
        self.labels = runner.info.labels
        self.preprocessor = Preprocessor(runner.info.preprocess)
        self.max_pixels = max_pixels

    def close(self) -> None:
        """Releases the runner (an ExecuTorch worker process, an interpreter); `with load_classifier(...)` calls it."""
        self.runner.close()

    def __enter__(self) -> Classifier:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def logits(self, images: Sequence[ImageSource]) -> np.ndarray:
        resized = np.stack([self.preprocessor.load(image, self.max_pixels) for image in images])
        return self.runner.run(runner_input(self.runner, resized))

    def classify(
        self,
        images: ImageSource | Sequence[ImageSource],
        *,
        batch_size: int = 8,
        top_k: int | None = None,
        function_to_apply: str = "softmax",
        min_confidence: float | None = None,
    ) -> list[list[dict]]:
        """Predictions per image; raises ImageError on the first undecodable image."""
        images = as_image_list(images)
        out = []
        for start in range(0, len(images), batch_size):
            scores = apply_function(self.logits(images[start : start + batch_size]), function_to_apply)
            out.extend(with_uncertainty(rank(row, self.labels, top_k), min_confidence) for row in scores)
        return out

    def classify_faces(
        self,
        images: ImageSource | Sequence[ImageSource],
        detector,
        *,
        max_faces: int = 20,
        top_k: int | None = None,
        function_to_apply: str = "softmax",
        min_confidence: float | None = None,
    ) -> list[list[dict]]:
        """Per image, one `{"box", "detector_score", "predictions"}` per detected face (maybe none)."""
        from vitgender.faces import face_records, faces_and_crops

        out = []
        for image in as_image_list(images):
            decoded = self.preprocessor.decode(image, self.max_pixels)
            faces, crops = faces_and_crops(detector, decoded, max_faces)
            predictions = (
                self.classify(
                    crops,
                    batch_size=max(len(crops), 1),
                    top_k=top_k,
                    function_to_apply=function_to_apply,
                    min_confidence=min_confidence,
                )
                if crops
                else []
            )
            out.append(face_records(faces, predictions))
        return out

    def stream(
        self,
        paths: Iterable[str | tuple[str, str]],
        *,
        batch_size: int = 8,
        top_k: int | None = None,
        function_to_apply: str = "softmax",
        min_confidence: float | None = None,
        detector=None,
        max_faces: int = 20,
        inspect: Callable[[str, Image.Image], None] | None = None,
    ) -> Iterator[Result]:
        """Results in input order, one batch in memory at a time; bad inputs become error results.

        `paths` may also carry `(name, error)` pairs for inputs that failed before decoding. With a
        `detector`, each image yields its faces (face-first mode) instead of whole-frame predictions.
        `inspect(name, image)` sees each decoded image first (the CLI's face-crop hint).
        """
        if detector is not None:
            for item in paths:
                if isinstance(item, tuple):
                    yield Result(item[0], error=item[1])
                    continue
                try:
                    faces = self.classify_faces(
                        item,
                        detector,
                        max_faces=max_faces,
                        top_k=top_k,
                        function_to_apply=function_to_apply,
                        min_confidence=min_confidence,
                    )[0]
                except ImageError as exc:
                    yield Result(item, error=exc.why)
                    continue
                yield Result(item, faces=faces)
            return
        pending: list[tuple[str, object]] = []  # (name, decoded image | Result)

        def flush() -> Iterator[Result]:
            good = [(i, image) for i, (_, image) in enumerate(pending) if not isinstance(image, Result)]
            scores = {}
            if good:
                resized = np.stack([self.preprocessor.resize(image) for _, image in good])
                logits = self.runner.run(runner_input(self.runner, resized))
                scores = dict(zip((i for i, _ in good), apply_function(logits, function_to_apply), strict=True))
            for i, (name, image) in enumerate(pending):
                if isinstance(image, Result):
                    yield image
                else:
                    yield Result(name, with_uncertainty(rank(scores[i], self.labels, top_k), min_confidence))
            pending.clear()

        for item in paths:
            if isinstance(item, tuple):
                pending.append((item[0], Result(item[0], error=item[1])))
            else:
                try:
                    image = self.preprocessor.decode(item, self.max_pixels)
                except ImageError as exc:
                    pending.append((item, Result(item, error=exc.why)))
                else:
                    if inspect is not None:
                        inspect(item, image)
                    pending.append((item, image))
            if len(pending) >= batch_size:
                yield from flush()
        yield from flush()


def load_classifier(
    model: str | os.PathLike | None = None,
    *,
    runtime: str = "torch",
    allow_pickle: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    tta: str | None = None,
    alpha: str | None = None,
) -> Classifier:
    """A Classifier over `model` (None = the embedded default model) on the given runtime;
    `tta="flip"` averages each image with its mirror image; `alpha` (white, black, drop) replaces
    the model's alpha policy for transparent images. `allow_pickle` is a torch option: set for
    another runtime it is refused. Close it when done (or use it in a `with` block)."""
    return Classifier(
        open_runner(runtime, model, tta=tta, alpha=alpha, allow_pickle=allow_pickle), max_pixels=max_pixels
    )


__all__ = ["Classifier", "Result", "VitgenderError", "load_classifier"]

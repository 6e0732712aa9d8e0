"""Image decoding and ViTImageProcessor-identical preprocessing.

Decoding policy (documented in the README, applied everywhere: CLI, server, validators):
- EXIF orientation is applied (`ImageOps.exif_transpose`), as the transformers pipeline does.
- Animated images (GIF, APNG, WebP): the first frame.
- Transparency (RGBA, LA, PA, P with a transparency key): the alpha policy, one of ALPHA_POLICIES.
  `white` (the default) and `black` composite the image on that colour; `drop` reproduces
  transformers, whose `convert_to_rgb` and pipeline `load_image` discard the alpha channel and
  keep whatever colour hides beneath it (often black, or junk, in fully transparent pixels).
  The policy travels in `PreprocessConfig.alpha`: a checkpoint may set it in its
  preprocessor_config.json ("alpha"), an export records it in each artifact's sidecar, and
  `--alpha` overrides it for one command, so classify, validate, serve and Ray decode alike.
- Grayscale, CMYK, YCbCr, palette: converted to RGB by Pillow.
- 16-bit and 32-bit integer images (I;16, I): scaled to 8 bits (value * 255 / max of the mode's
  range), since Pillow's own conversion clips them to 255.
- A pixel-count limit refuses decompression bombs before any pixel is decoded.

Preprocessing reproduces `ViTImageProcessor` exactly (resize with Pillow and the configured
resample filter, rescale in float64 then float32, normalise in float32), so the pixel_values
fed to every runtime equal what transformers would feed PyTorch.
"""

from __future__ import annotations

import io
import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from vitgender.errors import ImageError

ImageSource = Union[str, os.PathLike, bytes, Image.Image]

DEFAULT_MAX_PIXELS = 64_000_000
ALPHA_POLICIES = ("white", "black", "drop")
DEFAULT_ALPHA = "white"
_BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0), "drop": None}

# Pillow's own bomb check only warns below 2x its limit; we enforce ours explicitly instead.
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False


def _describe(source: ImageSource) -> str:
    if isinstance(source, (bytes, bytearray)):
        return f"<{len(source)} bytes>"
    if isinstance(source, Image.Image):
        return "<PIL image>"
    return os.fspath(source)


def check_alpha(policy: str) -> str:
    """The policy, or ValueError naming the choices (a usage error at the CLI)."""
    if policy not in ALPHA_POLICIES:
        raise ValueError(f"alpha policy {policy!r} is not one of {', '.join(ALPHA_POLICIES)}")
    return policy


def _to_rgb(image: Image.Image, background: tuple[int, int, int] | None) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        top = 65535.0 if image.mode.startswith("I;16") else float(2**31 - 1)
        array = np.asarray(image, dtype=np.float64)
        if image.mode == "I" and array.max() <= 65535:
            top = 65535.0  # 16-bit PNGs decode as mode "I"
        image = Image.fromarray(np.clip(np.rint(array * (255.0 / top)), 0, 255).astype(np.uint8), "L")
    if image.mode == "F":
        image = Image.fromarray(np.clip(np.rint(np.asarray(image)), 0, 255).astype(np.uint8), "L")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (image.mode == "P" and "transparency" in image.info)
    if has_alpha and background is not None:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def _decode_failure(exc: Exception) -> str:
    reason = str(exc)
    if "truncated" in reason.lower():
        return "cannot decode (truncated image data)"
    return f"cannot decode ({reason[:200] or type(exc).__name__})"


def decode_image(
    source: ImageSource,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    alpha: str = DEFAULT_ALPHA,
) -> Image.Image:
    """Decode bytes, a path or a PIL image into an upright 8-bit RGB image (transparency handled by
    the `alpha` policy), or raise ImageError."""
    background = _BACKGROUNDS[check_alpha(alpha)]
    what = _describe(source)
    if isinstance(source, Image.Image):
        image = source
    else:
        if isinstance(source, (bytes, bytearray)):
            data = bytes(source)
        else:
            try:
                data = Path(source).read_bytes()
            except FileNotFoundError:
                raise ImageError(what, "no such file") from None
            except IsADirectoryError:
                raise ImageError(what, "is a directory") from None
            except OSError as exc:
                raise ImageError(what, f"cannot read ({exc.strerror or exc})") from None
        if not data:
            raise ImageError(what, "not an image (0 bytes)")
        try:
            image = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise ImageError(what, f"not an image ({len(data)} bytes of unrecognised data)") from None
        except Exception as exc:  # noqa: BLE001 - Pillow's parsers raise struct.error, IndexError... on hostile files
            raise ImageError(what, _decode_failure(exc)) from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(
            what, f"image is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,}"
        )
    try:
        if getattr(image, "is_animated", False):
            image.seek(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns on odd EXIF; the policy handles it
            image.load()
            image = ImageOps.exif_transpose(image) or image
        return _to_rgb(image, background)
    except MemoryError:
        raise ImageError(what, "too large to decode in the memory available") from None
    except Exception as exc:  # noqa: BLE001 - any failure inside the image library means "cannot decode this file"
        raise ImageError(what, _decode_failure(exc)) from None


_RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
MAX_SIDE = 4096  # a model input side beyond this is a typo, and would allocate gigabytes per image


def _integer(value: object, name: str) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (isinstance(value, float) and not value.is_integer())
    ):
        raise ValueError(f"{name} must be an integer, not {value!r}")
    return int(value)


def _triple(values: object, name: str) -> tuple[float, float, float]:
    if (
        not isinstance(values, (list, tuple))
        or len(values) != 3
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    ):
        raise ValueError(f"{name} must be three numbers (RGB)")
    return tuple(float(v) for v in values)


@dataclass(frozen=True)
class PreprocessConfig:
    """The fields of an HF `preprocessor_config.json` that ViTImageProcessor uses."""

    height: int = 224
    width: int = 224
    resample: int = 2
    do_resize: bool = True
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    alpha: str = DEFAULT_ALPHA  # not an HF field: how transparent pixels are decoded (ALPHA_POLICIES)

    @classmethod
    def from_dict(cls, data: dict) -> PreprocessConfig:
        """Parse and check an HF preprocessor config; ValueError names the first field that cannot work."""
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object")
        size = data.get("size", {"height": 224, "width": 224})
        if isinstance(size, int) and not isinstance(size, bool):
            size = {"height": size, "width": size}
        if not isinstance(size, dict):
            raise ValueError("size must be an integer or {height, width}")
        if "shortest_edge" in size:
            raise ValueError("size.shortest_edge is not a ViT resize; expected height/width")
        mean, std = data.get("image_mean", cls.image_mean), data.get("image_std", cls.image_std)
        mean = (mean,) * 3 if isinstance(mean, (int, float)) else mean
        std = (std,) * 3 if isinstance(std, (int, float)) else std
        config = cls(
            height=_integer(size.get("height"), "size.height"),
            width=_integer(size.get("width"), "size.width"),
            resample=_integer(data.get("resample", 2), "resample"),
            do_resize=bool(data.get("do_resize", True)),
            do_rescale=bool(data.get("do_rescale", True)),
            rescale_factor=float(data.get("rescale_factor", 1 / 255)),
            do_normalize=bool(data.get("do_normalize", True)),
            image_mean=_triple(mean, "image_mean"),
            image_std=_triple(std, "image_std"),
            alpha=check_alpha(data.get("alpha", DEFAULT_ALPHA)),
        )
        if not (0 < config.height <= MAX_SIDE and 0 < config.width <= MAX_SIDE):
            raise ValueError(f"size {config.height}x{config.width} is outside 1..{MAX_SIDE}")
        if config.resample not in _RESAMPLE_NAMES:
            raise ValueError(f"resample {config.resample} is not a Pillow filter (0-5)")
        if (
            not all(math.isfinite(v) for v in (*config.image_mean, *config.image_std, config.rescale_factor))
            or min(config.image_std) <= 0
        ):
            raise ValueError("image_mean, image_std and rescale_factor must be finite, image_std positive")
        return config

    @classmethod
    def from_file(cls, path: Path) -> PreprocessConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_dict(self) -> dict:
        """The HF `preprocessor_config.json` fields (the alpha policy is not one; see `to_sidecar`)."""
        return {
            "do_resize": self.do_resize,
            "size": {"height": self.height, "width": self.width},
            "resample": self.resample,
            "do_rescale": self.do_rescale,
            "rescale_factor": self.rescale_factor,
            "do_normalize": self.do_normalize,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "image_processor_type": "ViTImageProcessor",
        }

    def to_sidecar(self) -> dict:
        """The HF fields plus the alpha policy, as an exported artifact's sidecar records them."""
        return {**self.to_dict(), "alpha": self.alpha}

    @property
    def resample_name(self) -> str:
        return _RESAMPLE_NAMES.get(self.resample, str(self.resample))


class Preprocessor:
    """Decoded RGB images -> float32 NCHW `pixel_values`, exactly as ViTImageProcessor."""

    def __init__(self, config: PreprocessConfig) -> None:
        self.config = config
        self._mean = np.asarray(config.image_mean, dtype=np.float32)
        self._std = np.asarray(config.image_std, dtype=np.float32)

    def decode(self, source: ImageSource, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
        """`decode_image` under this model's alpha policy."""
        return decode_image(source, max_pixels=max_pixels, alpha=self.config.alpha)

    def load(self, source: ImageSource, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
        """Decode and resize: the uint8 HWC array the model sees before normalisation."""
        return self.resize(self.decode(source, max_pixels))

    def resize(self, image: Image.Image) -> np.ndarray:
        """The uint8 HWC array the model sees before normalisation."""
        cfg = self.config
        if cfg.do_resize and image.size != (cfg.width, cfg.height):
            image = image.resize((cfg.width, cfg.height), resample=cfg.resample)
        return np.asarray(image, dtype=np.uint8)

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (..., H, W, 3) -> float32 (..., 3, H, W)."""
        cfg = self.config
        x = pixels.astype(np.float64) * cfg.rescale_factor if cfg.do_rescale else pixels.astype(np.float64)
        x = x.astype(np.float32)
        if cfg.do_normalize:
            x = (x - self._mean) / self._std
        return np.ascontiguousarray(np.moveaxis(x, -1, -3))

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self.normalize(np.stack([self.resize(image) for image in images]))

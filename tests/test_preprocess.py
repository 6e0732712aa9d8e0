"""Golden tests: our decode + preprocess equals ViTImageProcessor for every decoding case."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from transformers import ViTImageProcessor
from transformers.image_utils import load_image

from tests.conftest import random_image
from vitgender.errors import ImageError
from vitgender.preprocess import PreprocessConfig, Preprocessor, decode_image

CONFIGS = [
    PreprocessConfig(height=224, width=224),  # in21k-style 0.5/0.5
    PreprocessConfig(height=140, width=140, image_mean=(0.485, 0.456, 0.406), image_std=(0.229, 0.224, 0.225)),
    PreprocessConfig(height=64, width=96, resample=3),  # bicubic, non-square
]


def hf_pixels(config: PreprocessConfig, image) -> np.ndarray:
    processor = ViTImageProcessor(
        **{k: v for k, v in config.to_dict().items() if k != "image_processor_type"}, do_convert_rgb=True
    )
    return processor(images=image, return_tensors="np")["pixel_values"]


def ours(config: PreprocessConfig, source, **decode) -> np.ndarray:
    return Preprocessor(config)([decode_image(source, **decode)])


def on_white(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")


def save(image: Image.Image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kw)
    return buffer.getvalue()


@pytest.mark.parametrize("config", CONFIGS, ids=["224-half", "140-imagenet", "64x96-bicubic"])
@pytest.mark.parametrize(
    ("mode", "fmt"), [("RGB", "JPEG"), ("RGB", "PNG"), ("L", "PNG"), ("RGBA", "PNG"), ("LA", "PNG")]
)
def test_matches_vit_image_processor(tmp_path, config, mode, fmt):
    image = random_image(1, size=(120, 90), mode=mode)
    path = tmp_path / f"x.{fmt.lower()}"
    path.write_bytes(save(image, fmt))
    # transformers' own decoding of the same file, then its processor.
    reference = hf_pixels(config, Image.open(path))
    assert np.abs(ours(config, path, alpha="drop") - reference).max() <= 1e-6
    if "A" in mode:  # default policy: composite on white, then the same processor
        assert np.abs(ours(config, path) - hf_pixels(config, on_white(Image.open(path)))).max() <= 1e-6
        assert np.abs(ours(config, path) - reference).max() > 0.1, "fixture alpha must matter"


def test_palette_with_transparency_composites_on_white(tmp_path):
    image = random_image(2, size=(40, 40)).convert("P")
    image.info["transparency"] = 0
    data = save(image, "PNG", transparency=0)
    config = CONFIGS[0]
    assert np.abs(ours(config, data) - hf_pixels(config, on_white(Image.open(io.BytesIO(data))))).max() <= 1e-6
    transparent = Image.open(io.BytesIO(data)).convert("RGBA")
    assert (np.asarray(transparent)[..., 3] == 0).any(), "fixture must contain transparent pixels"


def test_cmyk_jpeg(tmp_path):
    data = save(random_image(3, size=(64, 48)).convert("CMYK"), "JPEG", quality=95)
    config = CONFIGS[0]
    reference = hf_pixels(config, load_image(Image.open(io.BytesIO(data))))
    assert np.abs(ours(config, data) - reference).max() <= 1e-6


def test_exif_orientation_applied_like_the_pipeline(tmp_path):
    image = random_image(4, size=(80, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "rotated.jpg"
    image.save(path, "JPEG", exif=exif, quality=95)
    assert decode_image(path).size == (40, 80)
    config = CONFIGS[2]
    reference = hf_pixels(config, load_image(str(path)))  # load_image applies exif_transpose
    assert np.abs(ours(config, path) - reference).max() <= 1e-6


def test_sixteen_bit_scaled_to_eight_bits(tmp_path):
    rng = np.random.default_rng(5)
    array16 = rng.integers(0, 65536, size=(30, 50), dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(array16).save(path)
    expected8 = np.rint(array16.astype(np.float64) * 255 / 65535).astype(np.uint8)
    decoded = np.asarray(decode_image(path))
    assert decoded.shape == (30, 50, 3)
    assert np.array_equal(decoded[..., 0], expected8)
    config = CONFIGS[0]
    reference = hf_pixels(config, Image.fromarray(expected8).convert("RGB"))
    assert np.abs(ours(config, path) - reference).max() <= 1e-6


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [random_image(i, size=(32, 32)).convert("P") for i in (6, 7, 8)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50)
    first = Image.open(path)
    first.seek(0)
    expected = np.asarray(first.convert("RGB"))
    animated = Image.open(path)
    animated.seek(2)  # a caller left it on a later frame: we still take the first
    assert np.array_equal(np.asarray(decode_image(animated)), expected)


def test_pixel_limit_refuses_bombs_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (400, 300)).save(path)
    with pytest.raises(ImageError, match="over the limit"):
        decode_image(path, max_pixels=100_000)


@pytest.mark.parametrize(
    ("payload", "why"),
    [(b"", "not an image (0 bytes)"), (b"hello, I am text\n", "not an image"), (None, "truncated")],
)
def test_bad_bytes_give_clear_errors(tmp_path, payload, why):
    if payload is None:
        payload = save(random_image(0, size=(200, 200)), "JPEG")[:600]
    path = tmp_path / "bad.jpg"
    path.write_bytes(payload)
    with pytest.raises(ImageError) as info:
        decode_image(path)
    assert why in info.value.why
    assert str(path) in str(info.value)


def test_missing_file():
    with pytest.raises(ImageError, match="no such file"):
        decode_image("/nonexistent/x.jpg")

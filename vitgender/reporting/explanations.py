"""Drawing explanations: heat-map overlays (PNG) and one self-contained HTML contact sheet.

Overlays are drawn on the *original* decoded image, not the 140 px model input, so a map can be
checked against what a person sees: the patch grid is stretched back over the area the model
saw (the whole frame, or each face's crop square in face-first mode, where the detector's box
is drawn too). The sheet embeds its thumbnails as data URIs and carries its few lines of CSS and
JS inline, so it can be mailed or archived as one file; every file name and label in it is
user- or checkpoint-controlled text and goes through `html.escape`.
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vitgender.explain.api import ExplainedImage, Explainer, Explanation

COLORMAP = "inferno"
ALPHA = 0.7  # opacity of the hottest patch; the coldest get ALPHA_FLOOR
ALPHA_FLOOR = 0.2
MAX_SIDE = 640
THUMB_SIDE = 224
BOX_COLOR = (0, 255, 128)


def is_uncertain(explanation: Explanation, min_confidence: float | None) -> bool:
    return min_confidence is not None and explanation.score < min_confidence


def describe(explanation: Explanation, min_confidence: float | None = None) -> str:
    """`male 0.97`, or `uncertain (male 0.55)` below `min_confidence`."""
    text = f"{explanation.label} {explanation.score:.2f}"
    return f"uncertain ({text})" if is_uncertain(explanation, min_confidence) else text


def caption(
    explanations: Sequence[Explanation], method: str, min_confidence: float | None = None, faces: bool = False
) -> str:
    if faces:
        if not explanations:
            return f"no face found · {method}"
        faces_text = "; ".join(f"face {i}: {describe(e, min_confidence)}" for i, e in enumerate(explanations, 1))
        return f"{faces_text} · {method}"
    return f"{describe(explanations[0], min_confidence)} · {method}" if explanations else method


def _heat_rgba(heat: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A (grid_h, grid_w) map -> (height, width, 4): colormap colours scaled to the map's own peak,
    and an opacity that grows with the value, so the photo stays readable where the map is cold."""
    from matplotlib import colormaps

    peak = float(heat.max())
    scaled = heat / peak if peak > 0 else heat
    resized = np.asarray(Image.fromarray(scaled.astype(np.float32), "F").resize(size, Image.BILINEAR))
    resized = np.clip(resized, 0.0, 1.0)
    colours = colormaps[COLORMAP](resized)
    colours[..., 3] = ALPHA_FLOOR + (ALPHA - ALPHA_FLOOR) * resized
    return colours


def _paste_heat(canvas: np.ndarray, heat: np.ndarray, region: tuple[float, float, float, float]) -> None:
    """Blend `heat` over canvas[region] (x, y, w, h in canvas pixels), clipped to the canvas."""
    x, y, w, h = (int(round(v)) for v in region)
    if w < 1 or h < 1:
        return
    colours = _heat_rgba(heat, (w, h))
    height, width = canvas.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
    if x0 >= x1 or y0 >= y1:
        return
    patch = colours[y0 - y : y1 - y, x0 - x : x1 - x]
    alpha = patch[..., 3:]
    canvas[y0:y1, x0:x1] = (1 - alpha) * canvas[y0:y1, x0:x1] + alpha * patch[..., :3]


def _grid_extent(explanation: Explanation, input_size: tuple[int, int], patch: int) -> tuple[float, float]:
    """Share of the model input (width, height) the patch grid covers (less than 1 when the side
    is not a multiple of the patch size)."""
    grid_h, grid_w = explanation.map.shape
    return min(1.0, grid_w * patch / input_size[0]), min(1.0, grid_h * patch / input_size[1])


def overlay(
    image: Image.Image,
    explanations: Sequence[Explanation],
    text: str,
    *,
    input_size: tuple[int, int] | None = None,
    patch: int | None = None,
    max_side: int = MAX_SIDE,
) -> Image.Image:
    """The image (shrunk to `max_side`) with each map blended over the area the model saw, face
    boxes drawn and numbered, and `text` in a caption strip below.

    `input_size` (width, height) and `patch` locate the grid when it does not cover the whole
    model input; by default it is assumed to.
    """
    scale = min(1.0, max_side / max(image.size))
    shown = image.convert("RGB")
    if scale < 1.0:
        shown = shown.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BILINEAR)
    canvas = np.asarray(shown, dtype=np.float64) / 255.0
    for explanation in explanations:
        x, y, w, h = explanation.region if explanation.region is not None else (0, 0, image.width, image.height)
        fx, fy = _grid_extent(explanation, input_size, patch) if input_size and patch else (1.0, 1.0)
        _paste_heat(canvas, explanation.map, (x * scale, y * scale, w * fx * scale, h * fy * scale))
    picture = Image.fromarray(np.clip(np.rint(canvas * 255), 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=max(11, min(18, picture.width // 28)))
    for number, explanation in enumerate((e for e in explanations if e.box is not None), 1):
        x, y, w, h = (v * scale for v in explanation.box)
        draw.rectangle((x, y, x + w, y + h), outline=BOX_COLOR, width=2)
        draw.text((x + 3, y + 2), str(number), fill=BOX_COLOR, font=font)
    lines = _wrap(draw, text, font, picture.width - 8)
    line_height = font.getbbox("Ag")[3] + 4
    framed = Image.new("RGB", (picture.width, picture.height + line_height * len(lines) + 6), (255, 255, 255))
    framed.paste(picture, (0, 0))
    strip = ImageDraw.Draw(framed)
    for i, line in enumerate(lines):
        strip.text((4, picture.height + 3 + i * line_height), line, fill=(0, 0, 0), font=font)
    return framed


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    lines, current = [], ""
    for word in text.split(" "):
        candidate = f"{current} {word}".strip()
        if current and draw.textlength(candidate, font=font) > width:
            lines.append(current)
            current = word
        else:
            current = candidate
    return [*lines, current] if current else lines or [""]


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def data_uri(image: Image.Image, max_side: int = THUMB_SIDE) -> str:
    """A small JPEG thumbnail as a data URI (base64 text only: nothing in it can break out of an attribute)."""
    thumb = image.convert("RGB")
    thumb.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    thumb.save(buffer, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


@dataclass
class Card:
    """One input on the contact sheet."""

    name: str
    order: int
    text: str = ""
    score: float | None = None  # the lowest answer score among the image's maps (its most doubtful face)
    thumbnail: str | None = None  # data URI
    file: str | None = None  # the overlay PNG, relative to the sheet
    flags: tuple[str, ...] = ()  # "uncertain", "wrong (expected X)"
    error: str | None = None


STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
#cards{display:flex;flex-wrap:wrap;gap:12px}
.card{width:236px;border:1px solid #ccc;border-radius:6px;padding:6px;font-size:13px;overflow-wrap:anywhere}
.card img{display:block;max-width:224px;margin:auto}.name{color:#555;font-size:12px}
.flag{background:#fde2b8;border-radius:3px;padding:0 4px;margin-right:4px}
.error{border-color:#c33}.error .why{color:#c33}button{margin-right:6px}"""

SCRIPT = """function sortCards(key, direction) {
  const box = document.getElementById('cards');
  const cards = Array.from(box.children);
  cards.sort((a, b) => (parseFloat(a.dataset[key]) - parseFloat(b.dataset[key])) * direction
                        || parseFloat(a.dataset.order) - parseFloat(b.dataset.order));
  cards.forEach(card => box.appendChild(card));
}"""


MEANING = {
    "attribution": "attention that raised the predicted label's score (gradient-weighted rollout)",
    "rollout": "where the attention that reached the read-out came from, whatever the label (rollout)",
}


def _card_html(card: Card) -> str:
    score = -1.0 if card.score is None else card.score  # errors sort before every real score when ascending
    attrs = f'data-order="{card.order}" data-score="{score:.6f}" data-flag="{0 if card.flags or card.error else 1}"'
    name = f'<div class="name">{escape(card.name)}</div>'
    if card.error is not None:
        return f'<div class="card error" {attrs}>{name}<div class="why">error: {escape(card.error)}</div></div>'
    picture = ""
    if card.thumbnail:
        picture = f'<img src="{card.thumbnail}" alt="{escape(card.name)}">'
        if card.file:
            picture = f'<a href="{escape(card.file)}">{picture}</a>'
    flags = "".join(f'<span class="flag">{escape(flag)}</span>' for flag in card.flags)
    return f'<div class="card" {attrs}>{picture}<div>{flags}{escape(card.text)}</div>{name}</div>'


def contact_sheet(cards: Sequence[Card], *, model: str, method: str, min_confidence: float | None = None) -> str:
    """The HTML page: flagged cards (uncertain or wrong) first when `min_confidence` is given, else
    input order; buttons re-sort by score without reloading."""
    ordered = (
        sorted(cards, key=lambda c: (not (c.flags or c.error), c.order))
        if min_confidence is not None
        else sorted(cards, key=lambda c: c.order)
    )
    failed = sum(c.error is not None for c in cards)
    flagged = sum(bool(c.flags) for c in cards)
    summary = f"inputs: {len(cards)}, unreadable: {failed}"
    if min_confidence is not None:
        summary += (
            f", flagged: {flagged} (uncertain below {min_confidence:g}, contradicting the label the "
            "data states, or no face found)"
        )
    buttons = (
        "<button onclick=\"sortCards('order', 1)\">input order</button>"
        "<button onclick=\"sortCards('score', 1)\">score: lowest first</button>"
        "<button onclick=\"sortCards('score', -1)\">score: highest first</button>"
        "<button onclick=\"sortCards('flag', 1)\">flagged first</button>"
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>vitgender explanations</title>"
        f"<style>{STYLE}</style><script>{SCRIPT}</script></head><body>"
        f"<h1>vitgender explain</h1><p>model: {escape(model)}; method: {escape(method)}; {escape(summary)}. "
        f"Brighter = {escape(MEANING.get(method, 'more weight in the map'))}; colours are scaled to each "
        "map's own peak, so compare places within an image, not heat across images.</p>"
        f"<p>{buttons}</p><div id='cards'>{''.join(_card_html(c) for c in ordered)}</div></body></html>\n"
    )


SHEET = "index.html"


def is_explain_output(folder: Path) -> bool:
    """An explain output written before output folders carried a marker: its sheet says so."""
    sheet = Path(folder) / SHEET
    try:
        return sheet.is_file() and "<h1>vitgender explain</h1>" in sheet.read_text(errors="replace")
    except OSError:
        return False


def _file_name(order: int, name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).name).lstrip("._")[:80] or "image"
    return f"{order + 1:04d}-{stem}.png"


@dataclass
class SheetWriter:
    """Writes one overlay PNG per explained input into `folder` as results stream in, keeps a
    thumbnail card for each, and writes the contact sheet on `close`."""

    folder: Path
    explainer: Explainer
    method: str
    faces: bool = False
    min_confidence: float | None = None
    cards: list[Card] = field(default_factory=list)
    written: int = 0

    def flags(self, item: ExplainedImage) -> tuple[str, ...]:
        found = []
        if self.faces and not item.explanations:
            found.append("no face found")
        if any(is_uncertain(e, self.min_confidence) for e in item.explanations):
            found.append("uncertain")
        if item.expected is not None and any(e.label != item.expected for e in item.explanations):
            found.append(f"wrong (expected {item.expected})")
        return tuple(found)

    def add(self, item: ExplainedImage) -> None:
        order = len(self.cards)
        if item.error is not None:
            self.cards.append(Card(item.name, order, error=item.error))
            return
        text = caption(item.explanations, self.method, self.min_confidence, self.faces)
        picture = overlay(
            item.image, item.explanations, text, input_size=self.explainer.input_size, patch=self.explainer.patch_size
        )
        file = _file_name(order, item.name)
        (self.folder / file).write_bytes(png_bytes(picture))
        self.written += 1
        score = min((e.score for e in item.explanations), default=None)
        self.cards.append(Card(item.name, order, text, score, data_uri(picture), file, self.flags(item)))

    def close(self, model: str) -> Path:
        path = self.folder / SHEET
        path.write_text(
            contact_sheet(self.cards, model=model, method=self.method, min_confidence=self.min_confidence),
            encoding="utf-8",
        )
        return path

"""Labelled synthetic captchas drawn from fonts, in the binarized representation (text 255 on 0).

Glyph bitmaps are rendered once per (font, size, stroke, character) and cached; a captcha is then a few
rotations and maximum-composites of small arrays, which keeps rendering above 1,000 captchas/s per core.
Work is split into fixed chunks, each with its own seed, so the output is identical whatever the number
of worker processes.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from skimage.measure import label as label_parts
from skimage.segmentation import expand_labels

from .config import RenderConfig
from .errors import SimcaptchaError
from .fonts import resolve_fonts
from .machine import process_map
from .progress import progress

CHUNK = 500  # captchas per seeded work unit


@lru_cache(maxsize=4096)
def load_font(path: str, size: int) -> ImageFont.FreeTypeFont:
    try:
        return ImageFont.truetype(path, size)
    except OSError as error:
        raise SimcaptchaError(f"font {path}: cannot be loaded ({error})") from None


@lru_cache(maxsize=200_000)
def glyph_bitmap(path: str, size: int, stroke: int, char: str) -> Image.Image:
    """The character's tight 'L' bitmap (255 = ink), drawn once and reused.

    An outline (``stroke``) thickens every part of the glyph, but parts the font draws apart stay apart: where
    the thickened dot of an i or j would join its stem, one pixel is left clear, as a site drawing a bold
    face keeps it (without that the outlined i is an l, and a reader cannot learn to tell them apart).
    """
    font = load_font(path, size)
    left, top, right, bottom = font.getbbox(char, stroke_width=stroke)
    image = Image.new("L", (max(1, right - left), max(1, bottom - top)), 0)
    ImageDraw.Draw(image).text((-left, -top), char, fill=255, font=font, stroke_width=stroke, stroke_fill=255)
    if stroke:
        plain = Image.new("L", image.size, 0)
        ImageDraw.Draw(plain).text((-left, -top), char, fill=255, font=font)
        ink = np.asarray(image).copy()
        ink[_joins(np.asarray(plain) > 127, ink > 127, stroke)] = 0
        image = Image.fromarray(ink)
    return image


def _joins(parts: np.ndarray, thick: np.ndarray, stroke: int) -> np.ndarray:
    """Pixels of the outlined ink ``thick`` where the outline of one part of ``parts`` (the glyph without its
    outline) meets another's: each ink pixel belongs to its nearest part, and a pixel touching (by side or corner)
    a part numbered lower is cleared, which leaves a one-pixel seam between them."""
    labels = label_parts(parts, connectivity=2)
    if labels.max() < 2:
        return np.zeros_like(thick)
    nearest = np.where(thick, expand_labels(labels, distance=stroke + 2), 0)
    padded = np.pad(nearest, 1)
    height, width = thick.shape
    joins = np.zeros_like(thick)
    for row in range(3):  # the eight neighbours, so the parts do not touch even at a corner
        for col in range(3):
            neighbour = padded[row:row + height, col:col + width]
            joins |= (neighbour > 0) & (neighbour < nearest)
    return joins


@lru_cache(maxsize=200_000)
def glyph_centre(path: str, size: int, stroke: int, char: str) -> float:
    """Vertical centre of the character's ink below the line's top (pixels): where it sits on the baseline."""
    _, top, _, bottom = load_font(path, size).getbbox(char, stroke_width=stroke)
    return (top + bottom) / 2


@lru_cache(maxsize=200_000)
def stretched_glyph(path: str, size: int, stroke: int, char: str, width_factor: float) -> Image.Image:
    """The glyph's bitmap with its width times ``width_factor`` (a condensed or wide cut of the face)."""
    bitmap = glyph_bitmap(path, size, stroke, char)
    if width_factor == 1.0:
        return bitmap
    return bitmap.resize((max(1, round(bitmap.width * width_factor)), bitmap.height), Image.BILINEAR)


def rotated_glyph(path: str, size: int, stroke: int, char: str, angle: float, width_factor: float = 1.0) -> np.ndarray:
    """Glyph, its width times ``width_factor``, rotated about its centre (counter-clockwise degrees), canvas
    expanded to fit."""
    bitmap = stretched_glyph(path, size, stroke, char, width_factor)
    if abs(angle) > 0.5:
        bitmap = bitmap.rotate(angle, resample=Image.BILINEAR, expand=True)
    return np.asarray(bitmap)


def _uniform_int(rng: np.random.Generator, bounds: list[int] | tuple[int, int]) -> int:
    return int(rng.integers(bounds[0], bounds[1] + 1))


def _fit_gaps(gaps: list[int], smallest: int, room: int) -> list[int]:
    """Narrow the gaps (not below ``smallest``) until the text fits in ``room`` pixels, so no character is cut."""
    gaps = list(gaps)
    while sum(gaps) > room and any(gap > smallest for gap in gaps):
        widest = max(range(len(gaps)), key=gaps.__getitem__)
        gaps[widest] -= 1
    return gaps


def _paste_max(canvas: np.ndarray, glyph: np.ndarray, top: int, left: int) -> None:
    """Composite ``glyph`` into ``canvas`` at (top, left) by maximum, clipping at the borders."""
    height, width = canvas.shape
    g_top, g_left = max(0, -top), max(0, -left)
    c_top, c_left = max(0, top), max(0, left)
    rows = min(glyph.shape[0] - g_top, height - c_top)
    cols = min(glyph.shape[1] - g_left, width - c_left)
    if rows > 0 and cols > 0:
        region = canvas[c_top:c_top + rows, c_left:c_left + cols]
        np.maximum(region, glyph[g_top:g_top + rows, g_left:g_left + cols], out=region)


@dataclass(frozen=True)
class FontStyle:
    """A font file with the em sizes and outline widths it is drawn at ([min, max] pixels each), and how far
    below the middle its text sits (``y_shift`` pixels, negative: above)."""

    path: str
    size: tuple[int, int]
    stroke: tuple[int, int]
    y_shift: int = 0


def uniform_styles(paths: list[Path] | tuple[str, ...], config: RenderConfig) -> tuple[FontStyle, ...]:
    """Every font at render.font_size and render.stroke_width (when the pool does not choose them)."""
    return tuple(FontStyle(str(path), tuple(config.font_size), tuple(config.stroke_width)) for path in paths)


@dataclass(frozen=True)
class Renderer:
    """Everything needed to draw captchas of one site; picklable so worker processes can use it."""

    config: RenderConfig
    height: int
    width: int
    fonts: tuple[FontStyle, ...]
    mask: np.ndarray  # bool H×W, the site's fixed noise
    spans: np.ndarray | None = None  # K×2 first and last text columns of pool captchas; None: render.spacing
    line_spans: np.ndarray | None = None  # L×2 first and last columns of pool captchas' lines; None: at random

    def _gaps(self, rng: np.random.Generator, text: str, widths: list[int], width: int,
              spacing: list[int]) -> tuple[int, list[int]]:
        """Left edge and gaps of the text: spread over a pool captcha's text columns, or drawn from ``spacing``.

        A span measured on the pool is scaled by the length against the typical render.length, and its room
        shared evenly between the gaps (± render.gap_jitter), so packed or overlapping text comes out packed.
        """
        first = None  # placed by spacing: the left edge is drawn at random
        if self.spans is not None and len(text) > 1:
            first, last = self.spans[int(rng.integers(len(self.spans)))]
            room = (last - first + 1) * len(text) / np.mean(self.config.length) - sum(widths)
            share = room / (len(text) - 1)
            jitter = (-self.config.gap_jitter, self.config.gap_jitter)
            gaps = [int(round(share * (index + 1))) - int(round(share * index)) + _uniform_int(rng, jitter)
                    for index in range(len(text) - 1)]
        else:
            gaps = _fit_gaps([_uniform_int(rng, spacing) for _ in text[1:]], spacing[0], width - sum(widths))
        total = sum(widths) + sum(gaps)
        if total >= width:
            return (width - total) // 2, gaps  # too wide: centred, cut evenly at both sides
        return (int(rng.integers(0, width - total + 1)) if first is None else int(min(first, width - total))), gaps

    def _draw_text(self, rng: np.random.Generator, text: str, width: int, spacing: list[int]) -> np.ndarray:
        """Ink of ``text`` (0..255, H×width) in one font on a common baseline, each character rotated and
        offset on its own, then render.lines random strokes across it."""
        config = self.config
        style = self.fonts[int(rng.integers(len(self.fonts)))]
        size = _uniform_int(rng, style.size)
        stroke = _uniform_int(rng, style.stroke)
        intensity = _uniform_int(rng, config.text_intensity)
        glyphs = [rotated_glyph(style.path, size, stroke, char, float(rng.uniform(*config.rotation)),
                                self._width_factor(rng)) for char in text]
        left, gaps = self._gaps(rng, text, [glyph.shape[1] for glyph in glyphs], width, spacing)
        centres = [glyph_centre(style.path, size, stroke, char) for char in text]
        middle = (min(centres) + max(centres)) / 2
        ink = np.zeros((self.height, width), dtype=np.uint8)
        for index, glyph in enumerate(glyphs):
            top = (self.height - glyph.shape[0]) // 2 + int(round(centres[index] - middle)) + style.y_shift \
                + _uniform_int(rng, config.y_offset)
            if glyph.shape[0] <= self.height:
                top = min(max(top, 0), self.height - glyph.shape[0])
            _paste_max(ink, glyph, top, left)
            left += glyph.shape[1] + (gaps[index] if index < len(gaps) else 0)
        for _ in range(_uniform_int(rng, config.lines) if config.lines[1] else 0):
            self._draw_line(rng, ink)
        if intensity != 255:
            ink = (ink.astype(np.uint16) * intensity // 255).astype(np.uint8)
        return ink

    def _width_factor(self, rng: np.random.Generator) -> float:
        """One character's width factor from render.glyph_width, in steps of 0.05 so stretched glyphs are cached
        (none is drawn at the default [1, 1], which leaves the random stream as it was)."""
        low, high = self.config.glyph_width
        if low == high == 1.0:
            return 1.0
        return round(float(rng.uniform(low, high)) * 20) / 20

    def _draw_line(self, rng: np.random.Generator, ink: np.ndarray) -> None:
        """A stroke at random heights (a site's random line) from the left half to the right half, or across the
        columns a pool captcha's line spans, through render.line_bends corners at random points taken left to
        right: a corner left of the start makes a hook."""
        height, width = ink.shape
        span = None if self.line_spans is None else self.line_spans[int(rng.integers(len(self.line_spans)))]
        start = (float(rng.uniform(0, width / 2) if span is None else span[0]), float(rng.uniform(0, height)))
        end = (float(rng.uniform(width / 2, width) if span is None else span[1]), float(rng.uniform(0, height)))
        bends = _uniform_int(rng, self.config.line_bends) if self.config.line_bends[1] else 0
        corners = sorted((float(rng.uniform(0, width)), float(rng.uniform(0, height))) for _ in range(bends))
        canvas = Image.fromarray(ink)
        ImageDraw.Draw(canvas).line([start, *corners, end], fill=255, width=_uniform_int(rng, self.config.line_width),
                                    joint="curve")
        ink[...] = np.asarray(canvas)

    def _finish(self, rng: np.random.Generator, ink: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Background, site mask and salt noise around the ink."""
        config = self.config
        image = np.maximum(ink, np.uint8(_uniform_int(rng, config.background_intensity)))
        if config.use_mask and mask.any():
            image[mask] = max(config.text_intensity)
        if config.salt > 0:
            flip = rng.random(image.shape) < config.salt
            image[flip] = 255 - image[flip]
        return image

    def captcha(self, rng: np.random.Generator) -> tuple[np.ndarray, str]:
        config = self.config
        length = _uniform_int(rng, config.length)
        text = "".join(config.charset[i] for i in rng.integers(len(config.charset), size=length))
        ink = self._draw_text(rng, self._drawn_case(rng, text), self.width, config.spacing)
        return self._finish(rng, ink, self.mask), text

    def glyph(self, rng: np.random.Generator) -> tuple[np.ndarray, str]:
        """One character in a slot 1/max_length of the captcha's width, over the matching slice of the mask."""
        config = self.config
        slots = config.length[1]
        slot_width = self.width // slots
        char = config.charset[int(rng.integers(len(config.charset)))]
        ink = self._draw_text(rng, self._drawn_case(rng, char), slot_width, [0, 0])
        slot = int(rng.integers(slots))
        mask = self.mask[:, slot * slot_width:(slot + 1) * slot_width]
        return self._finish(rng, ink, mask), char

    def _drawn_case(self, rng: np.random.Generator, text: str) -> str:
        """The text as drawn: with render.case_insensitive each letter in either case, even odds (no draw
        otherwise, which leaves the random stream as it was)."""
        if not self.config.case_insensitive:
            return text
        flips = rng.random(len(text)) < 0.5
        return "".join(char.swapcase() if flip and len(char.swapcase()) == 1 else char
                       for char, flip in zip(text, flips))

    def render_chunk(self, job: tuple[str, int, int]) -> tuple[np.ndarray, list[str]]:
        """Render ``count`` items of ``kind`` with the chunk's own seed (seed, kind, chunk index)."""
        kind, chunk_index, count = job
        rng = np.random.default_rng([self.config.seed, 0 if kind == "captcha" else 1, chunk_index])
        draw = self.captcha if kind == "captcha" else self.glyph
        items = [draw(rng) for _ in range(count)]
        return np.stack([image for image, _ in items]), [label for _, label in items]


def render_set(renderer: Renderer, kind: str, count: int, workers: int) -> tuple[np.ndarray, list[str]]:
    """Render ``count`` captchas or glyphs in parallel; identical output for any ``workers``."""
    jobs = [(kind, index, min(CHUNK, count - start)) for index, start in enumerate(range(0, count, CHUNK))]
    results = []
    with progress(total=count, desc=f"render {kind}s", unit="img") as bar:
        for result in process_map(renderer.render_chunk, jobs, workers):
            results.append(result)
            bar.update(len(result[1]))
    if not results:
        slot_width = renderer.width // renderer.config.length[1]
        width = renderer.width if kind == "captcha" else slot_width
        return np.zeros((0, renderer.height, width), dtype=np.uint8), []
    return np.concatenate([images for images, _ in results]), [label for _, labels in results for label in labels]


def candidate_fonts(config: RenderConfig) -> list[Path]:
    """render.fonts that draw every character of render.charset; each skipped font gets a warning on stderr."""
    usable, lacking = fonts_with_glyphs(resolve_fonts(config.fonts), config.drawn_charset())
    for path in lacking:
        print(f"warning: skipping font {path}: it lacks characters of render.charset", file=sys.stderr)
    return usable


def fonts_with_glyphs(fonts: list[Path], charset: str) -> tuple[list[Path], list[Path]]:
    """Split fonts into those that draw every character of the charset and those that do not.

    A missing glyph would teach the reader a wrong shape for a label. It draws as the font's "not defined"
    box (or as nothing), so each glyph is compared with a code point that no font defines.
    """
    usable, lacking, drawn = [], [], set()
    for path in fonts:
        missing = np.asarray(glyph_bitmap(str(path), 32, 0, "\U0010fffd"))
        lacks = False
        for char in charset.replace(" ", ""):
            bitmap = np.asarray(glyph_bitmap(str(path), 32, 0, char))
            if not bitmap.any() or (bitmap.shape == missing.shape and np.array_equal(bitmap, missing)):
                lacks = True
            else:
                drawn.add(char)
        (lacking if lacks else usable).append(path)
    if not usable:
        nowhere = "".join(char for char in charset.replace(" ", "") if char not in drawn)
        raise SimcaptchaError(f"render.fonts: no font draws every character of render.charset {charset!r}"
                              + (f"; none draws {nowhere!r}" if nowhere else ""))
    return usable, lacking

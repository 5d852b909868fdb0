"""What the renderer should draw, measured on the unlabelled pool: text height, stroke width, length and fonts.

A user should not have to guess a site's font size or weight. Text components (connected ink outside the
fixed-noise mask) are measured on real captchas and on captchas rendered by each candidate font through the
same code, so whatever the measurement's biases (lines cutting glyphs, touching characters) they cancel:

- the em size of each font is scaled until its components are as tall as the pool's (median);
- its outline width is the one whose mean stroke width (twice the distance to the background along the
  skeleton) is nearest the pool's;
- fonts are ranked by how well their component shapes and the pool's explain each other: each shape, reduced
  to a normalised 20×20 image, is matched to its most similar counterpart (cosine), in both directions;
  fonts that miss the pool's height, or only reach it at an outlying size, rank last;
- each font is moved up or down until its text sits at the pool's height (median row of the text's ink): a
  site that draws its text low (Kaggle: 5 px below the middle) would otherwise be read where it never is.

Where the site strikes its text with random thin lines (``estimate.opening``), the columns those lines span are
kept per pool captcha too, so rendered lines cross the text where the site's do.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.measure import label, regionprops
from skimage.morphology import skeletonize

from .config import EstimateConfig, RenderConfig
from .errors import SimcaptchaError
from .fonts import font_from_id, font_id
from .imaging import contact_sheet
from .machine import process_map
from .progress import progress
from .rendering import FontStyle, Renderer, candidate_fonts, uniform_styles
from .store import read_json

SHAPE_SIDE = 20  # components are compared as SHAPE_SIDE² images
MAX_STROKE = 4  # outline widths tried per font


@dataclass(frozen=True)
class TextComponents:
    """Connected text components of a set of binarized captchas."""

    shapes: np.ndarray  # N×SHAPE_SIDE² float32, each centred and scaled to unit length
    heights: np.ndarray  # N pixels
    stroke_width: float  # mean stroke width over all images, pixels
    per_image: np.ndarray  # components per image
    spans: np.ndarray  # K×2 first and last column of the text of each image that has any
    rows: np.ndarray  # K the mean row of the text's ink in each image that has any
    line_spans: np.ndarray  # L×2 first and last column of the thin strokes ``opening`` removed, per image with any


def _shape_vector(component: np.ndarray) -> np.ndarray:
    """A component's bitmap padded to a square (aspect kept) and resized to SHAPE_SIDE²."""
    height, width = component.shape
    side = max(height, width)
    square = np.zeros((side, side), np.uint8)
    top, left = (side - height) // 2, (side - width) // 2
    square[top:top + height, left:left + width] = component * 255
    small = Image.fromarray(square).resize((SHAPE_SIDE, SHAPE_SIDE), Image.BILINEAR)
    return np.asarray(small, np.float32).ravel() / 255


def thin_strokes(ink: np.ndarray, opening: int) -> tuple[np.ndarray, np.ndarray]:
    """``ink`` split into what an opening by a (2·opening+1)² square keeps and the thin ink it removed away from
    that: a site's random lines (their parts across glyphs go with the glyphs). ``opening`` 0 keeps all ink."""
    if not opening:
        return ink, np.zeros_like(ink)
    square = np.ones((2 * opening + 1, 2 * opening + 1), bool)
    thick = ndimage.binary_opening(ink, square)
    return thick, ink & ~ndimage.binary_dilation(thick, square)


def outside_mask(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Where text is measured: everywhere but the fixed-noise mask grown by one pixel (its anti-aliased rim)."""
    return ~ndimage.binary_dilation(mask, iterations=1) if mask.any() else np.ones(shape, bool)


def image_text(image: np.ndarray, outside: np.ndarray, min_area: int,
               opening: int) -> tuple[np.ndarray, list, np.ndarray]:
    """One uint8 image's text: its ink outside the mask, strokes thinner than 2·opening + 1 opened away, in
    components of at least ``min_area`` pixels. Returns the text ink, its components and the thin ink removed."""
    thick, thin = thin_strokes((image > 127) & outside, opening)
    labels = label(thick)
    text = [component for component in regionprops(labels) if component.area >= min_area]
    return np.isin(labels, [component.label for component in text]), text, thin


def text_ink(images: np.ndarray, mask: np.ndarray, min_area: int, opening: int) -> np.ndarray:
    """N×H×W bool: each image's text ink as ``text_components`` measures it (specks and thin lines left out)."""
    outside = outside_mask(mask, images.shape[1:])
    return np.stack([image_text(image, outside, min_area, opening)[0] for image in images])


def text_components(images: np.ndarray, mask: np.ndarray, min_area: int, opening: int = 0) -> TextComponents:
    """Measure the ink outside the (one-pixel-grown) mask of uint8 N×H×W images, text 255.

    ``opening`` > 0 first removes strokes thinner than 2·opening + 1 pixels (a site's random thin lines, which
    would join every character into one component); what it removed away from the text is measured as lines.
    """
    outside = outside_mask(mask, images.shape[1:])
    shapes, heights, strokes, per_image, spans, rows, line_spans = [], [], [], [], [], [], []
    for image in images:
        ink, text, thin = image_text(image, outside, min_area, opening)
        if opening:
            line_columns = np.flatnonzero(thin.any(axis=0))
            if len(line_columns):
                line_spans.append((int(line_columns[0]), int(line_columns[-1])))
        skeleton = skeletonize(ink)
        if skeleton.any():
            strokes.append(float((2 * ndimage.distance_transform_edt(ink)[skeleton]).mean()))
            columns = np.flatnonzero(ink.any(axis=0))
            spans.append((int(columns[0]), int(columns[-1])))
            rows.append(float(np.nonzero(ink)[0].mean()))
        for component in text:
            heights.append(component.image.shape[0])
            shapes.append(_shape_vector(component.image))
        per_image.append(len(text))
    if not shapes:
        raise SimcaptchaError(f"estimate: no text components of at least {min_area} pixels in {len(images)} images")
    matrix = np.stack(shapes)
    matrix -= matrix.mean(axis=1, keepdims=True)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True) + 1e-9
    return TextComponents(matrix, np.asarray(heights), float(np.mean(strokes)), np.asarray(per_image),
                          np.asarray(spans).reshape(-1, 2), np.asarray(rows), np.asarray(line_spans).reshape(-1, 2))


def shape_similarity(pool: TextComponents, rendered: TextComponents) -> float:
    """Mean best-match cosine of each pool shape among the rendered ones and of each rendered among the pool."""
    similarity = pool.shapes @ rendered.shapes.T
    return float(0.5 * (similarity.max(axis=1).mean() + similarity.max(axis=0).mean()))


@dataclass(frozen=True)
class FontFit:
    """One candidate font drawn at the size and outline that best match the pool, and how close it comes."""

    font: str  # path
    size: int
    stroke: int
    similarity: float
    height: float
    stroke_width: float
    y_shift: int  # pixels down (negative: up) that put the font's text at the pool's height


def _probe(render: RenderConfig, config: EstimateConfig, height: int, width: int, mask: np.ndarray,
           font: str, size: int, stroke: int) -> TextComponents:
    """Components of ``config.probe`` captchas drawn with one font at one size; the same seed for every font.

    Characters are placed by render.spacing, not packed into the pool's spans: packed glyphs merge and the mask
    cuts them into fragments, whose heights no longer grow with the em size (on the default sample fitted
    sizes ran away to 47-51 px).
    """
    style = FontStyle(font, (size, size), (stroke, stroke))
    probe_config = dataclasses.replace(render, salt=0.0, use_mask=True)  # the pool's images carry the mask
    renderer = Renderer(probe_config, height, width, (style,), mask)
    rng = np.random.default_rng([config.seed, 2])
    images = np.stack([renderer.captcha(rng)[0] for _ in range(config.probe)])
    return text_components(images, mask, config.min_area, config.opening)


def fit_font(font: str, pool: TextComponents, render: RenderConfig, config: EstimateConfig, height: int,
             width: int, mask: np.ndarray) -> FontFit:
    """Scale the font to the pool's text height, pick its outline by stroke width, and score its shapes."""
    target = float(np.median(pool.heights))

    def scaled(size: int, stroke: int, rounds: int) -> int:
        """The height is nearly proportional to the em size: a few rescalings converge."""
        for _ in range(rounds):
            measured = float(np.median(_probe(render, config, height, width, mask, font, size, stroke).heights))
            size = int(np.clip(round(size * target / max(measured, 1.0)), 4, 4 * height))
        return size

    size = scaled(int(round(np.mean(render.font_size))), 0, 3)
    best = None
    for stroke in range(MAX_STROKE + 1):
        components = _probe(render, config, height, width, mask, font, size, stroke)
        gap = abs(components.stroke_width - pool.stroke_width)
        if best is None or gap < best[0]:
            best = (gap, stroke)
        if components.stroke_width > pool.stroke_width:  # wider outlines only widen further
            break
    stroke = best[1]
    size = scaled(size, stroke, 2) if stroke else size  # an outline adds height: fit the size again with it
    components = _probe(render, config, height, width, mask, font, size, stroke)
    return FontFit(font, size, stroke, round(shape_similarity(pool, components), 5),
                   float(np.median(components.heights)), round(components.stroke_width, 3),
                   int(round(np.median(pool.rows) - np.median(components.rows))))


def estimate_length(pool: TextComponents) -> tuple[int, list[int]]:
    """Characters per captcha, read as text components per pool image: the median and the middle 80 % range.

    Touching characters merge and lines split others, so this is a first guess for a site whose length is
    not known, not a measurement; render.length set by the user wins (the stage warns when they disagree).
    """
    low, middle, high = np.percentile(pool.per_image, [10, 50, 90])
    return max(1, int(round(middle))), [max(1, int(round(low))), max(1, int(round(high)))]


def _fit_job(job: tuple) -> FontFit:
    """fit_font, or a last-ranked fit for a font that leaves no text component (too thin for the opening)."""
    try:
        return fit_font(*job)
    except SimcaptchaError:
        return FontFit(job[0], 0, 0, -1.0, 0.0, 0.0, 0)


def estimate_site(pool_images: np.ndarray, mask: np.ndarray, fonts: list[str], render: RenderConfig,
                  config: EstimateConfig) -> dict:
    """Measure ``config.sample`` pool captchas and fit every candidate font; fonts ranked closest first."""
    rows = np.sort(np.random.default_rng(config.seed).permutation(len(pool_images))[:config.sample])
    pool = text_components(pool_images[rows], mask, config.min_area, config.opening)
    height, width = pool_images.shape[1:]
    jobs = [(font, pool, render, config, height, width, mask) for font in fonts]
    fits = list(progress(process_map(_fit_job, jobs, config.workers), total=len(jobs), desc="fit fonts",
                         unit="font"))
    target, typical_size = float(np.median(pool.heights)), float(np.median([fit.size for fit in fits]))

    def plausible(fit: FontFit) -> bool:
        """Reached the pool's text height at a size near the others' (an old-style or tiny font blown up
        to reach it overflows the captcha, however well its few visible shapes match)."""
        return abs(fit.height - target) <= 0.15 * target and fit.size <= 1.5 * typical_size

    fits.sort(key=lambda fit: (not plausible(fit), -fit.similarity, fonts.index(fit.font)))
    length, length_range = estimate_length(pool)
    return {
        "measured_captchas": len(rows),
        "text_height": target,
        "stroke_width": round(pool.stroke_width, 3),
        "length": length,
        "length_range": length_range,
        "text_columns": np.percentile(pool.spans, [10, 50, 90], axis=0).round().astype(int).T.tolist(),
        "text_spans": pool.spans.tolist(),
        "line_spans": pool.line_spans.tolist(),
        "fonts": [{**dataclasses.asdict(fit), "font": font_id(fit.font)} for fit in fits],
    }


def fitted_styles(site: dict, count: int, spread: float) -> tuple[FontStyle, ...]:
    """The ``count`` closest fonts of an ``estimate_site`` result, each at its size +- ``spread``, its outline and
    its height."""
    styles = []
    for fit in site["fonts"][:count]:
        low, high = int(round(fit["size"] * (1 - spread))), int(round(fit["size"] * (1 + spread)))
        styles.append(FontStyle(str(font_from_id(fit["font"])), (max(low, 4), max(high, 4)),
                                (fit["stroke"], fit["stroke"]), fit["y_shift"]))
    return tuple(styles)


def pool_placement(site: dict, render: RenderConfig) -> dict[str, np.ndarray | None]:
    """The Renderer's ``spans`` and ``line_spans`` by the pool's (render.placement pool), or None for both
    (render.spacing: text placed at random, lines anywhere); no line was measured: None."""
    if render.placement != "pool":
        return {"spans": None, "line_spans": None}
    lines = np.asarray(site["line_spans"]).reshape(-1, 2)
    return {"spans": np.asarray(site["text_spans"]).reshape(-1, 2), "line_spans": lines if len(lines) else None}


def load_site(path) -> dict:
    """The estimate stage's result, with a one-line error when it is missing or torn."""
    return read_json(path, "run the estimate stage first")


def site_styles(config: RenderConfig, site: dict) -> tuple[FontStyle, ...]:
    """What render-fonts draws: the closest fonts as fitted to the pool, or every font of render.fonts at the
    configured sizes (render.closest_fonts 0)."""
    if config.closest_fonts:
        return fitted_styles(site, config.closest_fonts, config.size_spread)
    return uniform_styles(candidate_fonts(config), config)


def fonts_sheet(site: dict, pool: np.ndarray, render: RenderConfig, mask: np.ndarray, count: int = 8) -> np.ndarray:
    """A contact sheet to judge the font fit by eye: real captchas above, the best fitted fonts drawn below."""
    shown = fitted_styles(site, count, 0.0)
    rng = np.random.default_rng(0)
    height, width = mask.shape
    placement = pool_placement(site, render)
    drawn = [Renderer(render, height, width, (style,), mask, **placement).captcha(rng)[0] for style in shown]
    captions = ["real"] * len(shown) + [f"{fit['font'].split('/')[-1][:18]} {fit['size']}px +{fit['stroke']}"
                                        for fit in site["fonts"][:len(shown)]]
    return contact_sheet(list(pool[:len(shown)]) + drawn, captions, columns=len(shown))

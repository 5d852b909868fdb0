"""Tests for simcaptcha.estimate: measuring text components and fitting candidate fonts to an unlabelled pool.

The "pool" stands in for a site's real captchas: it is rendered from one vendored font at a known size and
outline, so a fit can be checked against the truth. Images are 40×80 with three characters; probes are small
(EstimateConfig.probe 20) so every fit takes a fraction of a second.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import FONT
from simcaptcha.config import EstimateConfig, RenderConfig
from simcaptcha.errors import SimcaptchaError
from simcaptcha.estimate import (TextComponents, estimate_length, estimate_site, fit_font, fitted_styles,
                                 load_site, pool_placement, shape_similarity, text_components)
from simcaptcha.fonts import FONTDATA_DIR, font_id
from simcaptcha.rendering import FontStyle, Renderer, render_set
from simcaptcha.store import write_json

BOLD = str(FONTDATA_DIR / "Liberation-Sans" / "LiberationSans-Bold.ttf")
REGULAR = str(FONTDATA_DIR / "Liberation-Sans" / "LiberationSans-Regular.ttf")
SCRIPT = str(FONTDATA_DIR / "Dancing-Script" / "DancingScript-Regular.otf")
MONO = str(FONTDATA_DIR / "Courier-Prime" / "CourierPrime.otf")
H, W = 40, 80
NO_MASK = np.zeros((H, W), dtype=bool)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def render_config(**changes) -> RenderConfig:
    """The site's drawing parameters, except the font size and outline, which the pool's FontStyle sets."""
    settings = dict(length=[3, 3], font_size=[32, 32], stroke_width=[0, 0], rotation=[-10.0, 10.0],
                    spacing=[2, 6], y_offset=[-3, 3], use_mask=True, seed=3)
    settings.update(changes)
    return RenderConfig(**settings)


def estimate_config(**changes) -> EstimateConfig:
    settings = dict(sample=60, probe=20, min_area=20, seed=0, workers=1)
    settings.update(changes)
    return EstimateConfig(**settings)


def line_mask() -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    mask[4, :] = True
    mask[:, 50] = True
    return mask


def render_pool(font: str, size: int, stroke: int, count: int = 60, mask: np.ndarray = NO_MASK,
                y_shift: int = 0, **changes) -> np.ndarray:
    renderer = Renderer(render_config(seed=11, **changes), H, W,
                        (FontStyle(font, (size, size), (stroke, stroke), y_shift),), mask)
    images, _ = render_set(renderer, "captcha", count, workers=1)
    return images


def bars(count: int, width: int = 3, height: int = 20) -> np.ndarray:
    """One image with ``count`` vertical bars side by side."""
    image = np.zeros((1, H, W), np.uint8)
    for index in range(count):
        left = 4 + index * (width + 6)
        image[0, 10:10 + height, left:left + width] = 255
    return image


def rings(count: int, side: int = 16, wall: int = 3) -> np.ndarray:
    image = np.zeros((1, H, W), np.uint8)
    for index in range(count):
        left = 2 + index * (side + 3)
        image[0, 10:10 + side, left:left + side] = 255
        image[0, 10 + wall:10 + side - wall, left + wall:left + side - wall] = 0
    return image


# ---------------------------------------------------------------- text_components
def test_two_rectangles_are_two_components_of_their_heights():
    mask = np.zeros((H, W), dtype=bool)
    mask[:, 60] = True  # a fixed-noise line, away from the text
    image = np.zeros((1, H, W), np.uint8)
    image[0, 5:25, 5:11] = 255  # 20 tall, 6 wide
    image[0, 8:38, 30:34] = 255  # 30 tall, 4 wide
    image[0][mask] = 255  # the pool's images carry the mask
    components = text_components(image, mask, min_area=30)
    assert components.per_image.tolist() == [2]
    assert sorted(components.heights.tolist()) == [20, 30]
    assert components.shapes.shape == (2, 400) and components.shapes.dtype == np.float32
    # each shape is centred and of unit length, so a self-match has cosine 1
    np.testing.assert_allclose(components.shapes.mean(axis=1), 0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(components.shapes, axis=1), 1, atol=1e-5)


def test_per_image_counts_follow_the_images():
    images = np.concatenate([bars(1), bars(3), bars(2)])
    components = text_components(images, NO_MASK, min_area=10)
    assert components.per_image.tolist() == [1, 3, 2]
    assert components.heights.tolist() == [20] * 6


@pytest.mark.parametrize("width", [2, 3, 4, 5, 6, 8])
def test_stroke_width_of_a_bar_is_about_its_width(width):
    # 2 x distance-to-background on the skeleton: a bar k wide measures k (even k) or k + 1 (odd k: the centre
    # pixel is (k + 1) / 2 from the first background pixel); the ends of the skeleton pull it slightly down.
    image = np.zeros((1, H, W), np.uint8)
    image[0, 4:36, 20:20 + width] = 255
    stroke = text_components(image, NO_MASK, min_area=1).stroke_width
    assert width - 0.5 <= stroke <= width + 1.0


def test_stroke_width_grows_with_the_bar_width():
    strokes = []
    for width in (2, 4, 6, 8):
        image = np.zeros((1, H, W), np.uint8)
        image[0, 4:36, 20:20 + width] = 255
        strokes.append(text_components(image, NO_MASK, min_area=1).stroke_width)
    assert strokes == sorted(strokes) and strokes[-1] - strokes[0] > 5


def test_stroke_width_is_the_mean_over_images():
    thin, thick = np.zeros((1, H, W), np.uint8), np.zeros((1, H, W), np.uint8)
    thin[0, 4:36, 10:12] = 255
    thick[0, 4:36, 10:16] = 255
    alone = [text_components(image, NO_MASK, 1).stroke_width for image in (thin, thick)]
    both = text_components(np.concatenate([thin, thick]), NO_MASK, 1).stroke_width
    assert both == pytest.approx(np.mean(alone))


def test_specks_below_min_area_do_not_thin_the_stroke_width():
    image = np.zeros((1, H, W), np.uint8)
    image[0, 4:36, 10:16] = 255  # a 6-wide bar
    clean = text_components(image, NO_MASK, min_area=30).stroke_width
    rng = np.random.default_rng(0)
    image[0, rng.integers(0, H, 40), rng.integers(30, W, 40)] = 255  # salt: single pixels, far below min_area
    noisy = text_components(image, NO_MASK, min_area=30)
    assert noisy.per_image.tolist() == [1]  # the specks are not components...
    assert noisy.stroke_width == pytest.approx(clean, abs=0.5)  # ...nor strokes (measured: 5.9 -> 3.6)


def test_components_below_min_area_are_ignored():
    image = np.zeros((1, H, W), np.uint8)
    image[0, 2:7, 2:7] = 255  # 25 pixels
    image[0, 20:26, 20:25] = 255  # 30 pixels: exactly min_area counts
    image[0, 10:30, 50:54] = 255  # 80 pixels
    components = text_components(image, NO_MASK, min_area=30)
    assert components.per_image.tolist() == [2]
    assert sorted(components.heights.tolist()) == [6, 20]
    assert text_components(image, NO_MASK, min_area=1).per_image.tolist() == [3]


def test_ink_on_and_next_to_the_mask_is_ignored():
    mask = np.zeros((H, W), dtype=bool)
    mask[:, 40] = True
    image = np.zeros((1, H, W), np.uint8)
    image[0][mask] = 255
    image[0, 5:35, 39] = 255  # touching the line on both sides: one 3-wide bar if the mask were not grown
    image[0, 5:35, 41] = 255
    with pytest.raises(SimcaptchaError):
        text_components(image, mask, min_area=1)
    image[0, 5:35, 36:38] = 255  # two pixels away from the line: text
    components = text_components(image, mask, min_area=1)
    assert components.per_image.tolist() == [1] and components.heights.tolist() == [30]
    assert components.stroke_width == pytest.approx(2.0, abs=0.3)  # the 2-wide bar alone, not the line
    # measured without the mask, the line and the ink beside it are one more component
    assert text_components(image, NO_MASK, min_area=1).per_image.tolist() == [2]


def test_text_cut_by_the_mask_splits_into_two_components():
    mask = np.zeros((H, W), dtype=bool)
    mask[20, :] = True
    image = np.zeros((1, H, W), np.uint8)
    image[0, 5:35, 10:14] = 255
    image[0][mask] = 255
    components = text_components(image, mask, min_area=10)
    # rows 19..21 are the grown mask: 5..18 (14 rows) above and 22..34 (13 rows) below
    assert sorted(components.heights.tolist()) == [13, 14]


def test_no_component_is_a_one_line_error():
    images = np.zeros((3, H, W), np.uint8)
    images[:, 1:3, 1:3] = 255  # 4 pixels each: below min_area
    with pytest.raises(SimcaptchaError, match=r"no text components of at least 30 pixels in 3 images") as error:
        text_components(images, NO_MASK, min_area=30)
    assert "\n" not in str(error.value)
    with pytest.raises(SimcaptchaError, match="estimate:"):
        text_components(np.zeros((2, H, W), np.uint8), NO_MASK, min_area=1)


# ---------------------------------------------------------------- shape_similarity
def test_identical_components_are_similar():
    pool = text_components(np.concatenate([bars(3), rings(2)]), NO_MASK, 10)
    assert shape_similarity(pool, pool) == pytest.approx(1.0, abs=1e-5)


def test_bars_are_closer_to_bars_than_to_rings():
    bars_a = text_components(bars(4, width=3, height=20), NO_MASK, 10)
    bars_b = text_components(bars(3, width=4, height=24), NO_MASK, 10)
    ring_set = text_components(rings(3), NO_MASK, 10)
    same, different = shape_similarity(bars_a, bars_b), shape_similarity(bars_a, ring_set)
    assert same > 0.8  # a bar of another width and height is still a bar
    assert different < same - 0.5
    assert shape_similarity(ring_set, bars_a) == pytest.approx(different)  # symmetric


def test_similarity_counts_both_directions():
    # rings are explained by nothing among the bars: a pool of bars plus rings matches bars alone less well
    only_bars = text_components(bars(3), NO_MASK, 10)
    mixed = text_components(np.concatenate([bars(3), rings(3)]), NO_MASK, 10)
    assert shape_similarity(mixed, only_bars) < shape_similarity(mixed, mixed) - 0.1
    assert shape_similarity(only_bars, mixed) < 1.0 - 0.1


# ---------------------------------------------------------------- fit_font
@pytest.fixture(scope="module")
def bold_pool() -> TextComponents:
    return text_components(render_pool(BOLD, 22, 0), NO_MASK, estimate_config().min_area)


def test_fit_font_recovers_the_size_and_outline_of_the_pools_font(bold_pool):
    fit = fit_font(BOLD, bold_pool, render_config(), estimate_config(), H, W, NO_MASK)
    assert abs(fit.size - 22) <= 2  # starting from render.font_size 32
    assert fit.stroke == 0
    assert fit.height == pytest.approx(np.median(bold_pool.heights), abs=1)
    assert fit.stroke_width == pytest.approx(bold_pool.stroke_width, abs=0.3)
    assert fit.font == BOLD


@pytest.mark.parametrize("start", [14, 40])
def test_fit_font_size_does_not_depend_on_the_starting_size(bold_pool, start):
    fit = fit_font(BOLD, bold_pool, render_config(font_size=[start, start]), estimate_config(), H, W, NO_MASK)
    assert abs(fit.size - 22) <= 2


def test_fit_font_finds_an_outline():
    pool = text_components(render_pool(REGULAR, 20, 2), NO_MASK, 20)
    fit = fit_font(REGULAR, pool, render_config(), estimate_config(), H, W, NO_MASK)
    assert fit.stroke == 2
    assert fit.stroke_width == pytest.approx(pool.stroke_width, abs=0.6)


def test_fit_font_size_with_an_outlined_pool():
    pool = text_components(render_pool(REGULAR, 16, 2), NO_MASK, 20)
    fit = fit_font(REGULAR, pool, render_config(), estimate_config(), H, W, NO_MASK)
    assert fit.height == pytest.approx(np.median(pool.heights), abs=1)  # fitted text as tall as the pool's
    assert abs(fit.size - 16) <= 2


def test_the_pools_font_scores_higher_than_other_fonts(bold_pool):
    fits = {font: fit_font(font, bold_pool, render_config(), estimate_config(), H, W, NO_MASK)
            for font in (BOLD, SCRIPT, MONO)}
    assert fits[BOLD].similarity > fits[SCRIPT].similarity + 0.1
    assert fits[BOLD].similarity > fits[MONO].similarity + 0.1
    assert all(0.0 < fit.similarity <= 1.0 for fit in fits.values())


def test_fit_font_with_a_mask():
    mask = line_mask()
    pool = text_components(render_pool(BOLD, 22, 0, mask=mask), mask, 20)
    fit = fit_font(BOLD, pool, render_config(), estimate_config(), H, W, mask)
    assert abs(fit.size - 22) <= 2 and fit.stroke == 0


# ---------------------------------------------------------------- estimate_site
CANDIDATES = [SCRIPT, REGULAR, BOLD]  # the pool's font last, so ranking is not just the input order


@pytest.fixture(scope="module")
def site_pool() -> np.ndarray:
    return render_pool(BOLD, 22, 0, count=80, mask=line_mask())


@pytest.fixture(scope="module")
def site(site_pool) -> dict:
    return estimate_site(site_pool, line_mask(), CANDIDATES, render_config(), estimate_config())


def test_estimate_site_ranks_the_pools_font_first(site):
    ranked = [fit["font"] for fit in site["fonts"]]
    assert sorted(ranked) == sorted(font_id(font) for font in CANDIDATES)
    assert ranked[0] == "Liberation-Sans/LiberationSans-Bold.ttf"
    similarities = [fit["similarity"] for fit in site["fonts"]]
    assert similarities == sorted(similarities, reverse=True)
    assert abs(site["fonts"][0]["size"] - 22) <= 2 and site["fonts"][0]["stroke"] == 0


def test_estimate_site_result_fields(site, site_pool):
    assert set(site) == {"measured_captchas", "text_height", "stroke_width", "length", "length_range",
                         "text_columns", "text_spans", "line_spans", "fonts"}
    assert len(site["text_spans"]) == 60
    assert all(0 <= first < last < site_pool.shape[2] for first, last in site["text_spans"])
    (first_low, first, first_high), (last_low, last, last_high) = site["text_columns"]
    assert first_low <= first <= first_high < last_low <= last <= last_high
    assert site["measured_captchas"] == 60  # sample, of 80
    assert site["length"] == 3 and site["length_range"][0] <= 3 <= site["length_range"][1]
    assert 10 < site["text_height"] < 25
    for fit in site["fonts"]:
        assert set(fit) == {"font", "size", "stroke", "similarity", "height", "stroke_width", "y_shift"}
        assert isinstance(fit["size"], int) and isinstance(fit["stroke"], int)
    assert json.loads(json.dumps(site, allow_nan=False)) == site
    # and render-fonts can draw from it
    style = fitted_styles(site, 1, 0.0)[0]
    assert style == FontStyle(BOLD, (site["fonts"][0]["size"],) * 2, (site["fonts"][0]["stroke"],) * 2,
                              site["fonts"][0]["y_shift"])
    assert abs(site["fonts"][0]["y_shift"]) <= 1  # the pool was drawn by the same renderer, at the middle
    assert site["line_spans"] == []  # estimate.opening 0: no line is measured


def test_text_spans_are_the_first_and_last_text_columns():
    images = np.zeros((2, 30, 80), np.uint8)
    images[0, 5:25, 10:16] = images[0, 5:25, 40:47] = 255
    images[1, 5:25, 30:70] = 255
    images[1, 2, 2:5] = 255  # a speck below min_area is not text
    np.testing.assert_array_equal(text_components(images, np.zeros((30, 80), bool), 30).spans, [[10, 46], [30, 69]])


def test_pool_placement_follows_render_placement(site):
    placement = pool_placement(site, render_config())
    assert placement["spans"].shape == (len(site["text_spans"]), 2) and placement["line_spans"] is None
    lined = pool_placement({**site, "line_spans": [[3, 70], [5, 66]]}, render_config())
    np.testing.assert_array_equal(lined["line_spans"], [[3, 70], [5, 66]])
    assert pool_placement(lined, render_config(placement="spacing")) == {"spans": None, "line_spans": None}


def test_a_pool_drawn_low_fits_a_font_moved_down():
    """A site that draws its text 4 px below the middle: the fit moves the font down as far, and renders there."""
    pool = render_pool(BOLD, 22, 0, y_shift=4, y_offset=[0, 0], rotation=[0.0, 0.0])
    components = text_components(pool, NO_MASK, 20)
    config = render_config(y_offset=[0, 0], rotation=[0.0, 0.0])
    fit = fit_font(BOLD, components, config, estimate_config(), H, W, NO_MASK)
    assert abs(fit.y_shift - 4) <= 1
    site = {"fonts": [{"font": font_id(BOLD), "size": fit.size, "stroke": fit.stroke, "y_shift": fit.y_shift}]}
    images, _ = render_set(Renderer(config, H, W, fitted_styles(site, 1, 0.0), NO_MASK), "captcha", 40, workers=1)
    assert abs(np.median(text_components(images, NO_MASK, 20).rows) - np.median(components.rows)) <= 1


def test_thin_lines_are_measured_apart_from_the_text():
    """With an opening, a 1 px line from column 5 to 74 is a line span; the text's rows and spans leave it out."""
    images = np.zeros((2, H, W), np.uint8)
    images[:, 10:30, 20:28] = images[:, 10:30, 40:48] = 255
    images[:, 35, 5:75] = 255  # the line, below the text
    measured = text_components(images, NO_MASK, 30, opening=1)
    np.testing.assert_array_equal(measured.line_spans, [[5, 74], [5, 74]])
    np.testing.assert_array_equal(measured.spans, [[20, 47], [20, 47]])
    np.testing.assert_allclose(measured.rows, [19.5, 19.5])
    assert text_components(images, NO_MASK, 30).line_spans.shape == (0, 2)  # no opening: no line measured


def test_estimate_site_is_deterministic(site, site_pool):
    again = estimate_site(site_pool, line_mask(), CANDIDATES, render_config(), estimate_config())
    assert json.dumps(again, sort_keys=True) == json.dumps(site, sort_keys=True)


def test_estimate_site_sample_larger_than_the_pool(site_pool):
    result = estimate_site(site_pool[:20], line_mask(), [BOLD], render_config(), estimate_config(sample=400))
    assert result["measured_captchas"] == 20 and len(result["fonts"]) == 1


def test_estimate_site_same_result_with_worker_processes(site, site_pool):
    parallel = estimate_site(site_pool, line_mask(), CANDIDATES, render_config(), estimate_config(workers=2))
    assert parallel == site


def test_estimate_site_equal_similarities_keep_the_input_order(site_pool):
    result = estimate_site(site_pool, line_mask(), [BOLD, BOLD], render_config(), estimate_config())
    assert [fit["font"] for fit in result["fonts"]] == [font_id(BOLD)] * 2
    assert result["fonts"][0] == result["fonts"][1]


# ---------------------------------------------------------------- estimate_length
def components_per_image(counts) -> TextComponents:
    counts = np.asarray(counts)
    return TextComponents(np.zeros((max(int(counts.sum()), 1), 400), np.float32), np.ones(len(counts)), 2.0, counts,
                          np.zeros((len(counts), 2), np.int64), np.zeros(len(counts)), np.zeros((0, 2), np.int64))


def test_estimate_length_median_and_middle_80_percent():
    assert estimate_length(components_per_image(np.arange(101))) == (50, [10, 90])
    assert estimate_length(components_per_image([4] * 20)) == (4, [4, 4])
    counts = [1] * 5 + [5] * 40 + [9] * 5  # a few merged and a few split captchas
    length, (low, high) = estimate_length(components_per_image(counts))
    assert length == 5 and low <= 5 <= high and (low, high) != (1, 9)


def test_estimate_length_is_at_least_one():
    assert estimate_length(components_per_image([0] * 10 + [2])) == (1, [1, 1])
    length, low_high = estimate_length(components_per_image([0, 0, 0, 3, 3]))
    assert length == 1 and low_high[0] == 1


def test_estimate_length_from_measured_images():
    images = np.concatenate([bars(2), bars(3), bars(3), bars(3), bars(4)])
    assert estimate_length(text_components(images, NO_MASK, 10)) == (3, [2, 4])


# ---------------------------------------------------------------- fitted_styles
SITE = {"fonts": [
    {"font": "Liberation-Sans/LiberationSans-Bold.ttf", "size": 20, "stroke": 1, "similarity": 0.9, "y_shift": 2},
    {"font": "Dancing-Script/DancingScript-Regular.otf", "size": 31, "stroke": 0, "similarity": 0.8, "y_shift": 0},
    {"font": str(FONT), "size": 5, "stroke": 2, "similarity": 0.7, "y_shift": -1},
]}


def test_fitted_styles_takes_the_first_fonts_at_their_size_and_outline():
    styles = fitted_styles(SITE, 2, 0.1)
    assert styles == (FontStyle(BOLD, (18, 22), (1, 1), 2), FontStyle(SCRIPT, (28, 34), (0, 0)))
    assert fitted_styles(SITE, 1, 0.0) == (FontStyle(BOLD, (20, 20), (1, 1), 2),)


def test_fitted_styles_count_beyond_the_list_and_small_sizes():
    styles = fitted_styles(SITE, 10, 0.5)
    assert len(styles) == 3
    assert styles[2] == FontStyle(str(FONT), (4, 8), (2, 2), -1)  # a font outside fontdata by its path; never below 4
    assert fitted_styles(SITE, 0, 0.1) == ()


def test_fitted_styles_render():
    styles = fitted_styles(SITE, 2, 0.1)
    renderer = Renderer(render_config(), H, W, styles, NO_MASK)
    images, _ = render_set(renderer, "captcha", 4, workers=1)
    assert images.shape == (4, H, W) and images.any(axis=(1, 2)).all()


def test_fitted_styles_unknown_font_names_it():
    site = {"fonts": [{"font": "Gone-Family/Gone-Regular.ttf", "size": 20, "stroke": 0}]}
    with pytest.raises(SimcaptchaError, match=r"font Gone-Family/Gone-Regular\.ttf: no such font file"):
        fitted_styles(site, 1, 0.1)


# ---------------------------------------------------------------- load_site
def test_load_site_round_trip(tmp_path):
    write_json(tmp_path / "site.json", SITE)
    assert load_site(tmp_path / "site.json") == SITE
    assert load_site(str(tmp_path / "site.json")) == SITE


def test_load_site_missing_file(tmp_path):
    path = tmp_path / "estimate.json"
    with pytest.raises(SimcaptchaError, match=r"estimate\.json: no such file \(run the estimate stage first\)"):
        load_site(path)


def test_load_site_truncated_json_names_the_path(tmp_path):
    path = tmp_path / "torn.json"
    path.write_text(json.dumps(SITE, indent=2)[:-40])
    with pytest.raises(SimcaptchaError, match=r"torn\.json: not valid JSON") as error:
        load_site(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)

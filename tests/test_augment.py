"""Properties of the augmentation: shapes and ranges, determinism, and the geometric conventions it documents."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.measure import label, regionprops

from simcaptcha.augment import apply_params, augment_batch, augment_images, sample_params
from simcaptcha.config import AugmentConfig

NEUTRAL = AugmentConfig(rotation_range=0.0, width_shift_range=0.0, height_shift_range=0.0, shear_range=0.0,
                        zoom_range=[1.0, 1.0], brightness_range=[1.0, 1.0], blur_sigma=[0.0, 0.0], noise_std=0.0,
                        elastic_alpha=0.0, perspective=0.0, jpeg_probability=0.0, threshold=0.0)
FILL_MODES = ["constant", "nearest", "reflect", "wrap"]
SETTINGS = settings(max_examples=25, deadline=None)


def pair(low: float, high: float) -> st.SearchStrategy[list[float]]:
    return st.lists(st.floats(low, high), min_size=2, max_size=2).map(sorted)


@st.composite
def configs(draw: st.DrawFn) -> AugmentConfig:
    """Any valid config (elastic sigma kept small: its cost grows with the smoothing radius)."""
    return AugmentConfig(
        variants=draw(st.integers(1, 3)),
        rotation_range=draw(st.floats(0, 180)),
        width_shift_range=draw(st.floats(0, 1)),
        height_shift_range=draw(st.floats(0, 1)),
        shear_range=draw(st.floats(0, 80)),
        zoom_range=draw(pair(0.1, 10)),
        brightness_range=draw(pair(0, 4)),
        fill_mode=draw(st.sampled_from(FILL_MODES)),
        cval=draw(st.floats(0, 1)),
        blur_sigma=draw(pair(0, 3)),
        noise_std=draw(st.floats(0, 1)),
        elastic_alpha=draw(st.sampled_from([0.0, 0.5, 3.0, 100.0])),
        elastic_sigma=draw(st.floats(0.5, 6)),
        perspective=draw(st.floats(0, 0.5)),
        jpeg_probability=draw(st.floats(0, 1)),
        jpeg_quality=[int(q) for q in draw(pair(1, 100))],
        batch_size=draw(st.integers(1, 8)),
    )


def uint8_images(max_count: int = 5) -> st.SearchStrategy[np.ndarray]:
    shapes = st.tuples(st.integers(1, max_count), st.integers(8, 64), st.integers(8, 64))
    return shapes.flatmap(lambda shape: st.integers(0, 2**32 - 1).map(
        lambda seed: np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)))


def text_like(count: int, h: int = 50, w: int = 100, seed: int = 0) -> np.ndarray:
    """Dark images with a few bright bars, like binarised captchas."""
    rng = np.random.default_rng(seed)
    images = np.zeros((count, h, w), np.uint8)
    for image in images:
        for _ in range(6):
            y, x = rng.integers(5, h - 15), rng.integers(5, w - 15)
            image[y:y + rng.integers(2, 10), x:x + rng.integers(2, 10)] = 255
    return images


def apply(image: np.ndarray | torch.Tensor, config: AugmentConfig = NEUTRAL, **chosen) -> torch.Tensor:
    """Augment one H×W float image with explicit parameters: neutral ones except ``chosen``."""
    x = torch.as_tensor(image, dtype=torch.float32)[None, None]
    params = sample_params(1, *x.shape[-2:], NEUTRAL, torch.Generator())
    params = replace(params, **{name: torch.tensor([value], dtype=torch.float32) for name, value in chosen.items()})
    return apply_params(x, params, config)[0, 0]


def centre_of_mass(image: torch.Tensor) -> tuple[float, float]:
    """(x, y) of the intensity-weighted centre, in pixels."""
    ys, xs = torch.meshgrid(torch.arange(image.shape[0]), torch.arange(image.shape[1]), indexing="ij")
    total = image.sum()
    return float((xs * image).sum() / total), float((ys * image).sum() / total)


def square(size: int = 41, side: int = 7, at: tuple[int, int] | None = None) -> torch.Tensor:
    x, y = at or (size // 2, size // 2)
    image = torch.zeros(size, size)
    image[y - side // 2:y + side // 2 + 1, x - side // 2:x + side // 2 + 1] = 1
    return image


# ---------------------------------------------------------------- shape, dtype, range, determinism
@SETTINGS
@given(images=uint8_images(), config=configs(), seed=st.integers(-2**40, 2**40))
def test_images_keep_shape_dtype_and_order(images, config, seed):
    out, source = augment_images(images, config, seed)
    n, h, w = images.shape
    assert out.shape == (n * config.variants, h, w) and out.dtype == np.uint8
    assert np.array_equal(source, np.repeat(np.arange(n), config.variants))


@SETTINGS
@given(images=uint8_images(), config=configs(), seed=st.integers(0, 2**63))
def test_batch_stays_float_in_unit_range(images, config, seed):
    x = torch.from_numpy(images).float().unsqueeze(1) / 255
    out = augment_batch(x, config, torch.Generator().manual_seed(seed))
    assert out.shape == x.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1 and not out.isnan().any()


@SETTINGS
@given(images=uint8_images(), config=configs(), seed=st.integers(0, 2**63), other=st.integers(0, 2**63))
def test_same_seed_same_bytes_other_seed_other_bytes(images, config, seed, other):
    out, _ = augment_images(images, config, seed)
    assert np.array_equal(out, augment_images(images, config, seed)[0])
    # noise visible on every pixel: kept gray (no re-binarizing, no JPEG at quality 1 that could flatten it)
    noisy = replace(config, noise_std=0.2, brightness_range=[0.5, 0.5], threshold=0.0, jpeg_probability=0.0)
    if seed != other:
        assert not np.array_equal(augment_images(images, noisy, seed)[0], augment_images(images, noisy, other)[0])


@SETTINGS
@given(images=uint8_images(max_count=7), config=configs(), sizes=st.lists(st.integers(1, 10), min_size=2, max_size=2))
def test_bytes_do_not_depend_on_batch_size(images, config, sizes):
    first, second = (augment_images(images, replace(config, batch_size=size), 3)[0] for size in sizes)
    assert np.array_equal(first, second)


def test_variants_do_not_depend_on_the_other_images_or_the_variant_count():
    images = text_like(4)
    config = replace(AugmentConfig(), variants=2)
    out, _ = augment_images(images, config, 7)
    more, _ = augment_images(images, replace(config, variants=3), 7)
    assert np.array_equal(out.reshape(4, 2, 50, 100), more.reshape(4, 3, 50, 100)[:, :2])
    changed = images.copy()
    changed[0] = 255 - changed[0]
    assert np.array_equal(augment_images(changed, config, 7)[0][2:], out[2:])
    assert not np.array_equal(out[4], out[5])


@SETTINGS
@given(images=uint8_images(), variants=st.integers(1, 3), fill=st.sampled_from(FILL_MODES), seed=st.integers())
def test_neutral_config_is_the_identity(images, variants, fill, seed):
    config = replace(NEUTRAL, variants=variants, fill_mode=fill)
    out, _ = augment_images(images, config, seed)
    assert np.array_equal(out, np.repeat(images, variants, axis=0))
    x = torch.from_numpy(images).float().unsqueeze(1) / 255
    assert torch.equal(augment_batch(x, config, torch.Generator()), x)


@st.composite
def bar_captchas(draw: st.DrawFn) -> np.ndarray:
    """A 50×100 binary image of 3-4 upright bars ("characters") told apart by their heights, 10 px or more apart
    and clear of the border by more than the default geometry can move them."""
    heights = draw(st.permutations([10, 16, 22, 28]))[:draw(st.integers(3, 4))]
    image = np.zeros((50, 100), np.uint8)
    x = 14 + draw(st.integers(0, 6))
    for height in heights:
        width = draw(st.integers(4, 8))
        top = 25 + draw(st.integers(-2, 2)) - height // 2
        image[top:top + height, x:x + width] = 255
        x += width + draw(st.integers(10, 14))
    return image


def bars(image: np.ndarray) -> list[tuple[float, int]]:
    """(centre x, height) of each bar, left to right; specks under 10 px are not bars."""
    regions = [region for region in regionprops(label(image > 127)) if region.area >= 10]
    return sorted((region.centroid[1], region.bbox[2] - region.bbox[0]) for region in regions)


@SETTINGS
@given(image=bar_captchas(), seed=st.integers(0, 2**63))
def test_default_augmentation_keeps_every_character_whole_and_in_order(image, seed):
    """The label survives: as many bars as before, none merged or cut, in the same order, each near its place."""
    out, _ = augment_images(image[None], AugmentConfig(), seed)
    before, after = bars(image), bars(out[0])
    assert len(after) == len(before)
    assert np.argsort([height for _, height in after]).tolist() == np.argsort([height for _, height in before]).tolist()
    assert max(abs(x_after - x_before) for (x_after, _), (x_before, _) in zip(after, before)) < 10


def test_augment_images_rejects_non_uint8():
    with pytest.raises(ValueError, match="uint8"):
        augment_images(np.zeros((1, 8, 8), np.float32), AugmentConfig(), 0)


def assert_spans(values: torch.Tensor, low, high) -> None:
    """Every value lies in [low, high] (per column) and the values cover at least 90 % of it."""
    values = values.reshape(len(values), -1)
    low, high = (torch.as_tensor(bound, dtype=torch.float32).flatten() for bound in (low, high))
    assert ((values >= low - 1e-4) & (values <= high + 1e-4)).all()
    assert (values.amax(0) - values.amin(0) >= 0.9 * (high - low) - 1e-4).all()


@SETTINGS
@given(config=configs(), seed=st.integers(0, 2**63))
def test_sampled_parameters_span_their_ranges(config, seed):
    config = replace(config, noise_std=0.0, elastic_alpha=0.0)  # per-pixel fields: not under test, and slow
    params = sample_params(400, 20, 30, config, torch.Generator().manual_seed(seed))
    size = torch.tensor([30.0, 20.0])
    shifts = torch.tensor([config.width_shift_range, config.height_shift_range]) * size
    assert_spans(params.rotation, -config.rotation_range, config.rotation_range)
    assert_spans(params.shift, -shifts, shifts)
    assert_spans(params.shear, -config.shear_range, config.shear_range)
    assert_spans(params.zoom, *config.zoom_range)
    assert_spans(params.brightness, *config.brightness_range)
    assert_spans(params.blur, *config.blur_sigma)
    assert_spans(params.corners.flatten(0, 1), -config.perspective * size, config.perspective * size)
    encoded = params.jpeg_quality[params.jpeg_quality > 0]
    assert ((encoded >= config.jpeg_quality[0]) & (encoded <= config.jpeg_quality[1])).all()
    assert float((params.jpeg_quality > 0).float().mean()) == pytest.approx(config.jpeg_probability, abs=0.1)


def test_zoom_is_drawn_for_each_axis_like_keras():
    zoom = sample_params(400, 20, 30, replace(NEUTRAL, zoom_range=[0.5, 2.0]), torch.Generator()).zoom
    assert abs(float(torch.corrcoef(zoom.T)[0, 1])) < 0.2


def test_jpeg_quality_takes_every_integer_in_its_range():
    config = replace(NEUTRAL, jpeg_probability=1.0, jpeg_quality=[40, 44])
    quality = sample_params(400, 20, 30, config, torch.Generator()).jpeg_quality
    assert set(quality.tolist()) == {40, 41, 42, 43, 44}


# ---------------------------------------------------------------- geometry
@SETTINGS
@given(dx=st.floats(-8, 8), dy=st.floats(-8, 8))
def test_shift_moves_content_by_the_shift_in_pixels(dx, dy):
    before = square()
    after = apply(before, replace(NEUTRAL, width_shift_range=0.1), shift=[dx, dy])
    (x0, y0), (x1, y1) = centre_of_mass(before), centre_of_mass(after)
    assert x1 - x0 == pytest.approx(dx, abs=1e-3) and y1 - y0 == pytest.approx(dy, abs=1e-3)


@SETTINGS
@given(seed=st.integers(0, 2**63))
def test_width_shift_moves_content_sideways_by_the_drawn_amount(seed):
    config = replace(NEUTRAL, width_shift_range=0.2)
    image = square(size=41, side=5)[None, None]
    params = sample_params(1, 41, 41, config, torch.Generator().manual_seed(seed))
    after = augment_batch(image, config, torch.Generator().manual_seed(seed))[0, 0]
    (x0, y0), (x1, y1) = centre_of_mass(image[0, 0]), centre_of_mass(after)
    dx = float(params.shift[0, 0])
    assert abs(dx) <= 0.2 * 41 and float(params.shift[0, 1]) == 0
    assert x1 - x0 == pytest.approx(dx, abs=1e-3) and y1 == pytest.approx(y0, abs=1e-3)


def test_positive_rotation_is_counter_clockwise():
    image = torch.rand(15, 15)
    config = replace(NEUTRAL, rotation_range=90)
    assert torch.allclose(apply(image, config, rotation=90), torch.rot90(image, 1, (0, 1)), atol=1e-4)
    assert torch.allclose(apply(image, config, rotation=-90), torch.rot90(image, -1, (0, 1)), atol=1e-4)
    marker = square(size=21, side=1, at=(10, 3))  # above the centre
    assert centre_of_mass(apply(marker, config, rotation=90)) == pytest.approx((3, 10), abs=1e-3)  # now left of it


def test_rotation_rotates_in_pixels_on_wide_images():
    wide = torch.zeros(21, 61)
    wide[6:15, 26:35] = 1  # a centred 9×9 square: a quarter turn maps it onto itself, not onto a 27×3 bar
    rotated = apply(wide, replace(NEUTRAL, rotation_range=90), rotation=90)
    assert torch.allclose(rotated, wide, atol=1e-4)


def test_zoom_above_one_shrinks_content_like_keras():
    image = square(size=41, side=11)
    config = replace(NEUTRAL, zoom_range=[0.5, 2.0])
    lit = apply(image, config, zoom=[2.0, 1.0]) > 0.5
    assert int(lit.any(0).sum()) in (5, 6) and int(lit.any(1).sum()) == 11  # half as wide, as tall
    assert float(apply(image, config, zoom=[0.5, 0.5]).sum()) == pytest.approx(4 * 121, rel=0.05)  # zoom < 1 grows


def test_shear_follows_keras():
    bar = torch.zeros(31, 31)
    bar[:, 15] = 1
    sheared = apply(bar, replace(NEUTRAL, shear_range=30), shear=30)
    for row in (3, 10, 20, 27):  # x_in = x - sin(shear)·y, so the bar's row y now sits at x = sin(shear)·y
        x, _ = centre_of_mass(sheared[row:row + 1])
        assert x - 15 == pytest.approx(0.5 * (row - 15), abs=1e-3)


@pytest.mark.parametrize("mode", FILL_MODES)
def test_fill_modes_fill_the_uncovered_border_as_keras(mode):
    image = torch.rand(8, 12)
    shifted = apply(image, replace(NEUTRAL, width_shift_range=0.5, fill_mode=mode, cval=0.25), shift=[3, 0])
    expected = {"constant": torch.full((8, 3), 0.25), "nearest": image[:, [0, 0, 0]],
                "reflect": image[:, [2, 1, 0]], "wrap": image[:, 9:]}[mode]
    assert torch.allclose(shifted[:, 3:], image[:, :-3], atol=1e-4)
    assert torch.allclose(shifted[:, :3], expected, atol=1e-4)


def test_wrap_interpolates_across_the_seam():
    image = torch.zeros(6, 10)
    image[:, 0], image[:, 9] = 1.0, 0.5
    shifted = apply(image, replace(NEUTRAL, width_shift_range=0.5, fill_mode="wrap"), shift=[0.5, 0])
    assert torch.allclose(shifted[:, 0], torch.full((6,), 0.75), atol=1e-4)  # halfway between last and first


def test_uniform_corner_jitter_is_a_translation():
    image = square(size=31, side=5)
    config = replace(NEUTRAL, perspective=0.2)
    jittered = apply(image, config, corners=[[3.0, 0.0]] * 4)  # each output corner samples 3 px to its right
    assert torch.allclose(jittered, apply(image, config, shift=[-3.0, 0.0]), atol=1e-4)
    tilted = apply(image, config, corners=[[0.0, 0.0], [0.0, 0.0], [4.0, 0.0], [-4.0, 0.0]])
    assert not torch.allclose(tilted, image, atol=0.1)


def test_elastic_displacement_has_std_alpha_pixels():
    config = replace(NEUTRAL, elastic_alpha=2.0, elastic_sigma=3.0)
    params = sample_params(16, 64, 64, config, torch.Generator().manual_seed(0))
    assert float(params.elastic.std()) == pytest.approx(2.0, rel=0.1)
    warped = augment_batch(square(size=64, side=15)[None, None], config, torch.Generator().manual_seed(1))[0, 0]
    assert 0.5 < float((warped - square(size=64, side=15)).abs().max())
    assert centre_of_mass(warped) == pytest.approx((32, 32), abs=1.5)


# ---------------------------------------------------------------- photometric
@SETTINGS
@given(sigma=st.floats(1.0, 4.0))
def test_blur_spreads_a_bright_pixel(sigma):
    dot = square(size=31, side=1)
    blurred = apply(dot, replace(NEUTRAL, blur_sigma=[0.0, 4.0]), blur=sigma)
    assert float(blurred.max()) == pytest.approx(1 / (2 * np.pi * sigma**2), rel=0.1)
    assert float(blurred.sum()) == pytest.approx(1.0, abs=1e-4)
    assert centre_of_mass(blurred) == pytest.approx((15, 15), abs=1e-3)


def test_brightness_multiplies():
    image = torch.rand(9, 9)
    assert torch.allclose(apply(image, replace(NEUTRAL, brightness_range=[0.5, 1]), brightness=0.5), image / 2)


@SETTINGS
@given(std=st.floats(0.01, 0.1), seed=st.integers(0, 2**63))
def test_noise_has_the_configured_std(std, seed):
    grey = torch.full((4, 1, 64, 64), 0.5)
    out = augment_batch(grey, replace(NEUTRAL, noise_std=std), torch.Generator().manual_seed(seed))
    assert float((out - grey).std()) == pytest.approx(std, rel=0.1)
    assert float(out.mean()) == pytest.approx(0.5, abs=0.01)


def test_jpeg_changes_images_a_little():
    images = text_like(8)
    out, _ = augment_images(images, replace(NEUTRAL, jpeg_probability=1.0, jpeg_quality=[40, 60]), 0)
    diff = np.abs(out.astype(int) - images)
    assert (diff.reshape(8, -1).max(1) > 0).all()
    assert diff.mean() < 5 and np.abs(out.mean() - images.mean()) < 2


def test_jpeg_probability_picks_a_share_of_images():
    images = text_like(200)
    out, _ = augment_images(images, replace(NEUTRAL, jpeg_probability=0.3), 0)
    changed = (out != images).reshape(200, -1).any(1).mean()
    assert 0.2 < changed < 0.4


def test_threshold_rebinarizes_and_blur_thickens_strokes():
    stroke = np.zeros((1, 20, 20), np.uint8)
    stroke[0, :, 9:11] = 255  # a 2-pixel vertical stroke
    blurred = replace(NEUTRAL, blur_sigma=[1.5, 1.5], brightness_range=[2.0, 2.0], threshold=0.5)
    out, _ = augment_images(stroke, blurred, seed=0)
    assert set(np.unique(out)) == {0, 255}
    assert (out[0, 10] == 255).sum() > 2  # brighter blur, then threshold: a thicker stroke
    thin, _ = augment_images(stroke, replace(blurred, brightness_range=[0.6, 0.6]), seed=0)
    assert (thin[0, 10] == 255).sum() < (out[0, 10] == 255).sum()


def test_the_site_mask_stays_in_place_while_the_text_moves():
    mask = np.zeros((20, 30), bool)
    mask[5, :] = True  # a fixed line
    image = np.zeros((1, 20, 30), np.uint8)
    image[0, 8:14, 10:14] = 255  # the "text"
    image[0][mask] = 255  # composited, as render-fonts does
    shifted = replace(NEUTRAL, width_shift_range=0.2, height_shift_range=0.2)
    out, _ = augment_images(image, shifted, seed=3, mask=mask)
    assert (out[0][mask] == 255).all()  # the line is where it was
    assert (out[0][~mask] == 255).sum() > 0 and not np.array_equal(out[0], image[0])  # the text moved
    rows_lit = (out[0] == 255).all(axis=1)
    assert rows_lit.sum() == 1  # and no moved copy of the line is left behind


def test_a_moved_line_crossing_a_glyph_does_not_cut_it():
    mask = np.zeros((20, 30), bool)
    mask[10, :] = True  # a fixed line through the middle of the glyph
    image = np.zeros((1, 20, 30), np.uint8)
    image[0, 4:17, 8:20] = 255  # a solid glyph the line crosses
    image[0][mask] = 255
    shifted = replace(NEUTRAL, height_shift_range=0.15)  # the text (and the line's copy) move up to 3 px
    for seed in range(5):
        out, _ = augment_images(image, shifted, seed=seed, mask=mask)
        glyph_rows = np.flatnonzero((out[0, :, 9:19] == 255).all(axis=1) & ~mask[:, 0])
        assert glyph_rows.size, "the glyph vanished"
        assert np.array_equal(glyph_rows, np.arange(glyph_rows[0], glyph_rows[-1] + 1)) or \
            set(range(glyph_rows[0], glyph_rows[-1] + 1)) - set(glyph_rows) <= {10}  # no row cut, bar the line
        assert (out[0, :, 0:6] == 255).sum() == 6  # beside the glyph the moved copy is erased: only the line

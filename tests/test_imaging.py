"""Tests for simcaptcha.imaging: decoding, fitting, background, binarization and contact sheets."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from helpers import SAMPLES, binarized, decoded_challenge, encode_image, json_images

from simcaptcha import imaging
from simcaptcha.config import BinarizeConfig
from simcaptcha.errors import SimcaptchaError


@pytest.fixture(scope="module")
def hackmit_rgb() -> np.ndarray:
    return decoded_challenge(SAMPLES / "challenge-17")


@pytest.fixture(scope="module")
def hackmit_binary(hackmit_rgb) -> np.ndarray:
    return binarized(hackmit_rgb)


def vertical_runs(column: np.ndarray) -> int:
    padded = np.r_[0, column.astype(int), 0]
    return int((np.diff(padded) == 1).sum())


# ---------------------------------------------------------------- decode_image
def test_decode_real_hackmit_jpeg():
    name, blob = json_images(SAMPLES / "challenge-19")[0]
    image = imaging.decode_image(blob, name)
    assert image.shape == (50, 100, 3)
    assert image.dtype == np.uint8
    assert image.std() > 20  # coloured bands and white text, not a flat image
    assert image.max() >= 240  # the white text and lines


def test_decode_rgba_png_is_composited_over_white():
    rgba = np.zeros((2, 3, 4), dtype=np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)  # opaque
    rgba[0, 1] = (10, 20, 30, 0)  # transparent
    rgba[0, 2] = (0, 0, 0, 128)  # half black
    rgba[1] = (200, 0, 0, 255)
    image = imaging.decode_image(encode_image(Image.fromarray(rgba, "RGBA")), "alpha.png")
    assert image.shape == (2, 3, 3)
    assert image[0, 0].tolist() == [10, 20, 30]
    assert image[0, 1].tolist() == [255, 255, 255]
    assert all(abs(int(v) - 127) <= 2 for v in image[0, 2])
    assert image[1, 2].tolist() == [200, 0, 0]


def test_decode_la_and_palette_transparency_over_white():
    la = Image.new("LA", (3, 2), (0, 0))
    assert imaging.decode_image(encode_image(la), "la.png")[1, 2].tolist() == [255, 255, 255]
    palette = Image.new("P", (3, 2), 0)
    palette.putpalette([10, 20, 30] + [40, 50, 60] * 255)
    palette.putpixel((1, 1), 1)
    data = encode_image(palette, transparency=0)
    image = imaging.decode_image(data, "p.png")
    assert image[0, 0].tolist() == [255, 255, 255]
    assert image[1, 1].tolist() == [40, 50, 60]


def test_decode_gray_and_bilevel():
    gray = imaging.decode_image(encode_image(Image.new("L", (4, 3), 77)), "g.png")
    assert gray.shape == (3, 4, 3) and np.all(gray == 77)
    bilevel = Image.new("1", (4, 3), 0)
    bilevel.putpixel((0, 0), 1)
    image = imaging.decode_image(encode_image(bilevel), "b.png")
    assert image[0, 0].tolist() == [255, 255, 255] and image[2, 3].tolist() == [0, 0, 0]


def test_decode_16_bit_gray_png_keeps_its_levels():
    # BUG (imaging.py decode_image): Pillow's "I;16" -> "RGB" conversion clips instead of scaling, so every
    # value above 255 of a 16-bit grayscale PNG becomes 255: the whole image decodes as flat white.
    levels = np.full((4, 4), 40000, dtype=np.uint16)  # 61% gray
    levels[0, 0] = 1000  # nearly black
    image = imaging.decode_image(encode_image(Image.fromarray(levels)), "deep.png")
    assert image.shape == (4, 4, 3)
    assert int(image[0, 0, 0]) < 30, f"16-bit level 1000/65535 decoded as {image[0, 0].tolist()}"
    assert 130 < int(image[1, 1, 0]) < 180, f"16-bit level 40000/65535 decoded as {image[1, 1].tolist()}"


def test_decode_empty_bytes_names_the_image():
    with pytest.raises(SimcaptchaError, match=r"^abc\.jpg: empty file"):
        imaging.decode_image(b"", "abc.jpg")


@pytest.mark.parametrize("blob", [b"this is not an image", b"\xff\xd8\xff\xe0" + b"\x00" * 20])
def test_decode_garbage_names_the_image(blob):
    with pytest.raises(SimcaptchaError, match=r"^junk-7: not a readable image"):
        imaging.decode_image(blob, "junk-7")


def test_decode_truncated_jpeg_names_the_image():
    data = encode_image(Image.new("RGB", (100, 50), (200, 10, 10)), "JPEG")
    with pytest.raises(SimcaptchaError, match=r"^half: not a readable image"):
        imaging.decode_image(data[: len(data) // 2], "half")


def test_decode_refuses_decompression_bombs():
    data = encode_image(Image.new("1", (10000, 10000)))
    with pytest.raises(SimcaptchaError, match=r"^bomb: "):
        imaging.decode_image(data, "bomb")


# ---------------------------------------------------------------- fit_to_size
def test_fit_same_size_is_unchanged():
    image = np.random.default_rng(0).integers(0, 256, (50, 100, 3), dtype=np.uint8)
    assert imaging.fit_to_size(image, 50, 100) is image


def test_fit_same_aspect_is_a_plain_resize():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (100, 200, 3), dtype=np.uint8)
    fitted = imaging.fit_to_size(image, 50, 100)
    expected = np.asarray(Image.fromarray(image).resize((100, 50), Image.BILINEAR))
    np.testing.assert_array_equal(fitted, expected)
    halves = np.zeros((100, 200, 3), dtype=np.uint8)
    halves[:, 100:] = 255
    fitted = imaging.fit_to_size(halves, 50, 100)
    assert np.all(fitted[:, :49] == 0) and np.all(fitted[:, 51:] == 255)  # the edge stays at the middle


def test_fit_square_is_centred_and_padded_with_border_colour():
    image = np.empty((50, 50, 3), dtype=np.uint8)
    image[...] = (10, 20, 30)  # border colour
    image[5:45, 5:45] = (250, 0, 0)
    fitted = imaging.fit_to_size(image, 50, 100)
    assert fitted.shape == (50, 100, 3) and fitted.dtype == np.uint8
    np.testing.assert_array_equal(fitted[:, 25:75], image)
    assert np.all(fitted[:, :25] == (10, 20, 30))
    assert np.all(fitted[:, 75:] == (10, 20, 30))


def test_fit_tall_image_is_scaled_down_and_centred():
    image = np.full((100, 50, 3), 200, dtype=np.uint8)
    image[:, :, 0] = 0
    fitted = imaging.fit_to_size(image, 50, 100)
    # 100x50 -> 50x25, left offset (100 - 25) // 2 = 37; padding is the same border colour
    assert np.all(fitted == (0, 200, 200))


def test_fit_grayscale_2d_image():
    image = np.full((10, 10), 9, dtype=np.uint8)
    image[3:7, 3:7] = 200
    fitted = imaging.fit_to_size(image, 20, 40)
    assert fitted.shape == (20, 40)
    assert np.all(fitted[:, :10] == 9) and np.all(fitted[:, 30:] == 9)
    assert fitted[10, 20] == 200


# ---------------------------------------------------------------- background
def test_background_columns_recovers_hackmit_bands(hackmit_rgb):
    background = imaging.estimate_background(hackmit_rgb, "columns")
    assert background.shape == (1, 100, 3)
    assert background.dtype == np.float32
    red, green, blue = background[0, 5]
    assert red > 150 and red > green + 100 and red > blue + 100  # the red band on the left
    red, green, blue = background[0, 60]
    assert green > red and green > blue + 100  # the green band in the middle
    red, green, blue = background[0, 35]
    assert red > 150 and green > 130 and blue < 60  # the yellow band
    # the white text and lines are not in the background
    assert background.max() < 230


def test_background_rows_pixels_and_none():
    pool = np.zeros((30, 4, 6, 3), dtype=np.uint8)
    pool[:, :2] = (200, 0, 0)
    pool[:, 2:] = (0, 0, 200)
    pool[::3, 0, 0] = 255  # occasional "text"
    rows = imaging.estimate_background(pool, "rows")
    assert rows.shape == (4, 1, 3)
    assert rows[:, 0].tolist() == [[200, 0, 0]] * 2 + [[0, 0, 200]] * 2
    pixels = imaging.estimate_background(pool, "pixels")
    assert pixels.shape == (4, 6, 3)
    assert pixels[0, 0].tolist() == [200, 0, 0]
    assert imaging.estimate_background(pool, "none") is None


# ---------------------------------------------------------------- binarization
def test_binarize_real_sample(hackmit_binary):
    binary = hackmit_binary
    assert binary.shape == (1000, 50, 100) and binary.dtype == np.uint8
    assert set(np.unique(binary).tolist()) == {0, 255}
    ink = (binary > 0).mean(axis=(1, 2))
    assert ink.min() > 0.03 and ink.max() < 0.30
    # the four fixed white lines: lit in nearly every image, and up to four separate lines per column
    fixed = (binary > 127).mean(axis=0) >= 0.95
    assert 0.03 < fixed.mean() < 0.15
    runs = [vertical_runs(fixed[:, column]) for column in range(100)]
    assert max(runs) == 4
    assert sum(run == 4 for run in runs) >= 20
    # text is bright in the sources and lit in the output: the image centre is lit far more than the corners
    share = (binary > 127).mean(axis=0)
    assert share[20:30, 30:70].mean() > 3 * share[:5, :8].mean()


def test_binarize_empty_batch():
    out = imaging.binarize_images(np.zeros((0, 5, 7, 3), dtype=np.uint8), None, BinarizeConfig(), "light")
    assert out.shape == (0, 5, 7) and out.dtype == np.uint8


def synthetic_text(text_value: int, background_value: int, count: int = 3) -> np.ndarray:
    images = np.full((count, 20, 40, 3), background_value, dtype=np.uint8)
    images[:, 5:15, 10:14] = text_value  # a vertical bar
    images[:, 8:11, 20:30] = text_value  # a horizontal bar
    return images


def expected_ink(count: int = 3) -> np.ndarray:
    ink = np.zeros((count, 20, 40), dtype=np.uint8)
    ink[:, 5:15, 10:14] = 255
    ink[:, 8:11, 20:30] = 255
    return ink


def test_polarity_detection():
    config = BinarizeConfig(polarity="auto")
    assert imaging.detect_polarity(synthetic_text(0, 255), config) == "dark"
    assert imaging.detect_polarity(synthetic_text(255, 0), config) == "light"
    assert imaging.detect_polarity(synthetic_text(0, 255), BinarizeConfig(polarity="light")) == "light"


@pytest.mark.parametrize("text_value, background_value", [(0, 255), (255, 0), (30, 220), (220, 40)])
def test_text_is_255_on_0_whatever_the_source_polarity(text_value, background_value):
    images = synthetic_text(text_value, background_value)
    config = BinarizeConfig(background="none", method="otsu")
    out = imaging.binarize_images(images, None, config, imaging.detect_polarity(images, config))
    np.testing.assert_array_equal(out, expected_ink())


def test_background_subtraction_finds_text_on_bands():
    images = np.zeros((4, 20, 40, 3), dtype=np.uint8)
    images[:, :, :20] = (200, 30, 30)
    images[:, :, 20:] = (30, 200, 30)
    images[1, 5:9, 5:9] = 255
    images[2, 10:14, 25:30] = 0
    config = BinarizeConfig(background="columns", method="fixed", threshold=0.2)
    background = imaging.estimate_background(images, "columns")
    out = imaging.binarize_images(images, background, config, "light")
    expected = np.zeros((4, 20, 40), dtype=np.uint8)
    expected[1, 5:9, 5:9] = 255
    expected[2, 10:14, 25:30] = 255  # dark text on a band is "text" too: distance, not brightness
    np.testing.assert_array_equal(out, expected)


def test_foreground_score_gray_reductions():
    images = np.array([[[[255, 0, 0], [0, 0, 0]]]], dtype=np.uint8)  # 1x1x2 image
    score = lambda gray, polarity="light": imaging.foreground_score(  # noqa: E731
        images, None, BinarizeConfig(gray=gray), polarity)[0, 0]
    assert score("min").tolist() == [0.0, 0.0]
    assert score("max").tolist() == [1.0, 0.0]
    np.testing.assert_allclose(score("luma"), [0.299, 0.0], atol=1e-6)
    np.testing.assert_allclose(score("luma", "dark"), [0.701, 1.0], atol=1e-6)
    background = np.zeros((1, 2, 3), dtype=np.float32)
    np.testing.assert_allclose(imaging.foreground_score(images, background, BinarizeConfig(), "light")[0, 0],
                               [1 / np.sqrt(3), 0.0], atol=1e-6)


def test_threshold_methods_fixed_none_and_sauvola():
    scores = np.zeros((2, 20, 20), dtype=np.float32)
    scores[:, 5:15, 5:15] = 0.8
    scores[0, 0, 0] = 0.5
    fixed = imaging.threshold_scores(scores, BinarizeConfig(method="fixed", threshold=0.5))
    assert fixed.dtype == np.uint8
    assert fixed[0, 0, 0] == 0  # strictly above the threshold
    assert (fixed == 255).sum() == 2 * 100 and set(np.unique(fixed).tolist()) == {0, 255}
    low = imaging.threshold_scores(scores, BinarizeConfig(method="fixed", threshold=0.4))
    assert low[0, 0, 0] == 255
    raw = imaging.threshold_scores(np.array([[[0.0, 0.5, 1.0, 0.2]]], dtype=np.float32),
                                   BinarizeConfig(method="none"))
    assert raw.dtype == np.uint8 and raw.tolist() == [[[0, 128, 255, 51]]]
    sauvola = imaging.threshold_scores(scores[1:], BinarizeConfig(method="sauvola", sauvola_window=15))
    assert sauvola.dtype == np.uint8 and set(np.unique(sauvola).tolist()) <= {0, 255}
    assert np.all(sauvola[0, 8:12, 8:12] == 255) and np.all(sauvola[0, :3, :3] == 0)
    even = imaging.threshold_scores(scores[1:], BinarizeConfig(method="sauvola", sauvola_window=14))
    np.testing.assert_array_equal(even, sauvola)  # an even window is rounded up to the odd one


def test_otsu_on_blank_image_gives_no_text():
    scores = np.full((2, 10, 10), 0.3, dtype=np.float32)
    out = imaging.threshold_scores(scores, BinarizeConfig(method="otsu"))
    assert out.dtype == np.uint8 and not out.any()


def test_otsu_scale_opens_a_blurred_gap():
    """An i's dot joined to its stem by half-lit pixels (JPEG blur) comes apart when Otsu's level is raised."""
    scores = np.random.default_rng(0).uniform(0.0, 0.3, (1, 20, 10)).astype(np.float32)  # background
    scores[0, 2:4, 4:6] = 1.0  # the dot
    scores[0, 5:18, 4:6] = 1.0  # the stem
    scores[0, 4, 4:6] = 0.6  # the blurred gap: above Otsu's level (0.3), below 2.5 times it
    plain = imaging.threshold_scores(scores, BinarizeConfig(method="otsu"))
    raised = imaging.threshold_scores(scores, BinarizeConfig(method="otsu", otsu_scale=2.5))
    assert plain[0, 4, 4] == 255 and raised[0, 4, 4] == 0
    assert raised[0, 2, 4] == raised[0, 10, 4] == 255


def test_binarize_batches_give_the_same_result():
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (7, 12, 16, 3), dtype=np.uint8)
    config = BinarizeConfig(background="none")
    np.testing.assert_array_equal(imaging.binarize_images(images, None, config, "light", batch=2),
                                  imaging.binarize_images(images, None, config, "light"))


# ---------------------------------------------------------------- contact sheet, png, decode_set
def test_contact_sheet_size_arithmetic():
    images = [np.zeros((50, 100), dtype=np.uint8)] * 10
    sheet = imaging.contact_sheet(images, columns=8, scale=2, pad=2)
    assert sheet.size == (8 * (200 + 2) + 2, 2 * (100 + 2) + 2)
    captioned = imaging.contact_sheet(images, [f"c{i}" for i in range(10)], columns=8, scale=2, pad=2)
    assert captioned.size == (8 * 202 + 2, 2 * (100 + 12 + 2) + 2)
    mixed = imaging.contact_sheet([np.zeros((10, 30, 3), np.uint8), np.zeros((20, 10), np.uint8)], columns=3,
                                  scale=1, pad=1)
    assert mixed.size == (3 * (30 + 1) + 1, 20 + 1 + 1)  # cells fit the largest height and width
    assert imaging.contact_sheet([]).size == (1, 1)


def test_contact_sheet_places_scaled_tiles():
    white = np.full((5, 10), 255, dtype=np.uint8)
    black = np.zeros((5, 10), dtype=np.uint8)
    sheet = np.asarray(imaging.contact_sheet([black, white, black], columns=2, scale=3, pad=2))
    # tile 0 at (x=2, y=2), 30x15 pixels; tile 1 at x = 2 + 32
    assert np.all(sheet[2:17, 2:32] == 0)
    assert np.all(sheet[2:17, 34:64] == 255)
    assert np.all(sheet[19:34, 2:32] == 0)  # tile 2 starts the second row
    assert np.all(sheet[0:2, :] == 255)  # padding is white


def test_save_png_round_trip(tmp_path):
    image = np.random.default_rng(4).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    imaging.save_png(tmp_path / "a" / "x.png", image)
    with Image.open(tmp_path / "a" / "x.png") as loaded:
        np.testing.assert_array_equal(np.asarray(loaded), image)


def test_decode_set_mixed_sizes_and_modes():
    rgb = np.zeros((50, 100, 3), dtype=np.uint8)
    rgb[:, :, 1] = 180
    blobs = [
        encode_image(Image.fromarray(rgb)),
        encode_image(Image.new("L", (200, 100), 77)),
        encode_image(Image.new("RGBA", (50, 25), (0, 0, 0, 0))),
        encode_image(Image.new("RGB", (60, 60), (10, 20, 30)), "JPEG", quality=95),
    ]
    out = imaging.decode_set(blobs, ["a", "b", "c", "d"], 50, 100)
    assert out.shape == (4, 50, 100, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0], rgb)
    assert np.all(out[1] == 77)
    assert np.all(out[2] == 255)
    assert np.all(np.abs(out[3].astype(int) - (10, 20, 30)) <= 3)


def random_images(draw: st.DrawFn, count: int, height: int, width: int, channels: tuple[int, ...] = ()) -> np.ndarray:
    seed = draw(st.integers(0, 2**32 - 1))
    return np.random.default_rng(seed).integers(0, 256, (count, height, width) + channels, dtype=np.uint8)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), source=st.tuples(st.integers(1, 80), st.integers(1, 160)),
       target=st.tuples(st.integers(8, 60), st.integers(8, 120)), channels=st.sampled_from([(), (3,)]))
def test_fit_to_size_gives_the_target_shape_within_the_inputs_range(data, source, target, channels):
    image = random_images(data.draw, 1, *source, channels)[0]
    fitted = imaging.fit_to_size(image, *target)
    assert fitted.shape == target + channels and fitted.dtype == np.uint8
    assert image.min() <= fitted.min() and fitted.max() <= image.max()  # interpolation and padding invent no level


@settings(max_examples=40, deadline=None)
@given(data=st.data(), shape=st.tuples(st.integers(1, 4), st.integers(8, 40), st.integers(8, 60)),
       background=st.sampled_from(["none", "columns", "rows", "pixels"]),
       method=st.sampled_from(["otsu", "fixed", "sauvola"]), polarity=st.sampled_from(["light", "dark"]))
def test_binarized_images_are_text_255_on_0_of_the_input_size(data, shape, background, method, polarity):
    images = random_images(data.draw, *shape, (3,))
    config = BinarizeConfig(background=background, method=method)
    binary = imaging.binarize_images(images, imaging.estimate_background(images, background), config, polarity)
    assert binary.shape == shape and binary.dtype == np.uint8
    assert set(np.unique(binary)) <= {0, 255}


def test_decode_set_names_the_broken_image():
    good = encode_image(Image.new("RGB", (10, 5)))
    with pytest.raises(SimcaptchaError, match=r"image 'second'"):
        imaging.decode_set([good, b"broken"], ["first", "second"], 5, 10)



def test_preprocessing_round_trip(tmp_path, hackmit_rgb):
    background = imaging.estimate_background(hackmit_rgb, "columns")
    imaging.save_preprocessing(tmp_path / "pre.npz", background, "light")
    loaded, polarity = imaging.load_preprocessing(tmp_path / "pre.npz")
    assert polarity == "light"
    assert loaded.dtype == np.float32 and loaded.shape == (1, 100, 3)
    np.testing.assert_array_equal(loaded, background)
    imaging.save_preprocessing(tmp_path / "none.npz", None, "dark")
    assert imaging.load_preprocessing(tmp_path / "none.npz") == (None, "dark")

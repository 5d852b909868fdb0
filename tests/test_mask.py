"""Tests for simcaptcha.mask: the site's fixed noise, estimated without labels."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from helpers import SAMPLES, binarized, decoded_challenge

from simcaptcha import imaging
from simcaptcha.config import MaskConfig
from simcaptcha.errors import SimcaptchaError
from simcaptcha.mask import estimate_mask, lit_share, load_mask, mask_figures


@pytest.fixture(scope="module")
def hackmit_binary() -> np.ndarray:
    """The 1,000 captchas of challenge-18, binarized as the binarize stage does with the repo's params."""
    return binarized(decoded_challenge(SAMPLES / "challenge-18"))


def line_pool(count: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random text-like blobs that move between images, plus one fixed diagonal line lit in all of them."""
    rng = np.random.default_rng(seed)
    images = np.zeros((count, 30, 60), dtype=np.uint8)
    for image in images:
        for _ in range(4):
            top, left = rng.integers(0, 24), rng.integers(0, 52)
            image[top:top + int(rng.integers(3, 7)), left:left + int(rng.integers(2, 8))] = 255
    line = np.zeros((30, 60), dtype=bool)
    for column in range(60):
        line[4 + column * 20 // 60, column] = True
    images[:, line] = 255
    return images, line


# ---------------------------------------------------------------- real sample
def test_mask_covers_hackmit_fixed_lines(hackmit_binary):
    mask = estimate_mask(hackmit_binary, MaskConfig(method="mean", threshold=0.6))
    assert mask.shape == (50, 100) and mask.dtype == bool
    figures = mask_figures(hackmit_binary, mask)
    assert 0.03 < figures["coverage"] < 0.15
    assert figures["mean_presence"] > 0.95
    assert figures["pixels"] == int(mask.sum())
    assert 0.2 < figures["lit_pixels_explained"] < 0.8  # lines explain part of the ink, the text the rest
    # four lines: at most four separate runs down any column, and four across many columns
    runs = [int((np.diff(np.r_[0, mask[:, c].astype(int), 0]) == 1).sum()) for c in range(100)]
    assert max(runs) == 4 and sum(r == 4 for r in runs) >= 20
    # the lines do not reach the leftmost columns of the HackMIT images
    assert not mask[:, :5].any()


def test_and_mask_is_a_subset_of_mean_mask(hackmit_binary):
    mean = estimate_mask(hackmit_binary, MaskConfig(method="mean", threshold=0.6))
    both = estimate_mask(hackmit_binary, MaskConfig(method="and"))
    assert both.any()
    assert not (both & ~mean).any()
    assert both.sum() <= mean.sum()
    assert np.all(hackmit_binary[:, both] == 255)  # "and": lit in every single image


def test_none_method_gives_an_empty_mask(hackmit_binary):
    mask = estimate_mask(hackmit_binary, MaskConfig(method="none"))
    assert mask.shape == (50, 100) and mask.dtype == bool and not mask.any()
    assert mask_figures(hackmit_binary, mask) == {
        "coverage": 0.0, "pixels": 0, "lit_pixels_explained": 0.0, "mean_presence": 0.0}


def test_dilate_grows_the_mask(hackmit_binary):
    base = estimate_mask(hackmit_binary, MaskConfig(dilate=0))
    grown = estimate_mask(hackmit_binary, MaskConfig(dilate=1))
    assert not (base & ~grown).any()
    assert grown.sum() > base.sum() * 1.5
    wider = estimate_mask(hackmit_binary, MaskConfig(dilate=2))
    assert not (grown & ~wider).any() and wider.sum() > grown.sum()


# ---------------------------------------------------------------- synthetic pools
def test_synthetic_pool_mask_is_exactly_the_fixed_line():
    images, line = line_pool()
    share = lit_share(images)
    assert share[line].min() == 1.0
    assert share[~line].max() < 0.6
    np.testing.assert_array_equal(estimate_mask(images, MaskConfig(method="mean", threshold=0.6)), line)
    np.testing.assert_array_equal(estimate_mask(images, MaskConfig(method="and")), line)


def test_threshold_controls_mean_mask():
    images = np.zeros((10, 2, 3), dtype=np.uint8)
    images[:7, 0, 0] = 255  # lit in 70% of the images
    images[:5, 0, 1] = 200  # 50%
    images[:, 1, 2] = 128  # 100%, just above the 127 "lit" level
    images[:, 1, 1] = 127  # never counted as lit
    np.testing.assert_allclose(lit_share(images), [[0.7, 0.5, 0.0], [0.0, 0.0, 1.0]])
    assert estimate_mask(images, MaskConfig(threshold=0.6)).tolist() == [[True, False, False], [False, False, True]]
    assert estimate_mask(images, MaskConfig(threshold=0.5)).tolist() == [[True, True, False], [False, False, True]]
    assert estimate_mask(images, MaskConfig(method="and")).tolist() == [[False, False, False], [False, False, True]]


def test_dilate_by_one_adds_the_four_neighbours():
    images = np.zeros((3, 7, 7), dtype=np.uint8)
    images[:, 3, 3] = 255
    mask = estimate_mask(images, MaskConfig(dilate=1))
    assert sorted(zip(*np.nonzero(mask))) == [(2, 3), (3, 2), (3, 3), (3, 4), (4, 3)]


def test_lit_share_chunks_large_pools():
    images = np.zeros((4500, 2, 2), dtype=np.uint8)  # more than one 2000-image chunk
    images[:3000, 0, 0] = 255
    images[4499, 1, 1] = 255
    share = lit_share(images)
    assert share[0, 0] == pytest.approx(3000 / 4500)
    assert share[1, 1] == pytest.approx(1 / 4500)


def test_empty_pool_gives_an_empty_mask():
    mask = estimate_mask(np.zeros((0, 5, 8), dtype=np.uint8), MaskConfig())
    assert mask.shape == (5, 8) and not mask.any()


def test_mask_figures_on_known_pool():
    images = np.zeros((4, 2, 5), dtype=np.uint8)
    images[:, 0, 0] = 255  # the fixed pixel
    images[:2, 1, 4] = 255  # text
    mask = np.zeros((2, 5), dtype=bool)
    mask[0, 0] = mask[0, 1] = True
    figures = mask_figures(images, mask)
    assert figures == {"coverage": 0.2, "pixels": 2, "lit_pixels_explained": pytest.approx(4 / 6),
                       "mean_presence": 0.5}


# ---------------------------------------------------------------- load_mask
def test_load_mask_round_trip(tmp_path):
    _, line = line_pool(count=5)
    path = tmp_path / "mask" / "mask.png"
    imaging.save_png(path, line.astype(np.uint8) * 255)
    loaded = load_mask(path, 30, 60)
    assert loaded.dtype == bool
    np.testing.assert_array_equal(loaded, line)


def test_load_mask_accepts_rgb_png(tmp_path):
    mask = np.zeros((4, 6), dtype=bool)
    mask[1, 2] = True
    rgb = np.repeat((mask.astype(np.uint8) * 255)[..., None], 3, axis=-1)
    Image.fromarray(rgb).save(tmp_path / "m.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "m.png", 4, 6), mask)


def test_load_mask_size_mismatch(tmp_path):
    path = tmp_path / "mask.png"
    imaging.save_png(path, np.zeros((30, 60), dtype=np.uint8))
    with pytest.raises(SimcaptchaError, match=r"mask\.png: mask is 30×60, images are 50×100"):
        load_mask(path, 50, 100)


def test_load_mask_missing_and_broken(tmp_path):
    with pytest.raises(SimcaptchaError, match=r"nope\.png: no such file"):
        load_mask(tmp_path / "nope.png", 50, 100)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(SimcaptchaError, match=r"bad\.png: cannot read the mask"):
        load_mask(tmp_path / "bad.png", 50, 100)

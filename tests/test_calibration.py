"""The label-free accuracy estimate, calibration figures, the pool's held-out share and precision "auto"."""

import numpy as np
import pandas as pd
import pytest
import torch

from simcaptcha import machine, reading
from simcaptcha.calibration import (character_confidences, coverage_at, coverage_curve, expected_calibration_error,
                                    label_free_estimate, reliability, reliability_diagram)
from simcaptcha.config import SelfTrainConfig
from simcaptcha.errors import SimcaptchaError
from simcaptcha.pool import image_digests, pool_rows
from simcaptcha.reading import LabelCoder
from simcaptcha.store import ImageSet


def scores(probabilities: list[list[list[float]]]) -> torch.Tensor:
    """Logits whose softmax is ``probabilities`` (N×positions×classes)."""
    return torch.tensor(probabilities).log()


# ---------------------------------------------------------------- the estimate
def test_positions_estimate_is_the_mean_probability_of_each_character_and_reading():
    coder = LabelCoder("ab", 2, "positions")
    logits = scores([[[0.9, 0.1], [0.2, 0.8]], [[0.6, 0.4], [0.5, 0.5]]])
    assert np.allclose(character_confidences(coder, logits), [[0.9, 0.8], [0.6, 0.5]])
    estimate = label_free_estimate(coder, logits, 2)
    assert estimate["estimated_char_accuracy"] == pytest.approx((0.9 + 0.8 + 0.6 + 0.5) / 4, abs=1e-5)
    assert estimate["estimated_captcha_accuracy"] == pytest.approx((0.72 + 0.3) / 2, abs=1e-5)
    assert (estimate["estimate_count"], estimate["collapsed"]) == (2, False)


def test_ctc_character_confidence_is_the_best_column_of_its_run():
    coder = LabelCoder("ab", 3, "ctc")  # class 0 is the blank
    columns = [[0.1, 0.7, 0.2], [0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.2, 0.6], [0.3, 0.0, 0.7]]
    logits = scores([columns]).clamp(min=-50)
    assert coder.decode(logits)[0] == ["ab"]
    assert character_confidences(coder, logits) == [pytest.approx([0.9, 0.7])]
    assert label_free_estimate(coder, logits, 1)["estimated_char_accuracy"] == pytest.approx(0.8, abs=1e-5)


def test_a_reader_that_reads_one_text_for_most_of_the_pool_has_collapsed():
    coder = LabelCoder("0123456789", 4, "positions")
    sure = [[0.99 if digit == 4 else 0.01 / 9 for digit in range(10)]] * 4
    estimate = label_free_estimate(coder, scores([sure] * 30 + [[[0.1] * 10] * 4] * 10), 4)
    assert estimate["collapsed"] and estimate["most_common_reading"] == "4444"
    assert estimate["most_common_share"] == 0.75
    assert estimate["estimated_captcha_accuracy"] is None and estimate["estimated_char_accuracy"] is None
    assert estimate["held_out_captcha_confidence"] == pytest.approx((30 * 0.99 ** 4 + 10 * 0.1 ** 4) / 40, abs=1e-5)


def test_one_digit_read_often_is_no_collapse_where_the_site_draws_one_digit():
    coder = LabelCoder("0123456789", 1, "positions")
    digits = [[[1.0 if digit == row % 3 else 0.0 for digit in range(10)]] for row in range(30)]
    estimate = label_free_estimate(coder, scores(digits).clamp(min=-50), 1)  # 3 digits, a third each
    assert not estimate["collapsed"] and estimate["estimated_captcha_accuracy"] == pytest.approx(1.0)


# ---------------------------------------------------------------- calibration against labels
def test_reliability_bins_and_the_expected_calibration_error():
    confidences = [0.05, 0.15, 0.95, 0.95, 0.85, 0.85]
    correct = [False, False, True, False, True, True]
    rows = reliability(confidences, correct)
    assert [(row["bin"], row["count"], row["accuracy"]) for row in rows] == [
        (0.05, 1, 0.0), (0.15, 1, 0.0), (0.85, 2, 1.0), (0.95, 2, 0.5)]
    assert expected_calibration_error(rows) == pytest.approx((0.05 + 0.15 + 2 * 0.15 + 2 * 0.45) / 6, abs=1e-5)
    assert reliability([1.0], [True])[0]["bin"] == 0.95  # a confidence of exactly 1 is in the last bin
    assert reliability_diagram(rows).size == (288, 288)


def test_a_calibrated_reader_has_a_small_calibration_error():
    rng = np.random.default_rng(0)
    confidences = rng.uniform(0, 1, 20000)
    correct = rng.uniform(0, 1, 20000) < confidences
    assert expected_calibration_error(reliability(confidences.tolist(), correct.tolist())) < 0.01
    overconfident = np.minimum(confidences + 0.2, 1.0)
    assert expected_calibration_error(reliability(overconfident.tolist(), correct.tolist())) > 0.15


def test_coverage_reads_the_surest_first():
    curve = coverage_curve([0.9, 0.2, 0.8, 0.5], [True, False, True, False])
    assert [(row["coverage"], row["precision"], row["min_confidence"]) for row in curve] == [
        (0.25, 1.0, 0.9), (0.5, 1.0, 0.8), (0.75, 0.66667, 0.5), (1.0, 0.5, 0.2)]
    assert coverage_at(curve, 0.99) == 0.5 and coverage_at(curve, 0.6) == 0.75
    assert coverage_at(coverage_curve([0.9], [False]), 0.99) == 0.0


# ---------------------------------------------------------------- the pool's rows
def image_set(images: np.ndarray, names: list[str]) -> ImageSet:
    manifest = pd.DataFrame({"name": names, "label": [""] * len(names), "source": ["s"] * len(names)})
    return ImageSet(images, manifest)


def test_evaluation_captchas_are_kept_out_of_the_pool_by_content_not_by_name():
    images = np.arange(20 * 4, dtype=np.uint8).reshape(20, 2, 2)
    pool = image_set(images, [f"{index}.png" for index in range(20)])
    labelled = image_set(images[[3, 7]], ["0.png", "1.png"])  # the same names as two other pool captchas
    read, held_out = pool_rows(pool, labelled, SelfTrainConfig(holdout=3))  # 18 left: 1 held out
    assert not read[[3, 7]].any() and not held_out[[3, 7]].any()
    assert (read | held_out)[[0, 1]].all()  # named as the labelled captchas, but other captchas
    left = [row for row in range(20) if row not in (3, 7)]  # the highest digest of what is left, a tenth at most
    assert np.flatnonzero(held_out).tolist() == [max(left, key=lambda row: image_digests(images[row:row + 1])[0])]
    assert read.sum() == 17


def test_the_held_out_share_is_drawn_across_a_pool_sorted_by_label():
    """A pool stored class by class (MNIST's order, files named by their text) gives a held-out share of every
    class, not the last class's captchas; the same pixels give the same share, whatever the names."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (1000, 4, 4), dtype=np.uint8)
    classes = np.repeat(np.arange(10), 100)
    pool = image_set(images, [f"{label}_{index:04d}" for index, label in enumerate(classes)])
    none = image_set(images[:0], [])
    _, held_out = pool_rows(pool, none, SelfTrainConfig(holdout=100))
    assert held_out.sum() == 100 and np.bincount(classes[held_out], minlength=10).max() <= 25
    renamed = image_set(images, [f"{index}.png" for index in range(1000)])
    assert np.array_equal(pool_rows(renamed, none, SelfTrainConfig(holdout=100))[1], held_out)


def test_the_held_out_share_is_at_most_a_tenth_of_the_pool_and_may_be_none():
    images = np.arange(10 * 4, dtype=np.uint8).reshape(10, 2, 2)
    pool, none = image_set(images, [str(index) for index in range(10)]), image_set(images[:0], [])
    assert pool_rows(pool, none, SelfTrainConfig(holdout=500))[1].sum() == 1
    read, held_out = pool_rows(pool, none, SelfTrainConfig(holdout=0))
    assert read.all() and not held_out.any()
    with pytest.raises(SimcaptchaError, match="exclude_labelled leaves no unlabelled captcha"):
        pool_rows(pool, pool, SelfTrainConfig())
    assert pool_rows(pool, pool, SelfTrainConfig(exclude_labelled=False, holdout=1))[0].sum() == 9


def test_equal_images_have_equal_digests():
    images = np.zeros((3, 4, 4), dtype=np.uint8)
    images[1, 0, 0] = 1
    digests = image_digests(images)
    assert digests[0] == digests[2] != digests[1]


# ---------------------------------------------------------------- precision "auto"
@pytest.mark.parametrize("flags, expected", [("fpu avx512f avx512_bf16 amx_bf16 amx_tile", True),
                                             ("fpu avx512f avx512_bf16", True),
                                             ("fpu avx2 avx512f avx512bw", False), ("fpu avx2 fma", False)])
def test_native_bfloat16_is_read_from_the_cpu_flags(tmp_path, monkeypatch, flags, expected):
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    monkeypatch.setattr(machine, "CPUINFO", str(info))
    assert machine.has_native_bfloat16() is expected
    monkeypatch.setattr(machine, "CPUINFO", str(tmp_path / "missing"))
    assert machine.has_native_bfloat16() is False


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bfloat16_only_where_the_cpu_computes_it(monkeypatch, native):
    monkeypatch.setattr(reading, "has_native_bfloat16", lambda: native)
    cpu = torch.device("cpu")
    assert reading.resolve_precision("auto", cpu) == ("bfloat16" if native else "float32")
    assert reading.resolve_precision("float32", cpu) == "float32"
    assert reading.resolve_precision("bfloat16", cpu) == "bfloat16"
    assert reading.reader_autocast(cpu, "auto").fast_dtype == torch.bfloat16
    with reading.reader_autocast(cpu, "auto"):
        assert torch.is_autocast_enabled("cpu") is native


"""Tests for simcaptcha.metrics: accuracy figures, confusion pairs and the equal-slices baseline cut."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simcaptcha.metrics import accuracy_figures, confusion_pairs
from simcaptcha.reading import equal_slices


# ---------------------------------------------------------------- accuracy_figures
def test_accuracy_figures_hand_computed():
    predicted = ["ab", "ba", "a", "abc", "bb"]
    truth = ["ab", "ab", "ab", "ab", "ab"]
    figures = accuracy_figures(predicted, truth)
    assert figures == {
        "count": 5,
        # position 0: ab ✓, ba ✗, a ✓, abc ✓, bb ✗ -> 3/5; position 1: ✓, ✗, missing, ✓, ✓ -> 3/5
        "per_position_accuracy": [0.6, 0.6],
        # right characters in place: 2 + 0 + 1 + 2 + 1 = 6 of 10 true characters
        "char_accuracy": 0.6,
        "captcha_accuracy": 0.2,
        # "ba" is an anagram: the right characters, the wrong captcha
        "presence_accuracy": 0.4,
        # "a" and "abc" have the wrong number of characters
        "length_accuracy": 0.6,
    }


def test_accuracy_figures_all_right_and_all_wrong():
    assert accuracy_figures(["xyz", "abc"], ["xyz", "abc"]) == {
        "count": 2, "char_accuracy": 1.0, "captcha_accuracy": 1.0, "per_position_accuracy": [1.0, 1.0, 1.0],
        "presence_accuracy": 1.0, "length_accuracy": 1.0}
    assert accuracy_figures(["", ""], ["xyz", "abc"]) == {
        "count": 2, "char_accuracy": 0.0, "captcha_accuracy": 0.0, "per_position_accuracy": [0.0, 0.0, 0.0],
        "presence_accuracy": 0.0, "length_accuracy": 0.0}


def test_accuracy_figures_anagram_is_present_but_wrong():
    figures = accuracy_figures(["cba"], ["abc"])
    assert figures["presence_accuracy"] == 1.0
    assert figures["captcha_accuracy"] == 0.0
    assert figures["char_accuracy"] == pytest.approx(1 / 3, abs=1e-5)  # only "b" is in place
    assert figures["per_position_accuracy"] == [0.0, 1.0, 0.0]


def test_accuracy_figures_presence_counts_repeats():
    # same set of characters, different multiset: not present-right
    assert accuracy_figures(["aab"], ["abb"])["presence_accuracy"] == 0.0
    assert accuracy_figures(["bab"], ["abb"])["presence_accuracy"] == 1.0


def test_accuracy_figures_wrong_lengths():
    # a shifted reading: an inserted character pushes the rest out of place
    figures = accuracy_figures(["axbc"], ["abc"])
    assert figures["char_accuracy"] == pytest.approx(1 / 3, abs=1e-5)
    assert figures["captcha_accuracy"] == 0.0
    assert figures["presence_accuracy"] == 0.0
    assert figures["per_position_accuracy"] == [1.0, 0.0, 0.0]
    # extra characters at the end are not counted against the true ones (the denominator is true characters)
    figures = accuracy_figures(["abcd"], ["abc"])
    assert figures["char_accuracy"] == 1.0
    assert figures["captcha_accuracy"] == 0.0
    assert figures["per_position_accuracy"] == [1.0, 1.0, 1.0]


def test_accuracy_figures_variable_length_truth():
    # per-position figures are over the captchas long enough to have that position
    figures = accuracy_figures(["abc", "ab", "a"], ["abc", "ab", "xy"])
    assert figures["per_position_accuracy"] == [0.66667, 0.66667, 1.0]  # position 2: only "abc" has one
    assert figures["char_accuracy"] == pytest.approx(5 / 7, abs=1e-5)
    assert figures["captcha_accuracy"] == pytest.approx(2 / 3, abs=1e-5)
    assert figures["length_accuracy"] == pytest.approx(2 / 3, abs=1e-5)  # "a" for "xy"
    assert figures["count"] == 3


def test_accuracy_figures_rounding():
    figures = accuracy_figures(["a", "b", "b"], ["a", "a", "a"])
    assert figures["char_accuracy"] == 0.33333
    assert figures["per_position_accuracy"] == [0.33333]


def test_accuracy_figures_empty_truth():
    assert accuracy_figures([], []) == {"count": 0}


def test_accuracy_figures_are_json_plain():
    import json

    figures = accuracy_figures(["ab", "ba"], ["ab", "ab"])
    assert json.loads(json.dumps(figures)) == figures
    assert all(type(value) in (int, float, list) for value in figures.values())


labels = st.text(alphabet="abc", min_size=1, max_size=5)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(labels, st.text(alphabet="abcd", max_size=6)), min_size=1, max_size=8))
def test_accuracy_figures_invariants(pairs):
    truth = [t for t, _ in pairs]
    predicted = [p for _, p in pairs]
    figures = accuracy_figures(predicted, truth)
    assert figures["count"] == len(truth)
    for key in ("char_accuracy", "captcha_accuracy", "presence_accuracy", "length_accuracy"):
        assert 0.0 <= figures[key] <= 1.0
    assert len(figures["per_position_accuracy"]) == max(map(len, truth))
    # a captcha read right is read right in every sense
    assert figures["captcha_accuracy"] <= figures["presence_accuracy"] <= figures["length_accuracy"]
    # every character of a captcha read right is a character read right (char accuracy weighs by length)
    whole = sum(len(t) for t, p in zip(truth, predicted) if t == p)
    assert figures["char_accuracy"] * sum(map(len, truth)) >= whole - 1e-4 * len(truth)
    assert accuracy_figures(truth, truth)["char_accuracy"] == 1.0


# ---------------------------------------------------------------- confusion_pairs
def test_confusion_pairs_per_position_with_missing_characters():
    pairs = confusion_pairs(["ab", "a", "xyz", ""], ["ab", "cb", "xy", "q"])
    assert pairs == [("a", "a"), ("b", "b"),
                     ("c", "a"), ("b", ""),  # the missing second character is ''
                     ("x", "x"), ("y", "y"),  # the extra "z" has no true character: no pair
                     ("q", "")]


def test_confusion_pairs_count_equals_true_characters():
    truth = ["abc", "a", "bb"]
    assert len(confusion_pairs(["", "abcd", "b"], truth)) == sum(map(len, truth))
    assert confusion_pairs([], []) == []


# ---------------------------------------------------------------- equal_slices
def test_equal_slices_shape_and_captcha_major_order():
    images = np.arange(2 * 3 * 6, dtype=np.uint8).reshape(2, 3, 6)
    slices = equal_slices(images, 3)
    assert slices.shape == (6, 3, 2)
    assert slices.dtype == np.uint8
    for captcha in range(2):
        for part in range(3):
            assert np.array_equal(slices[captcha * 3 + part], images[captcha, :, part * 2:(part + 1) * 2])


def test_equal_slices_drops_the_remainder_columns():
    images = np.arange(1 * 2 * 7, dtype=np.uint8).reshape(1, 2, 7)
    slices = equal_slices(images, 3)
    assert slices.shape == (3, 2, 2)
    assert np.array_equal(np.concatenate(list(slices), axis=1), images[0, :, :6])


def test_equal_slices_one_slice_is_the_image():
    images = np.random.default_rng(0).integers(0, 256, (4, 5, 8), dtype=np.uint8)
    assert np.array_equal(equal_slices(images, 1), images)

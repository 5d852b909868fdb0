"""The label-budget study's library: the fixed test split, the budgets drawn beside it, the training mix, the table."""

import json

import numpy as np
import pytest

from simcaptcha.budget import MODES, budget_rows, held_out_split, point_path, synthetic_share, training_mix
from simcaptcha.budget_report import draw_chart, summarize
from simcaptcha.config import BudgetConfig, parse_section
from simcaptcha.errors import SimcaptchaError
from simcaptcha.store import write_json

CONFIG = BudgetConfig(sizes=[0, 10, 50], seeds=[0, 1], test_size=40, steps=5, batch_size=8, synthetic_share=0.2,
                      synthetic_halving=10_000)


def test_split_is_fixed_disjoint_and_complete():
    test, rest = held_out_split(100, CONFIG)
    again, _ = held_out_split(100, CONFIG)
    other, _ = held_out_split(100, BudgetConfig(test_size=40, split_seed=1))
    assert np.array_equal(test, again) and not np.array_equal(test, other)
    assert len(test) == 40 and list(test) == sorted(test)
    assert sorted(np.concatenate([test, rest]).tolist()) == list(range(100))


def test_split_needs_captchas_left_to_train_on():
    with pytest.raises(SimcaptchaError, match=r"budget.test_size = 40 leaves no labelled captcha .*40 are labelled"):
        held_out_split(40, CONFIG)


def test_budgets_of_one_seed_are_nested_and_never_test_captchas():
    test, rest = held_out_split(100, CONFIG)
    small, large = budget_rows(rest, 10, 0, CONFIG), budget_rows(rest, 50, 0, CONFIG)
    assert set(small) <= set(large) and len(set(large)) == 50 and not set(large) & set(test)
    assert set(budget_rows(rest, 10, 1, CONFIG)) != set(small)
    with pytest.raises(SimcaptchaError, match=r"budget.sizes has 61, but only 60 .* budget.test_size = 40"):
        budget_rows(rest, 61, 0, CONFIG)


def images(count: int, value: int) -> np.ndarray:
    return np.full((count, 4, 6), value, dtype=np.uint8)


def test_mix_adds_synthetic_images_on_top_of_the_real_only_recipe():
    real, synthetic = np.arange(3, dtype=np.uint8)[:, None, None] * np.ones((3, 4, 6), np.uint8), images(100, 200)
    mixed, labels, synthetic_count = training_mix(real, ["a", "b", "c"], synthetic, ["s"] * 100, CONFIG, seed=0)
    assert synthetic_count == 10 and len(mixed) == len(labels) == 50  # 5 steps x 8 real, a fifth synthetic
    assert synthetic_share(3, CONFIG) == pytest.approx(0.2 * 10_000 / 10_003)  # barely shrunk beside 3 captchas
    assert (mixed[:10] == 200).all() and labels[:10] == ["s"] * 10
    counts = {label: labels.count(label) for label in "abc"}
    assert sorted(counts.values()) == [13, 13, 14]  # every real captcha as often as the others
    for image, label in zip(mixed[10:], labels[10:]):  # labels stay with their images
        assert image[0, 0] == "abc".index(label)
    alone, alone_labels, _ = training_mix(real, ["a", "b", "c"], None, [], CONFIG, seed=0)
    assert sorted(alone_labels) == sorted(labels[10:])  # the same real training as the real-only recipe


def test_synthetic_share_halves_at_the_halving_size():
    config = BudgetConfig(synthetic_share=0.5, synthetic_halving=100)
    assert synthetic_share(0, config) == 0.5 and synthetic_share(100, config) == 0.25
    assert synthetic_share(300, config) == pytest.approx(0.125)
    real = images(300, 1)
    _, _, few = training_mix(real[:10], ["a"] * 10, images(50, 2), ["s"] * 50, config, seed=0)
    _, _, many = training_mix(real, ["a"] * 300, images(50, 2), ["s"] * 50, config, seed=0)
    assert few == round(200 * 64 * (0.5 / 1.1) / (1 - 0.5 / 1.1)) and many == round(200 * 64 / 7)
    with pytest.raises(SimcaptchaError, match=r"budget.synthetic_halving"):
        parse_section(BudgetConfig, {"synthetic_halving": 0}, "budget")


def test_mix_without_real_captchas_trains_nothing():
    mixed, labels, synthetic_count = training_mix(images(0, 1), [], images(10, 2), ["s"] * 10, CONFIG, seed=0)
    assert len(mixed) == synthetic_count == 0 and labels == []


def test_budget_params_name_the_bad_key():
    with pytest.raises(SimcaptchaError, match=r"budget.sizes must list distinct numbers"):
        parse_section(BudgetConfig, {"sizes": [0, 10, 10]}, "budget")
    with pytest.raises(SimcaptchaError, match=r"budget.seeds must list distinct numbers, got \[\]"):
        parse_section(BudgetConfig, {"seeds": []}, "budget")
    with pytest.raises(SimcaptchaError, match=r"budget.synthetic_share"):
        parse_section(BudgetConfig, {"synthetic_share": 1.0}, "budget")


def write_points(directory, accuracy: dict) -> None:
    for (mode, size, seed), char in accuracy.items():
        write_json(point_path(directory, mode, size, seed),
                   {"char_accuracy": char, "captcha_accuracy": char / 2, "count": 40})


def grid(real, synthetic, refined) -> dict:
    """Point accuracies per mode as {size: (seed 0, seed 1)}."""
    return {(mode, size, seed): value for mode, table in zip(MODES, (real, synthetic, refined))
            for size, values in table.items() for seed, value in enumerate(values)}


def test_summary_means_seeds_and_names_where_refined_is_below_real_only(tmp_path):
    write_points(tmp_path, grid(real={0: (0.0, 0.0), 10: (0.2, 0.4), 50: (0.9, 0.9)},
                                synthetic={0: (0.5, 0.5), 10: (0.6, 0.6), 50: (0.8, 0.8)},
                                refined={0: (0.6, 0.6), 10: (0.7, 0.7), 50: (0.85, 0.85)}))
    table, figures = summarize(tmp_path, CONFIG)
    assert table["n"].tolist() == [0, 10, 50]
    assert table["char real only"].tolist() == [0.0, 0.3, 0.9]
    assert table["whole real + refined"].tolist() == [0.3, 0.35, 0.425]
    assert table["char refined only"].tolist() == [0.6, 0.6, 0.6]
    assert figures["points"]["real only"]["10"] == {"char_accuracy": 0.3, "char_accuracy_std": 0.1,
                                                    "captcha_accuracy": 0.15, "captcha_accuracy_std": 0.05,
                                                    "seeds": 2, "real_labels_used": 10}
    assert figures["refined_below_real_only_at"] == [50]
    draw_chart(table, figures, tmp_path / "chart.png")
    first = (tmp_path / "chart.png").read_bytes()
    draw_chart(table, figures, tmp_path / "chart.png")
    assert first[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "chart.png").read_bytes() == first


def test_summary_names_a_missing_point(tmp_path):
    write_points(tmp_path, {("real", 0, 0): 0.0})
    with pytest.raises(SimcaptchaError, match=r"real-0-1.json: no such file"):
        summarize(tmp_path, CONFIG)


def test_point_files_are_named_by_mode_size_and_seed(tmp_path):
    path = point_path(tmp_path, "refined", 385, 2)
    write_json(path, {"n": 385})
    assert path.name == "refined-385-2.json" and json.loads(path.read_text()) == {"n": 385}

"""Tests for simcaptcha.config: the params.yaml schema and its one-line errors."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from helpers import REPO
from simcaptcha.config import (AugmentConfig, BinarizeConfig, Config, MaskConfig, RenderConfig, SelfTrainConfig,
                               load_config, parse_section)
from simcaptcha.errors import SimcaptchaError


def load_text(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return load_config(path)


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(SimcaptchaError) as info:
        load_text(tmp_path, text)
    return str(info.value)


# ---------------------------------------------------------------- valid files
def test_repo_params_file_loads_with_its_values():
    config = load_config(REPO / "params.yaml")
    assert isinstance(config, Config)
    assert config.fetch.unlabelled.sources == [
        "data/samples/hackmit2017/challenge-17",
        "data/samples/hackmit2017/challenge-18",
        "data/samples/hackmit2017/challenge-19",
    ]
    assert config.fetch.labelled.labels == "csv"
    assert config.fetch.labelled.labels_csv == "data/samples/hackmit2017/dev_labels.csv"
    assert config.binarize.size == [50, 100]
    assert config.binarize.background == "columns"
    assert config.mask.threshold == 0.95
    assert config.render.charset == "abcdefghijklmnopqrstuvwxyz0123456789"
    assert config.render.font_size == [24, 32]  # from the file, not the schema default [26, 34]
    assert config.render.spacing == [0, 12]
    assert config.augment.zoom_range == [0.95, 1.05]
    # every sample file the params name is in the repo
    for source in config.fetch.unlabelled.sources:
        assert (REPO / source).is_file(), source


def test_empty_file_and_empty_sections_give_defaults(tmp_path):
    assert load_text(tmp_path, "") == Config()
    assert load_text(tmp_path, "binarize:\nmask: {}\n") == Config()
    assert Config().binarize == BinarizeConfig()


def test_config_is_frozen_and_defaults_are_not_shared():
    config = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.mask = MaskConfig()  # type: ignore[misc]
    one, two = RenderConfig(), RenderConfig()
    one.length.append(99)
    assert two.length == [4, 4]


def test_int_is_accepted_for_float_and_becomes_float(tmp_path):
    config = load_text(tmp_path, "binarize:\n  threshold: 1\naugment:\n  zoom_range: [1, 2]\n")
    assert config.binarize.threshold == 1.0 and type(config.binarize.threshold) is float
    assert config.augment.zoom_range == [1.0, 2.0]
    assert all(type(value) is float for value in config.augment.zoom_range)


def test_size_is_height_width_and_not_a_min_max_pair(tmp_path):
    assert load_text(tmp_path, "binarize:\n  size: [100, 50]\n").binarize.size == [100, 50]


def test_nested_source_section_and_sha256_mapping(tmp_path):
    config = load_text(tmp_path, "fetch:\n  labelled:\n    sources: [a.zip]\n    labels: filename\n"
                                 "    sha256: {a.zip: abc}\n    limit: 5\n")
    assert config.fetch.labelled.sources == ["a.zip"]
    assert config.fetch.labelled.labels == "filename"
    assert config.fetch.labelled.sha256 == {"a.zip": "abc"}
    assert config.fetch.labelled.limit == 5
    assert config.fetch.unlabelled.sources == []


# ---------------------------------------------------------------- unknown keys
def test_unknown_key_suggests_nearest(tmp_path):
    message = error_of(tmp_path, "binarize:\n  sise: [50, 100]\n")
    assert message == "params: unknown key binarize.sise (did you mean binarize.size?)"


def test_unknown_nested_key_suggests_with_full_path(tmp_path):
    message = error_of(tmp_path, "fetch:\n  unlabelled:\n    labls: csv\n")
    assert "unknown key fetch.unlabelled.labls" in message
    assert "did you mean fetch.unlabelled.labels?" in message


def test_unknown_top_level_section(tmp_path):
    message = error_of(tmp_path, "plotting:\n  epochs: 3\n")
    assert message == "params: unknown key plotting"
    assert "did you mean" in error_of(tmp_path, "rendr:\n  count: 3\n")


def test_section_that_is_not_a_mapping(tmp_path):
    assert "params: binarize must be a mapping" in error_of(tmp_path, "binarize: 3\n")
    assert "params: the file must be a mapping" in error_of(tmp_path, "- 1\n- 2\n")


# ---------------------------------------------------------------- types
@pytest.mark.parametrize("text, expected", [
    ("binarize:\n  sample_sheet: '3'\n", "params: binarize.sample_sheet must be an integer, got '3'"),
    ("binarize:\n  sample_sheet: true\n", "params: binarize.sample_sheet must be an integer, got True"),
    ("binarize:\n  sample_sheet: 3.0\n", "params: binarize.sample_sheet must be an integer, got 3.0"),
    ("render:\n  use_mask: 1\n", "params: render.use_mask must be true or false, got 1"),
    ("render:\n  use_mask: 'yes'\n", "params: render.use_mask must be true or false, got 'yes'"),
    ("binarize:\n  threshold: true\n", "params: binarize.threshold must be a number, got True"),
    ("binarize:\n  threshold: high\n", "params: binarize.threshold must be a number, got 'high'"),
    ("render:\n  charset: 123\n", "params: render.charset must be a string, got 123"),
    ("render:\n  fonts: '*'\n", "params: render.fonts must be a list, got '*'"),
    ("render:\n  font_size: [24.5, 30]\n", "params: render.font_size[0] must be an integer, got 24.5"),
    ("fetch:\n  labelled:\n    sha256: [abc]\n", "params: fetch.labelled.sha256 must be a mapping"),
])
def test_wrong_types_name_the_key(tmp_path, text, expected):
    assert error_of(tmp_path, text).startswith(expected)


# ---------------------------------------------------------------- ranges and choices
@pytest.mark.parametrize("text, expected", [
    ("binarize:\n  threshold: 1.5\n", "params: binarize.threshold = 1.5 is above its maximum 1.0"),
    ("binarize:\n  threshold: -0.1\n", "params: binarize.threshold = -0.1 is below its minimum 0.0"),
    ("mask:\n  dilate: 6\n", "params: mask.dilate = 6 is above its maximum 5"),
    ("fetch:\n  shard_size: 0\n", "params: fetch.shard_size = 0 is below its minimum 1"),
    ("render:\n  length: [0, 4]\n", "params: render.length[0] = 0 is below its minimum 1"),
    ("render:\n  text_intensity: [0, 256]\n", "params: render.text_intensity[1] = 256 is above its maximum 255"),
    ("binarize:\n  size: [4, 100]\n", "params: binarize.size[0] = 4 is below its minimum 8"),
    ("fetch:\n  unlabelled:\n    repeat: 0\n", "params: fetch.unlabelled.repeat = 0 is below its minimum 1"),
])
def test_out_of_range_names_the_key(tmp_path, text, expected):
    assert error_of(tmp_path, text) == expected


def test_range_bounds_are_inclusive(tmp_path):
    config = load_text(tmp_path, "binarize:\n  threshold: 1.0\nmask:\n  threshold: 0\n  dilate: 5\n")
    assert (config.binarize.threshold, config.mask.threshold, config.mask.dilate) == (1.0, 0.0, 5)


def test_literal_not_in_choices(tmp_path):
    message = error_of(tmp_path, "binarize:\n  method: adaptive\n")
    assert message == "params: binarize.method = 'adaptive' is not one of 'otsu', 'fixed', 'sauvola', 'none'"
    assert "fetch.unlabelled.labels = 'xml'" in error_of(tmp_path, "fetch:\n  unlabelled:\n    labels: xml\n")


def test_literal_choices_are_accepted(tmp_path):
    config = load_text(tmp_path, "binarize:\n  method: sauvola\n  background: none\n  polarity: dark\n")
    assert (config.binarize.method, config.binarize.background, config.binarize.polarity) == (
        "sauvola", "none", "dark")


def test_pair_with_min_above_max(tmp_path):
    assert error_of(tmp_path, "render:\n  length: [5, 4]\n") == (
        "params: render.length = [5, 4]: the minimum is above the maximum")
    assert "augment.zoom_range" in error_of(tmp_path, "augment:\n  zoom_range: [1.1, 0.9]\n")


@pytest.mark.parametrize("value", ["[1, 2, 3]", "[4]", "[]"])
def test_pair_with_wrong_item_count(tmp_path, value):
    message = error_of(tmp_path, f"render:\n  spacing: {value}\n")
    assert message.startswith("params: render.spacing must have exactly two numbers")


def test_equal_pair_is_a_fixed_value(tmp_path):
    assert load_text(tmp_path, "render:\n  length: [6, 6]\n").render.length == [6, 6]


def test_parse_section_directly():
    config = parse_section(AugmentConfig, {"variants": 3}, "augment")
    assert config.variants == 3 and config.seed == 0
    with pytest.raises(SimcaptchaError, match=r"^params: augment\.variants = 0 is below its minimum 1$"):
        parse_section(AugmentConfig, {"variants": 0}, "augment")


# ---------------------------------------------------------------- files
def test_invalid_yaml_gives_line_number(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("binarize:\n  size: [50, 100]\n   method: otsu\n")
    with pytest.raises(SimcaptchaError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(str(path))
    assert re.search(r"line 3\b", message), message
    assert "not valid YAML" in message


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(SimcaptchaError, match=re.escape(f"{path}: no such file")):
        load_config(path)


# ---------------------------------------------------------------- holes in validation (bugs)
@pytest.mark.parametrize("text, key", [
    # BUG (config.py RenderConfig.seed): `seed: int = 0` had no lower bound, so `render: {seed: -1}` passed
    # validation, but rendering.py Renderer.render_chunk seeds np.random.default_rng([seed, kind, chunk]),
    # which raises a raw ValueError ("expected non-negative integer") mid-stage.
    ("render:\n  seed: -1\n", "render.seed"),
    # BUG (config.py _check_range): comparisons with NaN are always False, so `.nan` passed every
    # [low, high] check; `mask: {threshold: .nan}` was accepted and silently yielded an empty mask.
    ("mask:\n  threshold: .nan\n", "mask.threshold"),
], ids=["negative-seed", "nan"])
def test_a_value_that_would_fail_mid_stage_is_rejected_up_front(tmp_path, text, key):
    with pytest.raises(SimcaptchaError, match=re.escape(key)):
        load_text(tmp_path, text)


def test_a_student_needs_four_conv_widths():
    with pytest.raises(SimcaptchaError, match=r"selftrain.student_channels must list 4 conv widths"):
        parse_section(SelfTrainConfig, {"student_channels": [32, 64]}, "selftrain")
    assert parse_section(SelfTrainConfig, {}, "selftrain").student_channels == []


def test_per_position_heads_with_a_variable_length_are_refused_before_any_stage(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"render": {"length": [3, 6]}}))
    with pytest.raises(SimcaptchaError, match=r"^params: classifier.head 'positions' reads a fixed length, but "
                                              r"render.length is \[3, 6\]; use classifier.head 'ctc'$"):
        load_config(path)
    path.write_text(yaml.safe_dump({"render": {"length": [3, 6]}, "classifier": {"head": "ctc"}}))
    assert load_config(path).render.length == [3, 6]


def test_a_case_insensitive_charset_draws_both_cases_and_reads_labels_in_its_own():
    render = RenderConfig(charset="ab1", case_insensitive=True)
    assert render.drawn_charset() == "ab1AB" and render.label_of("aB1") == "ab1"
    assert RenderConfig(charset="ab1").label_of("aB1") == "aB1"  # case-sensitive: a label as written
    assert RenderConfig(charset="AB", case_insensitive=True).label_of("ab") == "AB"
    with pytest.raises(SimcaptchaError, match=r"render.case_insensitive: render.charset holds both cases of 'b'"):
        RenderConfig(charset="abB", case_insensitive=True)

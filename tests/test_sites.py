"""`simcaptcha site`: what it measures, the target file it writes, and a whole run on the tiny pipeline."""

import json

import numpy as np
import pytest
import yaml

from helpers import CONSOLE_SCRIPT, KAGGLE_ZIP, REPO, SAMPLES, run_cli, run_tool

from simcaptcha.config import EstimateConfig
from simcaptcha.errors import SimcaptchaError
from simcaptcha.estimate import text_ink
from simcaptcha.sites import (SiteRequest, baseline_spread, column_runs, parse_length, random_lines, salt_noise,
                              site_length, site_target, summary, target_text, working_size)

MIN_AREA = EstimateConfig().min_area

LABELS_CSV = SAMPLES / "dev_labels.csv"


def request(**changes) -> SiteRequest:
    """The embedded HackMIT sample as a new site: two challenge files as the pool, the third labelled by CSV."""
    values = {"name": "hackmit", "pool": [str(SAMPLES / "challenge-17"), str(SAMPLES / "challenge-18")],
              "labelled": [str(SAMPLES / "challenge-19")], "labels": f"csv:{LABELS_CSV}"}
    return SiteRequest(**{**values, **changes})


def test_lengths_are_one_number_or_a_range():
    assert parse_length("5") == (5, 5) and parse_length(" 3-6 ") == (3, 6)
    for bad in ("", "0", "6-3", "five", "3-", "-3"):
        with pytest.raises(SimcaptchaError, match="--length"):
            parse_length(bad)


def test_labels_that_contradict_the_given_length_decide_it():
    assert site_length((5, 5), []) == ((5, 5), "as given")
    assert site_length(None, ["abcd", "abcde"]) == ((4, 5), "the 2 labels hold 4 to 5 characters")
    assert site_length((3, 6), ["abcd"]) == ((3, 6), "as given; the 1 labels hold 4 to 4 characters")
    assert site_length((4, 4), ["abcde", "abcde"]) == (
        (5, 5), "the 2 labels hold 5 to 5 characters, outside the --length 4-4 given: the labels' range")
    with pytest.raises(SimcaptchaError, match="--length is needed"):
        site_length(None, [])


def test_the_working_size_is_the_native_one_scaled_down_to_fit():
    assert working_size([50, 50, 52], [200, 200, 190]) == ([50, 200], "the pool's median native size is 50x200, "
                                                                      "read as it is")
    size, note = working_size([128], [512])
    assert size == [64, 256] and note.endswith("read at 0.50 of it")
    assert working_size([30], [1000])[0] == [8, 256]  # never below binarize.size's bound


def test_a_labelled_sample_sets_the_length_and_the_pool_its_size():
    target, notes = site_target(request())
    jitter = target["render"].pop("y_offset")
    assert target["render"] == {"charset": "abcdefghijklmnopqrstuvwxyz0123456789", "length": [4, 4]}
    assert jitter[0] == -jitter[1] and 4 <= jitter[1] <= 10  # HackMIT's characters wander off one baseline
    assert "the text's rows in 4 slices of its columns spread" in notes["render.y_offset"]
    assert notes["render.length"] == "the 300 labels hold 4 to 4 characters"
    assert target["binarize"]["size"] == [50, 100] and target["classifier"]["head"] == "positions"
    assert target["fetch"]["labelled"] == {"sources": [str(SAMPLES / "challenge-19")], "labels": "csv",
                                           "labels_csv": str(LABELS_CSV)}
    assert target["selftrain"]["exclude_labelled"] is True


def test_a_varying_length_picks_ctc_and_a_shared_source_reads_the_evaluation_set_unlabelled():
    target, notes = site_target(request(pool=[str(KAGGLE_ZIP)], labelled=[str(KAGGLE_ZIP)], labels="filename",
                                        charset="2345678bcdefgmnpwxy", length=(4, 6)))
    assert target["classifier"]["head"] == "ctc"
    assert notes["render.length"] == "as given; the 1040 labels hold 5 to 5 characters"
    assert target["binarize"]["size"] == [50, 200] and target["selftrain"]["exclude_labelled"] is False


@pytest.mark.parametrize("changes, message", [
    ({"labelled": [], "labels": ""}, "--length is needed where no labelled captchas are given"),
    ({"labelled": [], "labels": "filename"}, "--labels needs --labelled sources"),
    ({"labels": "json"}, "--labels 'json': expected filename, csv:PATH or json:PATH"),
    ({"name": "../up"}, "site name '../up'"),
    ({"pool": ["/no/such/folder"]}, "/no/such/folder"),
    ({"charset": "abcdefghijklmnopqrstuvwxyz"}, "the labels hold '0123456789', outside --charset"),
    ({"charset": "aab"}, "--charset 'aab' repeats a character"),
    ({"charset": "0123456789abcdefghijklmnopqrstuvwxyz漢"}, "none draws '漢'"),
])
def test_what_cannot_make_a_target_is_one_error_naming_it(changes, message):
    with pytest.raises(SimcaptchaError, match=message.replace("(", r"\(").replace("[", r"\[")):
        site_target(request(**changes))


@pytest.fixture
def mixed_case_labels(tmp_path):
    """Three captchas labelled by file name with the case as drawn (as e-SAJ's hand labels are)."""
    from PIL import Image

    for name in ("AbCd", "efGh", "ijkl"):
        Image.new("L", (100, 50), 255).save(tmp_path / f"{name}.png")
    return {"labelled": [str(tmp_path)], "labels": "filename"}


def test_labels_in_mixed_case_need_case_insensitive_which_reads_them_in_the_charsets_case(mixed_case_labels):
    with pytest.raises(SimcaptchaError, match=r"the labels hold 'ACG', outside --charset .* --case-insensitive"):
        site_target(request(**mixed_case_labels))
    target, notes = site_target(request(**mixed_case_labels, case_insensitive=True))
    assert target["render"]["case_insensitive"] is True and target["render"]["length"] == [4, 4]
    assert "in either case" in notes["render.charset"]
    with pytest.raises(SimcaptchaError, match=r"--case-insensitive: --charset holds both cases of 'ab'"):
        site_target(request(**mixed_case_labels, charset="abcdAB", case_insensitive=True))


def test_the_target_file_says_what_was_measured_beside_each_value():
    target, notes = site_target(request())
    text = target_text(request(), target, notes)
    assert yaml.safe_load(text) == target
    assert "  size: [50, 100]  # the pool's median native size is 50x100, read as it is" in text.splitlines()
    assert "  head: positions  # every captcha has the same length and its characters stand apart (4 text " \
        "components, 4 runs of inked columns per captcha): one head per position" in text.splitlines()
    assert "  charset: abcdefghijklmnopqrstuvwxyz0123456789  # 65 of the vendored fonts draw every character" in \
        text.splitlines()


def test_dry_run_prints_the_target_and_the_experiment_and_writes_nothing(capsys, monkeypatch):
    monkeypatch.chdir(REPO)  # a project: the experiment's params start from its committed params.yaml
    code, out, err = run_cli(capsys, "site", "demo", "--pool", SAMPLES / "challenge-17", "--length", "4",
                             "--dry-run")
    assert (code, err) == (0, "") and not (REPO / "targets" / "demo.yaml").exists()
    assert out.startswith("machine: ") and "classifier.precision auto: " in out.splitlines()[0]
    assert out.splitlines()[1] == "# targets/demo.yaml, not written (--dry-run)"
    assert out.splitlines()[-1].startswith("dvc exp run -S ") and out.rstrip().endswith(" evaluate --name demo")


def test_the_summary_withholds_a_collapsed_run():
    figures = {"selftrained": {"collapsed": True, "most_common_share": 0.6, "most_common_reading": "0444",
                               "count": 500, "char_accuracy": 0.11, "captcha_accuracy": 0.0}}
    text = summary("s", figures)
    assert "collapsed: 60% of the held-out pool read as '0444'; no result" in text
    assert "estimated" not in text


@pytest.mark.slow
def test_site_runs_the_pipeline_and_leaves_its_reader_and_figures(tiny_project):
    """On the tiny project (its committed params are tiny): the whole pipeline as the experiment `demo`."""
    out = run_tool([str(CONSOLE_SCRIPT), "site", "demo", "--pool", str(SAMPLES / "challenge-17"),
                    "--labelled", str(SAMPLES / "challenge-19"), "--labels", f"csv:{LABELS_CSV}"], tiny_project)
    assert "wrote targets/demo.yaml" in out and "demo: reader at sites/demo/reader.safetensors" in out
    figures = json.loads((tiny_project / "sites/demo/evaluate.json").read_text())
    assert figures == json.loads((tiny_project / "metrics/evaluate.json").read_text())
    assert figures["selftrained"]["count"] == 60 and figures["selftrained"]["real_labels_used"] == 0
    read = run_tool([str(CONSOLE_SCRIPT), "predict", "--model", "sites/demo/reader.safetensors",
                     str(SAMPLES / "challenge-19")], tiny_project)
    assert read.startswith("name,prediction,confidence\n") and read.count("\n") == 1001
    assert "demo" in run_tool(["dvc", "exp", "show", "--csv"], tiny_project)
    assert "label-budget" not in out  # up to evaluate: the grid is not part of a site's run


def blocks_and_line(count: int = 20, line: str = "", seed: int = 0, jitter: int = 0, pitch: int = 20) -> np.ndarray:
    """Captchas of five solid 16x8 'characters' in a row ``pitch`` px apart, each image shifted a little and each
    character up to ``jitter`` px off the row, optionally crossed by a 1-px line, straight or bent, that joins them."""
    rng, images = np.random.default_rng(seed), []
    for _ in range(count):
        image = np.zeros((50, 120), np.uint8)
        top, left = rng.integers(12, 20), rng.integers(5, 15)
        for index in range(5):
            row = top + rng.integers(-jitter, jitter + 1)
            image[row:row + 16, left + index * pitch:left + index * pitch + 8] = 255
        columns = np.arange(2, 118)
        if line == "straight":
            image[top + 8, columns] = 255
        elif line == "bent":
            image[(top + 8 + 8 * np.sin(columns / 12)).astype(int), columns] = 255
        images.append(image)
    return np.stack(images)


def test_thin_strokes_that_join_the_text_become_random_lines_and_bends_are_told_apart():
    mask = np.zeros((50, 120), bool)
    assert random_lines(blocks_and_line(), mask)[0::2] == ({}, 5)
    params, note, components = random_lines(blocks_and_line(line="straight"), mask)
    assert components == 5 and params["estimate"] == {"opening": 1}
    assert params["render"] == {"lines": [1, 1], "line_width": [1, 1], "line_bends": [0, 0]}
    assert note.startswith("thin strokes join the text: a 3x3 opening splits 1 components per captcha into 5")
    assert random_lines(blocks_and_line(line="bent"), mask)[0]["render"]["line_bends"] == [1, 2]


def test_a_site_whose_characters_touch_is_read_with_ctc():
    target, notes = site_target(request(pool=[str(KAGGLE_ZIP)], labelled=[str(KAGGLE_ZIP)], labels="filename",
                                        charset="2345678bcdefgmnpwxy", length=(6, 6)))
    assert target["classifier"]["head"] == "ctc" and "the characters touch" in notes["classifier.head"]
    assert target["estimate"] == {"opening": 1} and target["render"]["lines"] == [1, 1]  # Kaggle's bent line
    assert "  opening: 1  # the text is measured with those lines removed" in target_text(
        request(), target, notes).splitlines()


def test_specks_outside_the_mask_become_salt_noise():
    images, mask = blocks_and_line(), np.zeros((50, 120), bool)
    assert salt_noise(images, mask)[0] == {}
    speckled = images.copy()
    speckled[:, 2:48:6, 2:118:6] = 255  # single-pixel dots on a 6-px grid: 160 of the 6,000 pixels, some on text
    params, note = salt_noise(speckled, mask)
    assert 0.015 < params["salt"] < 0.027 and note.endswith("are specks of at most 4 px")
    grid = np.zeros((50, 120), bool)
    grid[2:48:6, 2:118:6] = True
    assert salt_noise(speckled, grid)[0] == {}  # dots in the same place in every captcha: fixed noise, masked


def test_characters_that_share_columns_leave_fewer_column_runs_than_characters():
    mask = np.zeros((50, 120), bool)
    assert column_runs(text_ink(blocks_and_line(), mask, MIN_AREA, 0)) == 5
    assert column_runs(text_ink(blocks_and_line(pitch=6), mask, MIN_AREA, 0)) == 1  # overlapping: one run
    assert column_runs(text_ink(blocks_and_line(line="straight"), mask, MIN_AREA, 1)) == 5  # the line opened away


def test_characters_off_one_baseline_spread_their_rows():
    mask = np.zeros((50, 120), bool)
    assert baseline_spread(text_ink(blocks_and_line(), mask, MIN_AREA, 0), 5) == 0
    spread = baseline_spread(text_ink(blocks_and_line(jitter=6), mask, MIN_AREA, 0), 5)
    assert 2.5 < spread < 4.5  # a uniform ±6 px has sd 3.7 px; rows about the captcha's median
    assert baseline_spread(np.zeros((3, 50, 120), bool), 5) == 0  # blank captchas: nothing to measure

"""simcaptcha predict: CSV of a reader file's predictions for real inputs, preprocessing from the file alone."""

import base64
import csv
import dataclasses
import io
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from skimage.filters import threshold_otsu

from helpers import CHARSET, CONSOLE_SCRIPT, KAGGLE_ZIP, SAMPLES, challenge_json, encode_image, json_images, run_cli

from simcaptcha import imaging
from simcaptcha.config import BinarizeConfig
from simcaptcha.errors import SimcaptchaError
from simcaptcha.modelfile import ReaderSpec, save_reader
from simcaptcha.inference import inference_reader
from simcaptcha.predict import Predictor, predict, read_inputs

pytestmark = pytest.mark.usefixtures("keep_torch_threads")

CHALLENGE = SAMPLES / "challenge-19"
HEADER = ["name", "prediction", "confidence"]


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def challenge():
    """The embedded challenge file's names (in file order), encoded images and decoded 100x50 RGB images."""
    names, blobs = map(list, zip(*json_images(CHALLENGE)))
    rgb = np.stack([imaging.fit_to_size(imaging.decode_image(blob, "t"), 50, 100) for blob in blobs])
    return names, blobs, rgb


@pytest.fixture(scope="module")
def spec():
    return ReaderSpec(CHARSET, 4, "positions", (8, 8, 8, 8), 50, 100, BinarizeConfig(), "light")


@pytest.fixture(scope="module")
def weights(spec):
    torch.manual_seed(0)
    return spec.build().eval()


@pytest.fixture(scope="module")
def background(challenge):
    return imaging.estimate_background(challenge[2], "columns")


@pytest.fixture(scope="module")
def model(tmp_path_factory, spec, weights, background):
    path = tmp_path_factory.mktemp("model") / "reader.safetensors"
    save_reader(path, weights, spec, background)
    return path


@pytest.fixture(scope="module")
def png_folder(tmp_path_factory, challenge):
    """Twelve of the challenge's images re-encoded as PNG files in a folder (one name with a comma)."""
    folder = tmp_path_factory.mktemp("pngs")
    names = [f"img{index:02d}" for index in range(11)] + ["with,comma"]
    for name, image in zip(names, challenge[2]):
        imaging.save_png(folder / f"{name}.png", image)
    return folder, names


def rows_of(text: str) -> list[list[str]]:
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == HEADER
    return rows[1:]


def check_rows(rows: list[list[str]], names: list[str]) -> None:
    assert [row[0] for row in rows] == names  # input order
    for _, text, confidence in rows:
        assert len(text) == 4 and set(text) <= set(CHARSET)
        assert 0.0 <= float(confidence) <= 1.0 and len(confidence.split(".")[1]) == 4


# ---------------------------------------------------------------- the command
def test_challenge_json(capsys, model, challenge):
    code, out, _ = run_cli(capsys, "predict", "--model", model, CHALLENGE)
    assert code == 0
    check_rows(rows_of(out), challenge[0])


def test_folder_of_pngs(capsys, model, png_folder):
    folder, names = png_folder
    code, out, _ = run_cli(capsys, "predict", "--model", model, folder)
    assert code == 0
    check_rows(rows_of(out), sorted(names))  # a folder is read in path order; the comma is quoted


def test_zip_archive(capsys, model):
    with zipfile.ZipFile(KAGGLE_ZIP) as archive:
        members = sorted(name for name in archive.namelist() if name.endswith(".png"))
    code, out, _ = run_cli(capsys, "predict", "--model", model, KAGGLE_ZIP)
    assert code == 0
    check_rows(rows_of(out), [Path(member).stem for member in members])


def test_inputs_keep_their_order_and_batches_change_nothing(tmp_path, model, png_folder, challenge):
    folder, names = png_folder
    lone = tmp_path / "extra.png"
    lone.write_bytes((folder / f"{names[0]}.png").read_bytes())
    inputs = [str(lone), str(CHALLENGE), str(folder)]
    whole = list(predict(model, inputs, batch_size=512))
    small = list(predict(model, inputs, batch_size=7))
    assert [row[0] for row in whole] == ["extra"] + challenge[0] + sorted(names)
    assert [row[:2] for row in small] == [row[:2] for row in whole]
    assert np.allclose([row[2] for row in small], [row[2] for row in whole], rtol=1e-4, atol=1e-7)
    same_image = next(row for row in whole if row[0] == names[0])  # extra.png is a copy of it
    assert same_image[1] == whole[0][1] and same_image[2] == pytest.approx(whole[0][2], rel=1e-4, abs=1e-7)


@pytest.mark.slow  # a fresh interpreter imports torch: 2 s or more
def test_console_script(model, png_folder):
    result = subprocess.run([CONSOLE_SCRIPT, "predict", "--model", str(model), str(png_folder[0])],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    check_rows(rows_of(result.stdout), sorted(png_folder[1]))


@pytest.mark.slow  # a fresh interpreter imports torch: 2 s or more
def test_missing_model_is_one_line_naming_it(tmp_path, png_folder):
    missing = tmp_path / "no-such-reader.safetensors"
    result = subprocess.run([CONSOLE_SCRIPT, "predict", "--model", str(missing), str(png_folder[0])],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and str(missing) in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("kind", ["text", "gan-format", "empty"])
def test_a_file_that_is_not_a_reader(capsys, tmp_path, png_folder, kind):
    path = tmp_path / "model.safetensors"
    if kind == "text":
        path.write_text("name,label\nabc,abcd\n")
    elif kind == "gan-format":
        save_file({"x": torch.zeros(2)}, str(path), {"format": "simcaptcha-gan/1"})
    else:
        path.write_bytes(b"")
    code, out, err = run_cli(capsys, "predict", "--model", path, png_folder[0])
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and str(path) in err


def test_a_corrupt_image_is_named(capsys, tmp_path, model, challenge):
    imaging.save_png(tmp_path / "good.png", challenge[2][0])
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    code, out, err = run_cli(capsys, "predict", "--model", model, tmp_path)
    assert code == 1 and out == ""  # nothing is written before the inputs are known to be readable
    assert err.count("\n") == 1 and "broken.png" in err


@pytest.mark.parametrize("problem", ["missing", "empty-folder"])
def test_unreadable_or_empty_input(capsys, tmp_path, model, problem):
    target = tmp_path / "inputs"
    if problem == "empty-folder":
        target.mkdir()
    code, out, err = run_cli(capsys, "predict", "--model", model, target)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and str(target) in err


def test_batch_size_must_be_positive(capsys, model, png_folder):
    code, _, err = run_cli(capsys, "predict", "--model", model, "--batch-size", "0", png_folder[0])
    assert code == 2 and "--batch-size" in err


# ---------------------------------------------------------------- preprocessing from the file
def test_preprocessing_comes_from_the_model_file(tmp_path, spec, weights, background, challenge):
    names, blobs, rgb = challenge[0][:64], challenge[1][:64], challenge[2][:64]
    save_reader(tmp_path / "with.safetensors", weights, spec, background)
    save_reader(tmp_path / "without.safetensors", weights, spec, None)
    with_background = Predictor(tmp_path / "with.safetensors").preprocess(blobs, names)
    without = Predictor(tmp_path / "without.safetensors").preprocess(blobs, names)
    assert with_background.shape == without.shape == (64, 50, 100) and with_background.dtype == np.uint8
    assert (with_background != without).mean() > 0.01
    # each is exactly what the pipeline's binarize stage makes of these images with those settings
    for images, stored in ((with_background, background), (without, None)):
        expected = imaging.threshold_scores(imaging.foreground_score(rgb, stored, spec.binarize, spec.polarity),
                                            spec.binarize)
        assert np.array_equal(images, expected)


def test_the_raised_otsu_level_comes_from_the_model_file(tmp_path, spec, weights, background, challenge):
    names, blobs, rgb = challenge[0][:32], challenge[1][:32], challenge[2][:32]
    thin = dataclasses.replace(spec, binarize=dataclasses.replace(spec.binarize, otsu_scale=1.25))
    save_reader(tmp_path / "plain.safetensors", weights, spec, background)
    save_reader(tmp_path / "thin.safetensors", weights, thin, background)
    plain = Predictor(tmp_path / "plain.safetensors").preprocess(blobs, names)
    thinned = Predictor(tmp_path / "thin.safetensors").preprocess(blobs, names)
    assert thinned.sum() < plain.sum() and not (thinned & ~plain).any()  # fewer ink pixels, none new
    expected = imaging.threshold_scores(imaging.foreground_score(rgb, background, thin.binarize, thin.polarity),
                                        thin.binarize)
    assert np.array_equal(thinned, expected)


def test_images_are_fitted_to_the_model_size(tmp_path):
    small = ReaderSpec(CHARSET, 4, "positions", (8, 8, 8, 8), 30, 60, BinarizeConfig(), "dark")
    save_reader(tmp_path / "small.safetensors", small.build(), small, None)
    blobs, names = read_inputs([str(KAGGLE_ZIP)])
    images = Predictor(tmp_path / "small.safetensors").preprocess(blobs[:5], names[:5])
    assert images.shape == (5, 30, 60)


def test_a_background_that_does_not_fit_the_size_is_refused(tmp_path, spec, weights):
    save_reader(tmp_path / "odd.safetensors", weights, spec, np.zeros((1, 60, 3), np.float32))
    with pytest.raises(SimcaptchaError, match="background has shape"):
        Predictor(tmp_path / "odd.safetensors")


def test_folded_reader_reads_like_the_original(spec):
    torch.manual_seed(1)
    model = spec.build().eval()
    for module in model.modules():  # non-trivial batch-norm statistics, as after training
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    images = (torch.rand(16, 1, 50, 100) > 0.8).float()
    folded = inference_reader(model)
    assert not any(isinstance(module, torch.nn.BatchNorm2d) for module in folded.modules())
    with torch.no_grad():
        assert torch.allclose(folded(images), model(images), atol=1e-4)


# ---------------------------------------------------------------- binarize: batch Otsu and the fast distance
def _scores(challenge, background, polarity, gray="luma"):
    return imaging.foreground_score(challenge[2][:300], background, BinarizeConfig(gray=gray), polarity)


def _per_image_reference(scores: np.ndarray) -> np.ndarray:
    """What threshold_scores gave with a loop of skimage's threshold_otsu, blank images staying blank."""
    out = np.zeros(scores.shape, np.uint8)
    for index, score in enumerate(scores):
        if score.max() - score.min() >= 1e-6:
            out[index] = np.where(score > threshold_otsu(score), 255, 0)
    return out


@pytest.mark.parametrize("case", ["background", "light-luma", "dark-min", "random"])
def test_batch_otsu_matches_skimage(challenge, background, case):
    if case == "background":
        scores = _scores(challenge, background, "light")
    elif case == "light-luma":
        scores = _scores(challenge, None, "light")
    elif case == "dark-min":
        scores = _scores(challenge, None, "dark", gray="min")
    else:
        scores = np.random.default_rng(0).random((50, 20, 30), dtype=np.float32) ** 3
    expected = np.array([threshold_otsu(score) for score in scores])
    found = imaging.batch_otsu(scores)
    bin_width = (scores.reshape(len(scores), -1).max(1) - scores.reshape(len(scores), -1).min(1)) / 256
    assert np.all(np.abs(found - expected) <= bin_width * 1.0001)  # the requirement: within one bin
    assert np.array_equal(imaging.threshold_scores(scores, BinarizeConfig()), _per_image_reference(scores))


def test_batch_otsu_blank_and_empty():
    scores = np.zeros((3, 10, 10), np.float32)
    scores[1] = 0.25
    scores[2, 5:] = 1.0
    assert imaging.batch_otsu(scores)[1] == pytest.approx(0.25)
    assert imaging.batch_otsu(scores[2:])[0] == pytest.approx(threshold_otsu(scores[2]))
    assert np.array_equal(imaging.threshold_scores(scores, BinarizeConfig()), _per_image_reference(scores))
    assert imaging.batch_otsu(np.zeros((0, 5, 5), np.float32)).shape == (0,)


def test_background_distance_matches_the_vector_norm(challenge, background):
    rgb = challenge[2][:200]
    expected = np.linalg.norm(rgb.astype(np.float32) - background.astype(np.float32), axis=-1) / (255 * np.sqrt(3))
    found = imaging.foreground_score(rgb, background, BinarizeConfig(), "light")
    assert found.dtype == np.float32
    np.testing.assert_allclose(found, expected, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- --skip-bad
def _truncated_png(image: np.ndarray) -> bytes:
    data = encode_image(Image.fromarray(image))
    return data[:len(data) // 2]


@pytest.fixture
def mixed_inputs(tmp_path, challenge):
    """Inputs in which some inputs and images cannot be read, and the rows --skip-bad gives for them (None: a
    reading, the same as a run over the good images alone gives)."""
    names, blobs, rgb = challenge
    folder = tmp_path / "folder"
    folder.mkdir()
    imaging.save_png(folder / "a.png", rgb[0])
    (folder / "b.png").write_bytes(_truncated_png(rgb[1]))
    imaging.save_png(folder / "c.png", rgb[2])
    (folder / "d.png").write_bytes(b"")
    entries = [{"name": name, "jpg_base64": base64.b64encode(blob).decode()} for name, blob in zip(names[:3], blobs)]
    entries[1]["jpg_base64"] = base64.b64encode(_truncated_png(rgb[3])).decode()
    (tmp_path / "some.json").write_bytes(challenge_json(entries))
    (tmp_path / "bad.json").write_bytes(challenge_json([{"name": "x", "jpg_base64": "not base64!"}]))
    (tmp_path / "other").mkdir()
    imaging.save_png(tmp_path / "other" / "a.png", rgb[4])
    missing = tmp_path / "missing.zip"
    inputs = [folder, missing, tmp_path / "some.json", tmp_path / "bad.json", tmp_path / "other" / "a.png"]
    rows = [
        ["a", None],
        ["b", "image 'b': not a readable image (image file is truncated)"],
        ["c", None],
        ["d", "image 'd': empty file (0 bytes)"],
        [str(missing), f"{missing}: no such file or folder"],
        [names[0], None],
        [names[1], f"image {names[1]!r}: not a readable image (image file is truncated)"],
        [names[2], None],
        [str(tmp_path / "bad.json"), f"{tmp_path / 'bad.json'}: image 0 (x): jpg_base64 is not valid base64 "
                                     f"(Only base64 data is allowed)"],
        ["a", f"{tmp_path / 'other' / 'a.png'}: image name 'a' appears in an earlier input or entry"],
    ]
    good = [str(folder / "a.png"), str(folder / "c.png")]
    (tmp_path / "good.json").write_bytes(challenge_json([entries[0], entries[2]]))
    return [str(path) for path in inputs], rows, good + [str(tmp_path / "good.json")]


def test_skip_bad_gives_a_row_for_each_unreadable_input_or_image(capsys, model, mixed_inputs):
    inputs, expected, good = mixed_inputs
    readings = {name: row for name, *row in predict(model, good)}
    code, out, err = run_cli(capsys, "predict", "--model", model, "--skip-bad", *inputs)
    assert code == 1
    assert err == "error: 6 of 10 rows have no reading, the first 'b' (the error column says why)\n"
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == HEADER + ["error"]
    assert [row[0] for row in rows[1:]] == [name for name, _ in expected]
    for (name, text, confidence, error), (_, reason) in zip(rows[1:], expected):
        if reason is None:  # read, as a run over the good images alone reads it
            assert (text, error) == (readings[name][0], "")
            assert float(confidence) == pytest.approx(readings[name][1], abs=1.0001e-4)
        else:
            assert (text, confidence, error) == ("", "0.0000", reason)


def test_without_skip_bad_the_first_bad_input_stops_the_run(capsys, model, mixed_inputs):
    code, out, err = run_cli(capsys, "predict", "--model", model, *mixed_inputs[0])
    assert (code, out) == (1, "") and err.count("\n") == 1 and "missing.zip: no such file or folder" in err


def test_skip_bad_rows_do_not_depend_on_the_batches(model, mixed_inputs):
    inputs = mixed_inputs[0]
    whole = list(predict(model, inputs, batch_size=512, skip_bad=True))
    for batch_size in (1, 3):  # every image a batch; batches wholly unreadable and partly so
        rows = list(predict(model, inputs, batch_size=batch_size, skip_bad=True))
        assert [(row[0], row[1], row[3]) for row in rows] == [(row[0], row[1], row[3]) for row in whole]
        assert np.allclose([row[2] for row in rows], [row[2] for row in whole], rtol=1e-4, atol=1e-7)


def test_skip_bad_with_nothing_bad_is_a_success_with_an_empty_error_column(capsys, tmp_path, model, png_folder):
    code, plain, _ = run_cli(capsys, "predict", "--model", model, png_folder[0])
    assert run_cli(capsys, "predict", "--model", model, "--skip-bad", png_folder[0], "-o", tmp_path / "out.csv") == (
        0, "", "")
    with_errors = list(csv.reader(io.StringIO((tmp_path / "out.csv").read_text())))
    assert with_errors == [row + ["error" if number == 0 else ""]
                           for number, row in enumerate(csv.reader(io.StringIO(plain)))]


def test_skip_bad_writes_the_whole_file_then_fails(capsys, tmp_path, model, mixed_inputs):
    out = tmp_path / "out.csv"
    code, stdout, err = run_cli(capsys, "predict", "--model", model, "--skip-bad", *mixed_inputs[0], "-o", out)
    assert (code, stdout) == (1, "") and err.startswith("error: 6 of 10 rows have no reading")
    assert len(out.read_text().splitlines()) == 11


def test_skip_bad_names_that_cannot_be_written_are_escaped(capsys, tmp_path, model, challenge):
    """A name that is not Unicode text is written escaped, and refused; a reason is one line whatever the name."""
    data = challenge_json([{"name": "\ud800", "jpg_base64": base64.b64encode(challenge[1][0]).decode()},
                           {"name": "two\nlines", "jpg_base64": base64.b64encode(b"junk").decode()}])
    (tmp_path / "odd.json").write_bytes(data)
    code, out, _ = run_cli(capsys, "predict", "--model", model, "--skip-bad", tmp_path / "odd.json")
    rows = list(csv.reader(io.StringIO(out)))[1:]
    assert code == 1 and [row[:3] for row in rows] == [["\\ud800", "", "0.0000"], ["two\nlines", "", "0.0000"]]
    assert rows[0][3] == f"{tmp_path / 'odd.json'}: image 0 (\\ud800): image name is not valid Unicode text"
    assert rows[1][3].startswith("image 'two\\nlines': not a readable image (") and "\n" not in rows[1][3]


# ---------------------------------------------------------------- --min-confidence
def test_min_confidence_empties_unsure_readings_and_marks_their_rows(capsys, model, png_folder):
    _, plain, _ = run_cli(capsys, "predict", "--model", model, png_folder[0])
    exact = [confidence for _, _, confidence in predict(model, [str(png_folder[0])])]
    threshold = float(np.median(exact))  # half the rows fall below it
    code, out, _ = run_cli(capsys, "predict", "--model", model, "--min-confidence", repr(threshold), png_folder[0])
    rows = list(csv.reader(io.StringIO(out)))
    assert code == 0 and rows[0] == HEADER + ["abstained"]
    for (name, text, confidence), row, value in zip(rows_of(plain), rows[1:], exact):
        unsure = value < threshold
        assert row == [name, "" if unsure else text, confidence, "yes" if unsure else ""]
    assert 0 < sum(row[3] == "yes" for row in rows[1:]) < len(exact)


def test_min_confidence_beside_skip_bad_leaves_error_rows_unmarked(capsys, model, mixed_inputs):
    code, out, _ = run_cli(capsys, "predict", "--model", model, "--skip-bad", "--min-confidence", "1",
                           *mixed_inputs[0])
    rows = list(csv.reader(io.StringIO(out)))
    assert code == 1 and rows[0] == HEADER + ["error", "abstained"]
    for _, text, _, error, abstained in rows[1:]:
        assert text == "" and abstained == ("" if error else "yes")


@pytest.mark.parametrize("value", ["-0.1", "1.5", "nan", "high"])
def test_min_confidence_must_be_a_probability(capsys, model, png_folder, value):
    code, out, err = run_cli(capsys, "predict", "--model", model, "--min-confidence", value, png_folder[0])
    assert (code, out) == (2, "") and "--min-confidence" in err

"""simcaptcha predict: CSV of a reader file's predictions for real inputs, preprocessing from the file alone."""

import base64
import csv
import dataclasses
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from skimage.filters import threshold_otsu

from conftest import SAMPLES, SHARED_DATA

from simcaptcha import cli, imaging
from simcaptcha.config import BinarizeConfig
from simcaptcha.errors import SimcaptchaError
from simcaptcha.modelfile import ReaderSpec, save_reader
from simcaptcha.predict import Predictor, inference_reader, predict, read_inputs

pytestmark = pytest.mark.usefixtures("keep_torch_threads")

CHARSET = "abcdefghijklmnopqrstuvwxyz0123456789"
CHALLENGE = SAMPLES / "challenge-19"
KAGGLE_ZIP = SHARED_DATA / "kaggle_captcha_v2" / "captcha_images_v2.zip"
HEADER = ["name", "prediction", "confidence"]


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def challenge():
    """The embedded challenge file's names (in file order), encoded images and decoded 100x50 RGB images."""
    entries = json.loads(CHALLENGE.read_text())["images"]
    blobs = [base64.b64decode(entry["jpg_base64"]) for entry in entries]
    rgb = np.stack([imaging.fit_to_size(imaging.decode_image(blob, "t"), 50, 100) for blob in blobs])
    return [entry["name"] for entry in entries], blobs, rgb


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


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = 0
    try:
        cli.main(["predict", *map(str, argv)])
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


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
    code, out, _ = run_cli(capsys, "--model", model, CHALLENGE)
    assert code == 0
    check_rows(rows_of(out), challenge[0])


def test_folder_of_pngs(capsys, model, png_folder):
    folder, names = png_folder
    code, out, _ = run_cli(capsys, "--model", model, folder)
    assert code == 0
    check_rows(rows_of(out), sorted(names))  # a folder is read in path order; the comma is quoted


def test_zip_archive(capsys, model):
    with zipfile.ZipFile(KAGGLE_ZIP) as archive:
        members = sorted(name for name in archive.namelist() if name.endswith(".png"))
    code, out, _ = run_cli(capsys, "--model", model, KAGGLE_ZIP)
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


def test_console_script(model, png_folder):
    script = Path(sys.executable).with_name("simcaptcha")
    result = subprocess.run([str(script), "predict", "--model", str(model), str(png_folder[0])],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    check_rows(rows_of(result.stdout), sorted(png_folder[1]))


def test_missing_model_is_one_line_naming_it(tmp_path, png_folder):
    script = Path(sys.executable).with_name("simcaptcha")
    missing = tmp_path / "no-such-reader.safetensors"
    result = subprocess.run([str(script), "predict", "--model", str(missing), str(png_folder[0])],
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
    code, out, err = run_cli(capsys, "--model", path, png_folder[0])
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and str(path) in err


def test_a_corrupt_image_is_named(capsys, tmp_path, model, challenge):
    imaging.save_png(tmp_path / "good.png", challenge[2][0])
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    code, out, err = run_cli(capsys, "--model", model, tmp_path)
    assert code == 1 and out == ""  # nothing is written before the inputs are known to be readable
    assert err.count("\n") == 1 and "broken.png" in err


@pytest.mark.parametrize("problem", ["missing", "empty-folder"])
def test_unreadable_or_empty_input(capsys, tmp_path, model, problem):
    target = tmp_path / "inputs"
    if problem == "empty-folder":
        target.mkdir()
    code, out, err = run_cli(capsys, "--model", model, target)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and str(target) in err


def test_batch_size_must_be_positive(capsys, model, png_folder):
    code, _, err = run_cli(capsys, "--model", model, "--batch-size", "0", png_folder[0])
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

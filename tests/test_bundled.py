"""Readers bundled with the package: found by name, listed with their figures, and whole."""

import csv
import hashlib
import io
import json

import pytest
import torch

from helpers import CHARSET, KAGGLE_ZIP, SAMPLES, run_cli

from simcaptcha import bundled
from simcaptcha.config import BinarizeConfig
from simcaptcha.modelfile import ReaderSpec, load_reader, save_reader

ENTRY = {"site": "a test site", "char_accuracy": 0.9, "captcha_accuracy": 0.7, "count": 300, "real_labels_used": 0,
         "estimated_char_accuracy": 0.91, "estimated_captcha_accuracy": None, "rebuild": "python rebuild.py",
         "cpu": "Some CPU", "cores": 2, "date": "2026-12-07", "commit": "0123456789abcdef", "sha256": "00"}


@pytest.fixture
def readers(tmp_path, monkeypatch):
    """A bundled-readers folder holding one small reader, test-site."""
    monkeypatch.setattr(bundled, "READERS", tmp_path)
    monkeypatch.setattr(bundled, "CATALOG", tmp_path / "catalog.json")
    torch.manual_seed(0)
    spec = ReaderSpec(CHARSET, 4, "positions", (4, 4, 4, 4), 50, 100, BinarizeConfig(), "light")
    save_reader(tmp_path / "test-site.safetensors", spec.build().eval(), spec, None)
    (tmp_path / "catalog.json").write_text(json.dumps({"test-site": {"file": "test-site.safetensors", **ENTRY}}))
    return tmp_path


def test_a_bundled_name_is_its_file_and_anything_else_a_path(readers, tmp_path, monkeypatch):
    assert bundled.model_path("test-site") == readers / "test-site.safetensors"
    assert bundled.model_path("other") == bundled.Path("other")
    assert bundled.model_path("dir/test-site") == bundled.Path("dir/test-site")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "test-site").write_bytes(b"")  # a file of that name here is what the user means
    assert bundled.model_path("test-site") == bundled.Path("test-site")


def test_predict_reads_with_a_bundled_reader_by_name(capsys, readers):
    code, out, err = run_cli(capsys, "predict", "--model", "test-site", SAMPLES / "challenge-19")
    rows = list(csv.reader(io.StringIO(out)))
    assert (code, err) == (0, "") and len(rows) == 1001 and all(len(row[1]) == 4 for row in rows[1:])


def test_models_lists_each_reader_with_its_figures_and_rebuild_command(capsys, readers):
    code, out, _ = run_cli(capsys, "models")
    assert code == 0
    assert out.splitlines() == [
        "test-site: a test site",
        "  read 90.0 % of characters, 70.0 % of whole captchas on 300 labelled ones; real labels used in "
        "training: 0",
        "  estimated without labels: 91.0 % / n/a",
        "  built 2026-12-07 at 0123456789ab on Some CPU, 2 cores",
        "  rebuild: python rebuild.py",
        "  use: simcaptcha predict --model test-site FILES"]


def test_no_catalog_lists_none_and_a_broken_one_is_one_line(capsys, readers):
    (readers / "catalog.json").unlink()
    assert run_cli(capsys, "models") == (0, "no bundled readers in this installation\n", "")
    (readers / "catalog.json").write_text("{")
    code, out, err = run_cli(capsys, "models")
    assert (code, out) == (1, "") and err.startswith("error: ") and "catalog cannot be read" in err


def test_every_shipped_reader_is_whole_zero_label_and_as_catalogued():
    entries = bundled.catalog()
    for name, entry in entries.items():
        path = bundled.READERS / entry["file"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"], name
        load_reader(path)
        assert entry["real_labels_used"] == 0 and set(entry) == set(bundled.CATALOG_KEYS)
    assert sorted(path.name for path in bundled.READERS.glob("*.safetensors")) == sorted(
        entry["file"] for entry in entries.values())


# Where each shipped reader's catalogued figures were measured: its labelled images, and their labels (a CSV, or
# None: the file names).
MEASURED_ON = {"hackmit2017": (SAMPLES / "challenge-19", SAMPLES / "dev_labels.csv"), "kaggle-v2": (KAGGLE_ZIP, None)}


@pytest.mark.parametrize("name", sorted(MEASURED_ON))
def test_a_shipped_reader_reads_its_site_as_its_catalog_says(capsys, name):
    """``predict --model NAME`` right after install gives the figures ``simcaptcha models`` promises."""
    images, labels_csv = MEASURED_ON[name]
    code, out, _ = run_cli(capsys, "predict", "--model", name, str(images))
    assert code == 0
    predictions = {row["name"]: row["prediction"] for row in csv.DictReader(io.StringIO(out))}
    labels = ({row["name"]: row["label"] for row in csv.DictReader(labels_csv.open())} if labels_csv else
              {name_: name_ for name_ in predictions})
    characters = sum(len(label) for label in labels.values())
    right = sum(a == b for name_, label in labels.items() for a, b in zip(predictions[name_], label))
    entry = bundled.catalog()[name]
    assert len(labels) == entry["count"]
    assert right / characters == pytest.approx(entry["char_accuracy"], abs=1e-5)
    assert sum(predictions[n] == label for n, label in labels.items()) / len(labels) == pytest.approx(
        entry["captcha_accuracy"], abs=1e-5)

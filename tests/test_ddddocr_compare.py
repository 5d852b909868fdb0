"""benchmarks/ddddocr_compare.py: skipping trained-on captchas, case folding, figures, and a run on a tiny project.

Only the last test needs ddddocr itself; the others put a stand-in reader in its place.
"""

import json
import sys

import pandas as pd
import pytest
import torch

from helpers import CHARSET, REPO, SAMPLES, json_images, load_script

from simcaptcha.config import BinarizeConfig
from simcaptcha.modelfile import ReaderSpec, save_reader
from simcaptcha.store import write_encoded_set

pytestmark = pytest.mark.usefixtures("keep_torch_threads")

bench = load_script(REPO / "benchmarks" / "ddddocr_compare.py")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A pipeline checkout in miniature: eight labelled HackMIT captchas, and an untrained tiny reader that
    says it was trained on the first two of them."""
    root = tmp_path_factory.mktemp("project")
    labels = pd.read_csv(SAMPLES / "dev_labels.csv", dtype=str).head(8)
    by_name = dict(json_images(SAMPLES / "challenge-19"))
    blobs = [by_name[name] for name in labels["name"]]
    manifest = labels.assign(source="challenge-19")
    write_encoded_set(root / "data" / "fetched" / "labelled", blobs, manifest)
    spec = ReaderSpec(CHARSET, 4, "positions", (8, 8, 8, 8), 50, 100, BinarizeConfig(), "light",
                      trained_on_real=tuple(labels["name"][:2]))
    torch.manual_seed(0)
    save_reader(root / "data" / "models" / "selftrained.safetensors", spec.build().eval(), spec, None)
    return root


def run(monkeypatch, *argv):
    monkeypatch.setattr(sys, "argv", ["ddddocr_compare.py", *argv])
    bench.run_main(bench.main)


# ---------------------------------------------------------------- pure parts
def test_untrained_rows_keep_order_and_skip_the_trained_on():
    assert bench.untrained_rows(["a", "b", "c", "d"], ("c", "a", "zz")) == [1, 3]
    assert bench.untrained_rows(["a", "b"], ()) == [0, 1]
    assert bench.untrained_rows(["a"], ["a"]) == []


def test_fold_case_only_when_every_label_is_lower_case_or_the_site_ignores_case():
    assert bench.fold_case(["AbC1", "x"], ["abc1", "x2"], False) == (["abc1", "x"], True)
    assert bench.fold_case(["AbC1"], ["1234"], False) == (["abc1"], True)  # digits have no case
    assert bench.fold_case(["AbC1", "x"], ["AbC1", "x2"], False) == (["AbC1", "x"], False)
    assert bench.fold_case(["AbC1", "x"], ["AbC1", "x2"], True) == (["abc1", "x"], True)


def test_reader_figures_are_position_by_position():
    figures = bench.reader_figures(["abcd", "ab", "dcba"], ["abcd", "abcd", "abcd"], 2.0)
    assert figures["count"] == 3
    assert figures["char_accuracy"] == round(6 / 12, 5)  # 4 + 2 (two missing) + 0
    assert figures["captcha_accuracy"] == round(1 / 3, 5)
    assert figures["images_per_second"] == 1.5
    assert bench.reader_figures(["a"], ["a"], 0.0)["images_per_second"] is None


def test_table_has_a_line_per_reader():
    rows = {"selftrained": {"char_accuracy": 0.9512, "captcha_accuracy": 0.8, "images_per_second": 1234.5},
            "ddddocr": {"char_accuracy": 0.388, "captcha_accuracy": 0.082, "images_per_second": None}}
    lines = bench.table(rows).splitlines()
    assert lines[0].split() == ["reader", "per", "char", "whole", "images/s"]
    assert lines[1].split() == ["selftrained", "95.12%", "80.00%", "1,234"]
    assert lines[2].split() == ["ddddocr", "38.80%", "8.20%", "-"]


# ---------------------------------------------------------------- runs
def test_without_ddddocr_one_line_error(monkeypatch, capsys, project):
    monkeypatch.setitem(sys.modules, "ddddocr", None)  # import ddddocr raises ImportError
    with pytest.raises(SystemExit) as exit_info:
        run(monkeypatch, "--project", str(project))
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == "error: ddddocr is not installed: pip install -e '.[bench]'\n"


class UpperCaseOcr:
    """A stand-in for ddddocr that answers the first label, upper-cased, for every image."""

    def __init__(self, text: str):
        self.text = text
        self.calls = 0

    def classification(self, image: bytes) -> str:
        assert isinstance(image, bytes)
        self.calls += 1
        return self.text.upper()


def test_run_skips_trained_on_for_both_and_writes_figures(monkeypatch, capsys, project, tmp_path):
    labels = pd.read_csv(SAMPLES / "dev_labels.csv", dtype=str)["label"].head(8).tolist()
    ocr = UpperCaseOcr(labels[2])
    monkeypatch.setattr(bench, "load_ddddocr", lambda beta: ocr)
    monkeypatch.setattr(bench.metadata, "version", lambda package: "stand-in")
    out = tmp_path / "figures.json"
    run(monkeypatch, "--project", str(project), "--out", str(out))
    assert ocr.calls == 1 + 6  # the warm-up image, then the six captchas the reader was not trained on
    figures = json.loads(out.read_text())
    assert (figures["count"], figures["skipped_trained_on"]) == (6, 2)
    ours, theirs = figures["readers"]["selftrained"], figures["readers"]["ddddocr"]
    assert ours["real_labels_used"] == 2 and ours["count"] == 6
    assert theirs["lower_cased"] is True and theirs["count"] == 6
    assert theirs["captcha_accuracy"] == round(sum(label == labels[2] for label in labels[2:]) / 6, 5)
    printed = capsys.readouterr().out
    assert "6 labelled captchas" in printed and "2 skipped" in printed
    assert any(line.split()[0] == "ddddocr" for line in printed.splitlines())


def test_real_ddddocr_on_a_tiny_project(monkeypatch, project, tmp_path):
    pytest.importorskip("ddddocr")
    out = tmp_path / "figures.json"
    run(monkeypatch, "--project", str(project), "--out", str(out))
    theirs = json.loads(out.read_text())["readers"]["ddddocr"]
    assert theirs["count"] == 6 and theirs["version"] == "1.6.1"
    assert theirs["char_accuracy"] == round(5 / 24, 5)  # ddddocr 1.6.1's fixed model reads 5 of the 24 characters
    assert theirs["images_per_second"] > 0  # a wall-clock figure

"""benchmarks/panel.py's sites and benchmarks/bundle_reader.py's catalog entries."""

import hashlib
import json
import subprocess
import sys

import pytest

from helpers import REPO, TOOLS_ENV, load_script

from simcaptcha import bundled


@pytest.fixture(scope="module")
def panel():
    sys.path.insert(0, str(REPO / "benchmarks"))  # panel.py imports run_target.py beside it
    yield load_script(REPO / "benchmarks" / "panel.py")
    sys.path.remove(str(REPO / "benchmarks"))


def test_every_panel_site_is_given_only_sources_labels_and_charset(panel):
    for name, site in panel.SITES.items():
        arguments = site.arguments(name)
        options = {word for word in arguments if word.startswith("--")}
        assert options <= {"--pool", "--labelled", "--labels", "--label-regex", "--charset", "--length",
                           "--case-insensitive"}, name
        assert ("--length" in options) == (site.length != ""), name
        for source in site.pool + site.labelled:
            if source.startswith(panel.DATA):  # as a scratch clone sees ../shared: beside this repository
                assert (REPO.parent / "shared" / source.removeprefix("../shared/")).exists(), source


def test_list_prints_each_site_command():
    out = subprocess.run([sys.executable, "benchmarks/panel.py", "--list"], cwd=REPO, env=TOOLS_ENV,
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert [line.split()[2] for line in out] == ["hackmit2017", "kaggle-v2", "seu-letters", "seu-digits",
                                                "mnist-digits", "generated-3-6", "receita", "esaj"]
    assert all(line.startswith("simcaptcha site ") for line in out)
    assert [line.split()[2] for line in out if line.endswith(" --case-insensitive")] == ["seu-letters", "receita",
                                                                                          "esaj"]
    generated = next(line for line in out if line.split()[2] == "generated-3-6").split()
    assert generated[-2:] == ["--length", "3-6"]  # one pool source per length, 3 to 6
    assert [source.rsplit("length=", 1)[1] for source in generated if "count=750" in source] == ["3", "4", "5", "6"]


@pytest.fixture(scope="module")
def bundle(panel):  # bundle_reader.py too imports run_target.py (panel puts benchmarks/ on the path)
    return load_script(REPO / "benchmarks" / "bundle_reader.py")


def test_a_bundled_entry_comes_from_the_run_s_figures(tmp_path, monkeypatch, bundle):
    monkeypatch.setattr(bundle, "ROOT", tmp_path)
    figures = tmp_path / "metrics" / "targets" / "kaggle"
    figures.mkdir(parents=True)
    answer = {"char_accuracy": 0.97, "captcha_accuracy": 0.9, "count": 1040, "real_labels_used": 0,
              "estimated_char_accuracy": 0.98, "estimated_captcha_accuracy": 0.88, "collapsed": False}
    (figures / "evaluate.json").write_text(json.dumps({"selftrained": answer}))
    (figures / "run.json").write_text(json.dumps({"target": "targets/kaggle.yaml", "stages": ["evaluate"],
                                                  "cpu": "AMD EPYC", "cores": 2, "date": "2026-12-07",
                                                  "commit": "abc123"}))
    reader = tmp_path / "reader.safetensors"
    reader.write_bytes(b"weights")
    entry = bundle.catalog_entry("kaggle", "kaggle-v2", "Kaggle captcha v2", reader)
    assert list(entry) == list(bundled.CATALOG_KEYS)
    assert entry["rebuild"] == ("python benchmarks/run_target.py targets/kaggle.yaml evaluate --name kaggle && "
                                "python benchmarks/bundle_reader.py kaggle --as kaggle-v2 --site \"Kaggle captcha v2\"")
    assert entry["sha256"] == hashlib.sha256(b"weights").hexdigest()
    assert (entry["char_accuracy"], entry["estimated_captcha_accuracy"], entry["cpu"]) == (0.97, 0.88, "AMD EPYC")


def test_the_default_run_is_bundled_from_the_workspace(tmp_path, monkeypatch, bundle):
    monkeypatch.setattr(bundle, "ROOT", tmp_path)
    monkeypatch.setattr(bundle, "workspace_record", lambda: {"cpu": "X", "cores": 2, "date": "d", "commit": "c"})
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "evaluate.json").write_text(json.dumps({"selftrained": {
        "char_accuracy": 0.9, "captcha_accuracy": 0.67, "count": 300, "real_labels_used": 0}}))
    reader = tmp_path / "reader.safetensors"
    reader.write_bytes(b"w")
    entry = bundle.catalog_entry("default", "hackmit2017", "HackMIT", reader)
    assert entry["rebuild"] == ('dvc repro && python benchmarks/bundle_reader.py default --as hackmit2017 '
                                '--site "HackMIT"')
    assert (entry["captcha_accuracy"], entry["estimated_captcha_accuracy"], entry["cpu"]) == (0.67, None, "X")


def test_a_panel_site_is_bundled_from_its_panel_row(tmp_path, monkeypatch, bundle):
    monkeypatch.setattr(bundle, "ROOT", tmp_path)
    (tmp_path / "metrics" / "panel" / "hackmit2017").mkdir(parents=True)
    (tmp_path / "metrics" / "panel" / "hackmit2017" / "evaluate.json").write_text(json.dumps({"selftrained": {
        "char_accuracy": 0.95, "captcha_accuracy": 0.8, "count": 300, "real_labels_used": 0}}))
    (tmp_path / "metrics" / "panel.json").write_text(json.dumps({"hackmit2017": {
        "cpu": "AMD EPYC, 2 cores", "date": "2026-12-07", "commit": "def456"}}))
    reader = tmp_path / "reader.safetensors"
    reader.write_bytes(b"w")
    entry = bundle.catalog_entry("panel:hackmit2017", "hackmit2017", "HackMIT", reader)
    assert entry["rebuild"] == ('python benchmarks/panel.py --site hackmit2017 && python benchmarks/bundle_reader.py '
                                'panel:hackmit2017 --as hackmit2017 --site "HackMIT"')
    assert (entry["site"], entry["captcha_accuracy"], entry["cpu"], entry["cores"], entry["commit"]) == (
        "HackMIT", 0.8, "AMD EPYC", 2, "def456")

"""simcaptcha target: target files become dvc exp run overrides on top of the committed params."""

import shutil
import subprocess

import pytest
import yaml

from conftest import REPO

from simcaptcha.cli import _hydra_value, target_overrides
from simcaptcha.errors import SimcaptchaError


@pytest.fixture
def repo(tmp_path, monkeypatch):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    for command in (["git", "init", "-q"], ["git", "add", "params.yaml"],
                    ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base"]):
        subprocess.run(command, cwd=tmp_path, check=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _pairs(arguments: list[str]) -> dict[str, str]:
    assert arguments[::2] == ["-S"] * (len(arguments) // 2)
    return dict(argument.split("=", 1) for argument in arguments[1::2])


def test_target_sets_only_what_differs(repo):
    (repo / "kaggle.yaml").write_text(yaml.safe_dump({"binarize": {"size": [50, 200]}, "render": {"length": [5, 5]}}))
    assert _pairs(target_overrides("kaggle.yaml")) == {"binarize.size": "[50,200]", "render.length": "[5,5]"}


def test_values_left_by_a_previous_target_are_reset(repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["binarize"]["size"] = [50, 200]  # what an earlier `dvc exp run -S` left in the workspace
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    (repo / "other.yaml").write_text(yaml.safe_dump({"render": {"count": 10}}))
    assert _pairs(target_overrides("other.yaml")) == {"binarize.size": "[50,100]", "render.count": "10"}


def test_target_is_validated_before_running(repo):
    (repo / "typo.yaml").write_text(yaml.safe_dump({"render": {"lenght": [5, 5]}}))
    with pytest.raises(SimcaptchaError, match=r"render\.lenght \(did you mean render\.length\?\)"):
        target_overrides("typo.yaml")


def test_strings_are_quoted_for_the_override_grammar():
    assert _hydra_value("http://h:1/p?q='x'") == "'http://h:1/p?q=\\'x\\''"
    assert _hydra_value(["a b", 1, 2.5, True, None]) == "['a b',1,2.5,true,null]"

"""The simcaptcha command: its conventions (version, help, exit statuses), target's dvc exp run overrides on top
of the committed params, and predict's output."""

import argparse
import errno
import os
import subprocess
import sys
from importlib.metadata import version

import numpy as np
import pytest
import torch
import yaml
from dvc.utils.hydra import apply_overrides

from helpers import CONSOLE_SCRIPT, GIT, run_cli
from simcaptcha import cli, imaging
from simcaptcha.cli import _hydra_value, target_overrides
from simcaptcha.config import BinarizeConfig, Config, load_config, parse_section
from simcaptcha.errors import SimcaptchaError
from simcaptcha.modelfile import ReaderSpec, save_reader

# A minimal committed params.yaml, as the project's: only what differs from config.py, every section named.
COMMITTED = {"fetch": {"unlabelled": {"sources": ["data/challenge-17"]}}, "binarize": {}, "render": {}}
EXIT_STATUSES = """exit status:
  0    success
  1    an error in the data, params, input or output: one line "error: ..." on stderr; with
       predict --skip-bad, some inputs or images could not be read (the CSV is whole, their rows say why)
  2    a bad command line
  130  interrupted (Ctrl-C)
"""


# ---------------------------------------------------------------- conventions
def test_version(capsys):
    assert run_cli(capsys, "--version") == (0, f"simcaptcha {version('simcaptcha')}\n", "")


def test_help_has_no_markup_and_every_command_a_description(capsys):
    parser = cli.build_parser()
    commands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0 and "`" not in out and out.endswith("\n\n" + EXIT_STATUSES)
    assert set(commands.choices) == {"target", "site", "predict", "export", "models"}
    words = " ".join(out.split())  # as wrapped to the terminal's width
    for listed in commands._choices_actions:  # the one-line help of each command, in the top-level help
        assert listed.help and f" {listed.dest} {listed.help} " in words
    for name, command in commands.choices.items():
        code, out, _ = run_cli(capsys, name, "--help")
        assert code == 0 and "`" not in out
        assert command.description and " ".join(command.description.split()) in " ".join(out.split())


@pytest.mark.parametrize("arguments, code, stderr", [
    (["--version"], 0, ""),
    (["target", "typo.yaml", "--dry-run"], 1, "error: params: unknown key render.lenght (did you mean render.length?)"),
    (["target", "missing.yaml", "--dry-run"], 1, "error: missing.yaml: no such file"),
    (["target"], 2, "simcaptcha target: error: the following arguments are required: file"),
    (["target", "typo.yaml", "--dry-runs"], 2, "simcaptcha: error: unrecognized arguments: --dry-runs"),
    (["predict", "--model", "m", "--batch-size", "0", "x"], 2,
     "simcaptcha predict: error: argument --batch-size: must be at least 1, got 0"),
    (["export", "--model", "m.safetensors", "--onnx", "m.onnx"], 1, "error: m.safetensors: no such model file"),
    (["export", "--model", "m.safetensors"], 2,
     "simcaptcha export: error: the following arguments are required: --onnx"),
])
def test_exit_status_tells_a_data_error_from_a_usage_error(tmp_path, arguments, code, stderr):
    """1: the command line was right, the data or params were not (one line); 2: argparse refused the line."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(COMMITTED))
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump({"render": {"lenght": [5, 5]}}))
    result = subprocess.run([CONSOLE_SCRIPT, *arguments], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == code
    assert (result.stderr.splitlines() or [""])[-1] == stderr
    assert code != 1 or result.stderr.count("\n") == 1


def test_the_module_runs_as_the_command():
    result = subprocess.run([sys.executable, "-m", "simcaptcha.cli", "--version"], capture_output=True, text=True,
                            timeout=60)
    assert (result.returncode, result.stdout) == (0, f"simcaptcha {version('simcaptcha')}\n")


# ---------------------------------------------------------------- target
@pytest.fixture
def repo(tmp_path, monkeypatch):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(COMMITTED))
    for command in (["git", "init", "-q"], ["git", "add", "params.yaml"],
                    [*GIT, "commit", "-qm", "base"]):
        subprocess.run(command, cwd=tmp_path, check=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _pairs(arguments: list[str]) -> dict[str, str]:
    """``-S ++key=value`` as {"++key": "value"}, ``-S ~key`` as {"~key": ""}."""
    assert arguments[::2] == ["-S"] * (len(arguments) // 2)
    return dict(argument.partition("=")[::2] for argument in arguments[1::2])


def _leave_in_workspace(repo, **sections) -> None:
    """What earlier ``dvc exp run -S`` calls left in the workspace params.yaml, over the committed params."""
    (repo / "params.yaml").write_text(yaml.safe_dump(cli._deep_merge(COMMITTED, sections)))


def test_target_sets_only_what_differs(repo):
    (repo / "kaggle.yaml").write_text(yaml.safe_dump({"binarize": {"size": [50, 200]}, "render": {"length": [5, 5]}}))
    assert _pairs(target_overrides("kaggle.yaml")) == {"++binarize.size": "[50,200]", "++render.length": "[5,5]"}


def test_values_left_by_a_previous_target_are_reset(repo):
    _leave_in_workspace(repo, binarize={"size": [50, 200]}, fetch={"unlabelled": {"sources": ["elsewhere"]}})
    (repo / "other.yaml").write_text(yaml.safe_dump({"render": {"count": 10}}))
    assert _pairs(target_overrides("other.yaml")) == {"++binarize.size": "[50,100]", "++render.count": "10",
                                                      "++fetch.unlabelled.sources": "['data/challenge-17']"}


def test_a_key_the_wanted_params_do_not_name_goes_back_to_its_default(repo):
    """params.yaml names only what differs from config.py: a leftover key the target does not name is set back
    to config.py's default, and an entry of a mapping param (which has no default of its own) is removed."""
    _leave_in_workspace(repo, render={"count": 10, "length": [6, 6]},
                        fetch={"unlabelled": {"sha256": {"challenge": "ab" * 32}}})
    (repo / "other.yaml").write_text(yaml.safe_dump({"render": {"length": [5, 5]}}))
    assert _pairs(target_overrides("other.yaml")) == {"++render.count": "20000", "++render.length": "[5,5]",
                                                      "~fetch.unlabelled.sha256.challenge": ""}


def test_applied_as_dvc_applies_them_the_overrides_give_the_wanted_params(repo):
    _leave_in_workspace(repo, binarize={"size": [50, 200], "method": "fixed"}, render={"count": 10},
                        fetch={"unlabelled": {"sources": ["elsewhere"], "sha256": {"elsewhere": "ab" * 32}}})
    target = {"render": {"length": [5, 5], "charset": "abc"}, "mask": {"dilate": 2}}
    (repo / "other.yaml").write_text(yaml.safe_dump(target))
    apply_overrides("params.yaml", target_overrides("other.yaml")[1::2])  # what dvc exp run -S does
    assert load_config("params.yaml") == parse_section(Config, cli._deep_merge(COMMITTED, target), "")
    assert target_overrides("other.yaml") == []


def test_dry_run_prints_the_dvc_command(repo, capsys):
    (repo / "kaggle.yaml").write_text(yaml.safe_dump({"binarize": {"size": [50, 200]}}))
    assert run_cli(capsys, "target", "kaggle.yaml", "mask", "--name", "k", "--queue", "--dry-run") == (
        0, "dvc exp run -S ++binarize.size=[50,200] mask --name k --queue\n", "")


def test_target_is_validated_before_running(repo):
    (repo / "typo.yaml").write_text(yaml.safe_dump({"render": {"lenght": [5, 5]}}))
    with pytest.raises(SimcaptchaError, match=r"render\.lenght \(did you mean render\.length\?\)"):
        target_overrides("typo.yaml")


def test_strings_are_quoted_for_the_override_grammar():
    assert _hydra_value("http://h:1/p?q='x'") == "'http://h:1/p?q=\\'x\\''"
    assert _hydra_value(["a b", 1, 2.5, True, None]) == "['a b',1,2.5,true,null]"


@pytest.mark.parametrize("text", [r"_([^_.]+)\.[^.]+$", "ends in \\", "it's", "x\\'y", "\\\\", r"\d+"])
def test_a_string_with_backslashes_reaches_params_as_written(text):
    """dvc exp run -S parses with Hydra, whose quoted strings unescape only around quotes (a label regex)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    assert OverridesParser.create().parse_override(f"++a.b={_hydra_value(text)}").value() == text


# ---------------------------------------------------------------- predict -o
@pytest.fixture(scope="module")
def reader(tmp_path_factory):
    """A tiny untrained reader file and a folder of three captchas for it."""
    folder = tmp_path_factory.mktemp("predict")
    spec = ReaderSpec("abc", 2, "positions", (4, 4, 4, 4), 16, 32, BinarizeConfig(), "light")
    torch.manual_seed(0)
    save_reader(folder / "reader.safetensors", spec.build().eval(), spec, None)
    images = np.random.default_rng(0).integers(0, 256, (3, 16, 32, 3), dtype=np.uint8)
    for name, image in zip("xyz", images):
        imaging.save_png(folder / "in" / f"{name}.png", image)
    return folder / "reader.safetensors", folder / "in"


@pytest.mark.usefixtures("keep_torch_threads")
def test_output_file_holds_what_stdout_would(capsys, tmp_path, reader):
    code, csv_text, _ = run_cli(capsys, "predict", "--model", reader[0], reader[1])
    assert code == 0 and [line.split(",")[0] for line in csv_text.splitlines()] == ["name", "x", "y", "z"]
    assert run_cli(capsys, "predict", "--model", reader[0], reader[1], "-o", "-") == (0, csv_text, "")
    assert run_cli(capsys, "predict", "--model", reader[0], reader[1], "--output", tmp_path / "out.csv") == (0, "", "")
    assert (tmp_path / "out.csv").read_text() == csv_text
    assert os.listdir(tmp_path) == ["out.csv"]


def _failing_rows(error: BaseException):
    """predict's rows, the second of which fails as a full disk or Ctrl-C would."""
    def predict(*args):
        yield "a", "ab", 0.5
        raise error
    return predict


@pytest.mark.parametrize("error, code, message", [
    (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), 1, "out.csv: No space left on device"),
    (KeyboardInterrupt(), 130, "interrupted"),
])
def test_a_failed_write_leaves_the_file_as_it_was(capsys, monkeypatch, tmp_path, error, code, message):
    monkeypatch.setattr("simcaptcha.predict.predict", _failing_rows(error))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out.csv").write_text("old\n")
    assert run_cli(capsys, "predict", "--model", "m", "in", "-o", "out.csv") == (code, "", f"error: {message}\n")
    assert (tmp_path / "out.csv").read_text() == "old\n" and os.listdir(tmp_path) == ["out.csv"]


def test_a_full_device_as_output_is_one_line(capsys, monkeypatch):
    """/dev/full is written as it is (a device cannot be replaced by a file renamed over it)."""
    monkeypatch.setattr("simcaptcha.predict.predict", lambda *args: iter([("a", "ab", 0.5)]))
    assert run_cli(capsys, "predict", "--model", "m", "in", "-o", "/dev/full") == (
        1, "", "error: /dev/full: No space left on device\n")
    assert os.path.exists("/dev/full") and not os.path.isfile("/dev/full")


@pytest.mark.slow  # a fresh interpreter imports torch: 2 s or more
def test_stdout_on_a_full_disk_is_one_line(reader):
    with open("/dev/full", "w") as full:
        result = subprocess.run([CONSOLE_SCRIPT, "predict", "--model", str(reader[0]), str(reader[1])],
                                stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert (result.returncode, result.stderr) == (1, "error: stdout: No space left on device\n")

"""The bad-input catalogue where it reaches a stage script, the security refusals, and fuzzing of the decoders.

A stage's error is one line on stderr, exit status 1, and no output written; test_fetch.py, test_config.py,
test_fonts.py, test_predict.py and test_modelfile.py prove each check at library level.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import runpy
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image

from helpers import REPO, challenge_json, encode_image

from simcaptcha.config import FetchConfig, SourceConfig
from simcaptcha.errors import SimcaptchaError, run_main
from simcaptcha.fetch import fetch_set
from simcaptcha.imaging import decode_image
from simcaptcha.modelfile import load_reader
from simcaptcha.store import write_encoded_set, write_image_set
from simcaptcha.checkpoints import load_checkpoint

STAGES = sorted((REPO / "stages").glob("*.py"))
FUZZ = settings(max_examples=150, deadline=None, database=None)


def png(width: int = 8, height: int = 4, mode: str = "RGB", kind: str = "PNG") -> bytes:
    return encode_image(Image.new(mode, (width, height)), kind)


def run_stage(script: str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """``python stages/<script>`` as DVC runs it, with ``cwd`` as the project root."""
    return subprocess.run([sys.executable, str(REPO / "stages" / script), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def files_under(root: Path) -> list[str]:
    return sorted(path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file())


def assert_one_line_error(stderr: str, *patterns: str) -> None:
    assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    for pattern in patterns:
        assert pattern in stderr, f"{pattern!r} not in {stderr!r}"


def stage_error(stage: Path, params: dict, project: Path, monkeypatch, capsys) -> str:
    """Run a stage script here, as ``python stages/<script>`` would, with these params; it must exit with 1 and
    leave the folder as it was. Returns its stderr. (In-process: a subprocess per stage costs seconds.)"""
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    before = files_under(project)
    monkeypatch.chdir(project)
    monkeypatch.setattr(sys, "argv", [str(stage), "synthetic"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(stage), run_name="__main__")
    assert exit_.value.code == 1
    assert files_under(project) == before
    return capsys.readouterr().err


# ---------------------------------------------------------------- stage scripts
@pytest.mark.parametrize("stage", STAGES, ids=lambda path: path.stem)
def test_every_stage_validates_params_before_any_work(stage, tmp_path, monkeypatch, capsys):
    """A typo stops every stage before it reads or writes anything."""
    error = stage_error(stage, {"binarize": {"sise": [50, 100]}}, tmp_path, monkeypatch, capsys)
    assert_one_line_error(error, "unknown key binarize.sise (did you mean binarize.size?)")


def test_fetch_stage_refuses_an_empty_source_list(tmp_path, monkeypatch, capsys):
    error = stage_error(REPO / "stages/fetch.py", {"fetch": {"unlabelled": {"sources": []}}}, tmp_path, monkeypatch,
                        capsys)
    assert_one_line_error(error, "fetch.unlabelled.sources is empty")


def test_fetch_stage_names_a_corrupt_image_on_one_line_even_with_a_line_break_in_its_name(tmp_path):
    """The name comes from the data; its line break is escaped so the error stays one line."""
    (tmp_path / "challenge.json").write_bytes(challenge_json([
        {"name": "good", "jpg_base64": base64.b64encode(png()).decode()},
        {"name": "bad\nname", "jpg_base64": base64.b64encode(b"\xff\xd8 not a jpeg").decode()}]))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"fetch": {"unlabelled": {"sources": ["challenge.json"]}}}))
    result = run_stage("fetch.py", tmp_path)
    assert result.returncode == 1
    assert_one_line_error(result.stderr, "fetch.unlabelled", "challenge.json: image 1 (bad\\nname)",
                          "not a readable image")
    assert files_under(tmp_path) == ["challenge.json", "params.yaml"]


@pytest.mark.slow  # the stage script in a subprocess imports torch and reads params: seconds per case
@pytest.mark.parametrize("label, expected", [("ab!d", "'!' outside render.charset"),
                                             ("abc", "3 characters, outside render.length [4, 4]")])
def test_a_label_the_reader_cannot_give_stops_training(tmp_path, label, expected):
    """Checked by train-classifier, the first stage that has both the labels and render.charset/length."""
    write_image_set(tmp_path / "data/binarized/labelled", np.zeros((2, 50, 100), np.uint8),
                    pd.DataFrame({"name": ["n0", "n1"], "label": ["abcd", label], "source": "challenge-19"}))
    params = {"fetch": {"labelled": {"sources": ["challenge-19"], "labels": "csv", "labels_csv": "labels.csv"}},
              "render": {"charset": "abcdefghijklmnopqrstuvwxyz0123456789", "length": [4, 4]}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    before = files_under(tmp_path)
    result = run_stage("train_classifier.py", tmp_path, "synthetic")
    assert result.returncode == 1
    assert_one_line_error(result.stderr, "fetch.labelled", f"captcha 'n1' has the label {label!r}", "labels.csv",
                          expected)
    assert files_under(tmp_path) == before


# ---------------------------------------------------------------- security
def test_a_zipped_decompression_bomb_is_refused_by_name(tmp_path):
    """A few kilobytes that decode to 100 megapixels: the archive size limit lets it in, Pillow's pixel limit not."""
    with zipfile.ZipFile(tmp_path / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("captchas/fine.png", png())
        archive.writestr("captchas/bomb.png", png(10000, 10000, "1"))
    assert (tmp_path / "bomb.zip").stat().st_size < 100_000
    with pytest.raises(SimcaptchaError, match=r"bomb\.zip: captchas/bomb\.png: not a readable image"):
        fetch_set(SourceConfig(sources=[str(tmp_path / "bomb.zip")]), FetchConfig(), "unlabelled", tmp_path)


class _Planted:
    """Unpickling this object would create a folder: proof that a loader ran code from the file."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (str(self.path),)


@pytest.mark.parametrize("loader", ["checkpoint", "model"])
def test_a_pickle_that_runs_code_is_never_unpickled(tmp_path, loader):
    planted = tmp_path / "planted"
    torch.save({"run": "x", "epoch": 1, "payload": _Planted(planted)}, tmp_path / "file")
    if loader == "checkpoint":
        assert load_checkpoint(tmp_path / "file", "x") is None  # refused, so the stage starts over
    else:
        with pytest.raises(SimcaptchaError, match="not a safetensors model file"):
            load_reader(tmp_path / "file")
    assert not planted.exists()


def test_no_shell_command_is_built_from_strings():
    """Commands run as argument lists only: nothing from params or data can reach a shell."""
    shell = re.compile(r"shell\s*=\s*True|os\.system\(|os\.popen\(|subprocess\.getoutput\(|getstatusoutput\(")
    sources = [path for folder in ("src", "stages", "benchmarks") for path in (REPO / folder).rglob("*.py")]
    assert sources
    assert [str(path) for path in sources if shell.search(path.read_text())] == []


# ---------------------------------------------------------------- fuzzing
IMAGE_SEEDS = [png(20, 12, "RGB", kind) for kind in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "ICO", "DDS")]
DDS_OF_AN_UNKNOWN_PIXEL_FORMAT = IMAGE_SEEDS[-1][:80] + (1 << 29).to_bytes(4, "little") + IMAGE_SEEDS[-1][84:]


def mutated(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    """A seed with a few bytes overwritten, then perhaps cut short or followed by junk."""
    @st.composite
    def strategy(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(st.sampled_from(seeds)))
        for _ in range(draw(st.integers(0, 6))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data[:draw(st.integers(0, len(data)))]) + draw(st.binary(max_size=8))
    return strategy()


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's notes on the damaged TIFF tags it skips
@FUZZ
@given(blob=st.one_of(mutated(IMAGE_SEEDS), st.binary(max_size=64)))
@example(blob=DDS_OF_AN_UNKNOWN_PIXEL_FORMAT)  # Pillow raises NotImplementedError
def test_fuzzed_image_bytes_decode_or_are_refused(blob):
    try:
        image = decode_image(blob, "fuzz")
    except SimcaptchaError as error:
        assert str(error).startswith("fuzz: ")
        return
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


VALID_CHALLENGE = challenge_json([{"name": f"n{index}", "jpg_base64": base64.b64encode(png()).decode()}
                             for index in range(2)])
JSON_VALUES = st.recursive(st.none() | st.booleans() | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                        max_size=3), max_leaves=8)
ENTRIES = st.fixed_dictionaries({"name": st.text(max_size=8) | JSON_VALUES,
                                 "jpg_base64": st.sampled_from([base64.b64encode(png()).decode(), "ab*cd", "é"])
                                 | st.text(max_size=12) | JSON_VALUES})
DOCUMENTS = st.one_of(mutated([VALID_CHALLENGE]), st.lists(ENTRIES | JSON_VALUES, max_size=3).map(challenge_json),
                      JSON_VALUES.map(lambda value: json.dumps(value).encode()))


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(document=DOCUMENTS)
@example(document=b'{"images": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
@example(document=challenge_json([{"name": "\ud800", "jpg_base64": base64.b64encode(png()).decode()}]))
@example(document=challenge_json([{"name": "a\nb", "jpg_base64": "AAAA"}]))
def test_fuzzed_challenge_json_is_stored_or_refused_on_one_line(fuzz_dir, document):
    """What the fetch stage does with a challenge file: read it and store it, or stop with one line."""
    source = fuzz_dir / "challenge"
    source.write_bytes(document)

    def fetch_and_store() -> None:
        blobs, manifest = fetch_set(SourceConfig(sources=[str(source)]), FetchConfig(), "unlabelled", fuzz_dir)
        write_encoded_set(fuzz_dir / "fetched", blobs, manifest)

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.suppress(SystemExit):
        run_main(fetch_and_store)
    assert stderr.getvalue() == "" or (stderr.getvalue().startswith("error: fetch.unlabelled: ")
                                       and stderr.getvalue().count("\n") == 1), stderr.getvalue()

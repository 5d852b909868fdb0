"""Helpers shared by several test modules: where things are, running commands and the CLI, the tiny project's
params, training-loop spies, and small data makers. Fixtures live in conftest.py."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import captcha
import numpy as np
import torch
import yaml
from PIL import Image

from simcaptcha import checkpoints, cli, imaging, reader_training, simgan
from simcaptcha.config import BinarizeConfig

# ---------------------------------------------------------------- where things are
REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"  # the development data set; CI always has it beside the repo
SAMPLES = REPO / "data" / "samples" / "hackmit2017"  # the embedded default target
KAGGLE_ZIP = SHARED_DATA / "kaggle_captcha_v2" / "captcha_images_v2.zip"
FONT = Path(captcha.__file__).parent / "data" / "DroidSansMono.ttf"  # inside a declared dependency: always there
CHARSET = "abcdefghijklmnopqrstuvwxyz0123456789"  # the default target's characters
CONSOLE_SCRIPT = Path(sys.executable).with_name("simcaptcha")  # this venv's `simcaptcha` command
TOOLS_ENV = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")  # venv's dvc first
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]  # git with an identity, for commits in temporary repos


def load_script(path: Path) -> ModuleType:
    """A script that is not a package module (benchmarks/*.py), imported from its file."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- commands
def run_tool(args: list[str], cwd: Path) -> str:
    """The output of a command run with this venv's tools (dvc) first on PATH; a failure fails the test."""
    result = subprocess.run(args, cwd=cwd, env=TOOLS_ENV, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """``simcaptcha ARGV`` in this process: exit status, stdout, stderr."""
    code = 0
    try:
        cli.main(list(map(str, argv)))
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------- the tiny project (conftest.py's tiny_template)
TINY = {  # params small enough that the whole pipeline reproduces in a test
    "fetch": {"unlabelled": {"limit": 300}, "labelled": {"limit": 60}},
    "estimate": {"sample": 60, "probe": 10, "workers": 1},
    "render": {"count": 120, "glyph_count": 60, "workers": 1, "fonts": ["Roboto", "Lato"], "closest_fonts": 2},
    "augment": {"batch_size": 64},
    "classifier": {"epochs": 1, "refined_epochs": 1, "channels": [4, 8, 8, 8], "batch_size": 32},
    "gan": {"steps": 4, "pretrain_refiner_steps": 2, "pretrain_discriminator_steps": 2, "batch_size": 8,
            "history_size": 16, "holdout": 50, "refiner_channels": 4, "refiner_blocks": 1,
            "discriminator_channels": 4},
    "refine": {"drop_flipped": False},  # an untrained reader flips everything
    "selftrain": {"rounds": 2, "epochs": 1},
    "budget": {"sizes": [0, 4], "test_size": 20, "steps": 2, "batch_size": 8},
}


def merge(base: dict, overrides: dict) -> dict:
    """base with overrides written over it, nested sections merged key by key."""
    for key, value in overrides.items():
        base[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return base


def set_params(project: Path, overrides: dict) -> None:
    """Writes overrides over the project's params.yaml, nested sections merged key by key."""
    path = project / "params.yaml"
    path.write_text(yaml.safe_dump(merge(yaml.safe_load(path.read_text()), overrides), sort_keys=False))


def copy_project(template: Path, root: Path) -> Path:
    """A copy of the reproduced tiny project at root, DVC cache and git history included: up to date in seconds."""
    shutil.copytree(template, root, symlinks=True)
    return root


def out_paths(project: Path, stage: str | None = None) -> list[str]:
    """The outputs dvc.lock records, of one stage or of all."""
    stages = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    return sorted(out["path"] for name, entry in stages.items() if stage in (None, name)
                  for out in entry.get("outs", []))


# ---------------------------------------------------------------- training loops: weights and checkpoint spies
def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def weights(model: torch.nn.Module) -> dict:
    """A copy of the model's state, unchanged by later training."""
    return {key: value.clone() for key, value in model.state_dict().items()}


def patch_saves(monkeypatch, save) -> None:
    """Route every training loop's checkpoint writes (reader, self-training rounds, SimGAN) through ``save``."""
    monkeypatch.setattr(reader_training, "save_checkpoint", save)
    monkeypatch.setattr(simgan, "save_checkpoint", save)


def record_saves(monkeypatch) -> list[tuple[str, dict]]:
    """Every checkpoint written from now on, as (file name, state), each still written."""
    real_save = checkpoints.save_checkpoint
    calls: list[tuple[str, dict]] = []

    def save(path, state):
        calls.append((Path(path).name, state))
        real_save(path, state)

    patch_saves(monkeypatch, save)
    return calls


def kill_after_save(monkeypatch, when: Callable[[dict], bool] = lambda state: True) -> list[dict]:
    """Every checkpoint state written from now on; right after writing one for which ``when(state)``, the
    training loop gets a KeyboardInterrupt, as a killed run would (by default after the first)."""
    real_save = checkpoints.save_checkpoint
    calls: list[dict] = []

    def save(path, state):
        real_save(path, state)
        calls.append(state)
        if when(state):
            raise KeyboardInterrupt

    patch_saves(monkeypatch, save)
    return calls


# ---------------------------------------------------------------- small data
def encode_image(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    """The bytes of the image saved in that format."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def challenge_json(entries: list) -> bytes:
    """A challenge file (HackMIT's JSON format) holding these entries."""
    return json.dumps({"images": entries}).encode()


def json_images(path: Path) -> list[tuple[str, bytes]]:
    """(name, encoded image) of every entry of a challenge file, in file order."""
    return [(entry["name"], base64.b64decode(entry["jpg_base64"])) for entry in json.loads(path.read_bytes())["images"]]


def decoded_challenge(path: Path) -> np.ndarray:
    """The captchas of a challenge file, decoded to 50×100 RGB as the binarize stage decodes them."""
    names, blobs = zip(*json_images(path))
    return imaging.decode_set(list(blobs), list(names), 50, 100)


def binarized(rgb: np.ndarray) -> np.ndarray:
    """Decoded captchas binarized as the binarize stage does with the default params."""
    config = BinarizeConfig()
    background = imaging.estimate_background(rgb, config.background)
    return imaging.binarize_images(rgb, background, config, imaging.detect_polarity(rgb, config))

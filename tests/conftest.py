"""Shared test fixtures: where the repository and the development data are, and a tiny reproduced copy of it."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"  # the development data set; CI always has it beside the repo
SAMPLES = REPO / "data" / "samples" / "hackmit2017"  # the embedded default target
if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n: on two cores, two workers of two torch threads each (and
    os.environ["OMP_NUM_THREADS"] = "1"     # their stage subprocesses) would wait on each other: one thread each
    torch.set_num_threads(1)
TOOLS_ENV = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")  # venv's dvc first
TINY = {
    "fetch": {"unlabelled": {"limit": 300}, "labelled": {"limit": 60}},
    "estimate": {"sample": 60, "probe": 10, "workers": 1},
    "render": {"count": 120, "glyph_count": 60, "workers": 1, "fonts": ["Roboto", "Lato"], "closest_fonts": 2},
    "augment": {"batch_size": 64},
    "classifier": {"epochs": 1, "channels": [4, 8, 8, 8], "batch_size": 32},
    "gan": {"steps": 4, "pretrain_refiner_steps": 2, "pretrain_discriminator_steps": 2, "batch_size": 8,
            "history_size": 16, "holdout": 50, "refiner_channels": 4, "refiner_blocks": 1,
            "discriminator_channels": 4},
    "refine": {"drop_flipped": False},  # an untrained reader flips everything
    "selftrain": {"rounds": 2, "epochs": 1},
    "budget": {"sizes": [0, 4], "test_size": 20, "steps": 2, "batch_size": 8},
}


def _merge(base: dict, overrides: dict) -> dict:
    """base with overrides written over it, nested sections merged key by key."""
    for key, value in overrides.items():
        base[key] = _merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return base


def _run(args: list[str], cwd: Path) -> str:
    """The output of a command run with this venv's tools (dvc) first on PATH; a failure fails the test."""
    result = subprocess.run(args, cwd=cwd, env=TOOLS_ENV, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


_tiny_template: list[Path] = []  # the session's first tiny project, as reproduced; later ones copy it


def tiny_project(root: Path) -> Path:
    """A git repository at root holding the project's files (tracked and new, not ignored) with tiny params,
    committed, then reproduced: the whole pipeline, small enough for a test. The session's first call runs
    the pipeline; later calls copy that result, DVC cache included, so they start up to date in seconds."""
    if not _tiny_template:
        template = root.parent / "tiny-template"
        listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                                capture_output=True, check=True).stdout.decode().split("\0")
        for name in filter(None, listed):
            if (REPO / name).is_file():
                (template / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / name, template / name)
        (template / "dvc.lock").unlink(missing_ok=True)  # the repository's lock is for other params and stages
        params = _merge(yaml.safe_load((template / "params.yaml").read_text()), TINY)
        (template / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        _run(["git", "init", "-q"], template)
        _run(["git", "add", "-A"], template)
        _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny"], template)
        _run(["dvc", "repro"], template)
        _tiny_template.append(template)
    shutil.copytree(_tiny_template[0], root, symlinks=True)
    return root


@pytest.fixture
def one_torch_thread():
    """Tiny models run far faster on one thread, and do not fight other processes for the two cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def keep_torch_threads():
    """predict() and the Predictor set torch's thread count for themselves; later tests get theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)

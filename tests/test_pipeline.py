"""End to end: dvc repro of the real pipeline on tiny params, in a temporary copy of the repository."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from simcaptcha.store import read_encoded_set, read_image_set

from conftest import REPO, SAMPLES

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
}
DOWNSTREAM_OF_RENDER = {"render-fonts", "augment", "train-classifier@synthetic", "train-classifier@glyphs",
                        "self-train", "train-gan", "refine", "train-classifier@refined", "evaluate"}


def _merge(base: dict, overrides: dict) -> dict:
    for key, value in overrides.items():
        base[key] = _merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return base


def _run(args: list[str], cwd: Path) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A git repository holding the project's files (tracked and new, not ignored) with tiny params."""
    root = tmp_path_factory.mktemp("clone") / "project"
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                            check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    params = _merge(yaml.safe_load((root / "params.yaml").read_text()), TINY)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["git", "init", "-q"], root)
    _run(["git", "add", "-A"], root)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny"], root)
    _run(["dvc", "repro"], root)
    return root


def test_repro_builds_every_artifact(project):
    blobs, manifest = read_encoded_set(project / "data/fetched/unlabelled")
    assert len(blobs) == 300 and (manifest["label"] == "").all()
    labelled = read_image_set(project / "data/binarized/labelled")
    assert len(labelled) == 60 and labelled.images.shape[1:] == (50, 100)
    truth = dict(csv.reader((SAMPLES / "dev_labels.csv").open()))
    assert [truth[name] for name in labelled.names] == labelled.labels
    synthetic = read_image_set(project / "data/augmented/captchas")
    assert len(synthetic) == 120 and synthetic.images.shape[1:] == (50, 100)
    for picture in ("binarize-before-after", "mask", "render-captchas", "augment-captchas", "gan-samples",
                    "refine-before-after", "worst-errors"):
        assert (project / "metrics/images" / f"{picture}.png").stat().st_size > 0
    figures = json.loads((project / "metrics/evaluate.json").read_text())
    for reader in ("refined", "synthetic", "letters"):
        assert figures[reader]["count"] == 60 and figures[reader]["real_labels_used"] == 0
        assert 0.0 <= figures[reader]["char_accuracy"] <= 1.0
    gan_log = (project / "metrics/train-gan.csv").read_text().splitlines()
    assert len(gan_log) == 1 + 8 and "d_accuracy_real" in gan_log[0]
    for reader in ("synthetic", "glyphs", "refined"):
        assert (project / f"data/models/{reader}.safetensors").stat().st_size > 0


def test_second_repro_does_nothing(project):
    output = _run(["dvc", "repro"], project)
    assert "Running stage" not in output
    assert "up to date" in output


def test_render_param_reruns_only_render_and_downstream(project):
    before = (project / "data/binarized/unlabelled/shard-00000.npz").stat().st_mtime_ns
    output = _run(["dvc", "exp", "run", "-S", "render.seed=7"], project)
    ran = {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}
    assert ran == DOWNSTREAM_OF_RENDER
    assert (project / "data/binarized/unlabelled/shard-00000.npz").stat().st_mtime_ns == before


def test_real_labels_used_in_training_are_not_evaluated(project):
    _run(["dvc", "exp", "run", "-S", "classifier.real_labels=10"], project)
    figures = json.loads((project / "metrics/evaluate.json").read_text())
    for reader in ("refined", "synthetic"):
        assert figures[reader]["real_labels_used"] == 10 and figures[reader]["count"] == 50
    assert figures["letters"]["real_labels_used"] == 0 and figures["letters"]["count"] == 60

"""Multi-process training: train_reader and train_gan under torchrun with 2 CPU processes (gloo)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from simcaptcha.modelfile import load_gan, load_reader

from helpers import REPO, run_tool

pytestmark = pytest.mark.slow  # torchrun starts two training processes; the second test works on a tiny pipeline


def torchrun(args: list[str], cwd: Path, **env: str) -> None:
    """Launch a script as torchrun does, in 2 CPU processes of one thread each; a failure fails the test."""
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             *args], cwd=cwd, env=dict(os.environ, OMP_NUM_THREADS="1", **env),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def run_two_processes(out: Path) -> tuple[dict, dict]:
    torchrun([str(Path(__file__).with_name("ddp_worker.py")), str(out)], REPO, PYTHONPATH=str(REPO / "src"))
    first, second = (json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1))
    return first, second


def test_two_processes_train_one_model_and_resume(tmp_path):
    first, second = run_two_processes(tmp_path)
    assert first["weights"] == second["weights"]  # DDP averaged the gradients: one model in two processes
    assert first["weights"] == pytest.approx(11.8051, abs=1e-4)  # one thread a process, fixed seeds: every run
    assert "val_char_accuracy" in first["reader_log"][-1]  # only the first process validates
    assert "val_char_accuracy" not in second["reader_log"][-1]
    assert len(first["gan_log"]) == len(second["gan_log"]) == 8
    # each process keeps its half of the 16-image history, 2 of its 4 images a discriminator step: full after 4
    sizes = [[row["history_size"] for row in process["gan_log"]] for process in (first, second)]
    assert sizes == [[0, 0, 2, 4, 6, 8, 8, 8]] * 2
    # every process keeps its own checkpoint, so a killed multi-process run resumes exactly
    assert {path.name for path in tmp_path.glob("*.pt")} == {"reader.rank0.pt", "reader.rank1.pt",
                                                             "gan.rank0.pt", "gan.rank1.pt"}
    resumed, _ = run_two_processes(tmp_path)  # the reader's last epoch and the GAN's step 6 are checkpointed
    assert resumed == first


def test_stages_under_torchrun_write_the_same_artifacts(tiny_project):
    """train-classifier and train-gan launched by torchrun with 2 processes: one set of outputs, loadable as
    dvc repro's, and dvc commit takes them into the pipeline."""
    project = tiny_project
    for stage in (["stages/train_classifier.py", "synthetic"], ["stages/train_gan.py"]):
        torchrun(stage, project)
    model, spec, _ = load_reader(project / "data/models/synthetic.safetensors")
    assert spec.length == 4 and model.head.out_features == 4 * len(spec.charset)
    refiner, _ = load_gan(project / "data/models/gan.safetensors")
    with torch.no_grad():
        assert refiner(torch.zeros(1, 1, 50, 100)).shape == (1, 1, 50, 100)
    figures = json.loads((project / "metrics/train-classifier-synthetic.json").read_text())
    assert "val_char_accuracy" in figures and figures["real_labels_used"] == 0
    assert not list((project / ".cache/checkpoints").glob("*.rank*.pt"))  # every rank removed its checkpoint
    status = run_tool(["dvc", "status", "train-classifier@synthetic", "train-gan"], project)
    assert "modified:           data/models/synthetic.safetensors" in status  # new weights, same contract
    run_tool(["dvc", "commit", "-f", "train-classifier@synthetic", "train-gan"], project)
    assert "changed outs" not in run_tool(["dvc", "status", "train-classifier@synthetic", "train-gan"], project)

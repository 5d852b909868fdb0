"""Faults and reproducibility on the tiny pipeline: each long stage, SIGKILLed mid-run under dvc repro, comes back
through the next dvc repro to the bytes of an uninterrupted run; two dvc repro --force runs give the same bytes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
import torch

from helpers import SAMPLES, TOOLS_ENV, out_paths, run_tool, set_params
from test_fetch import fetch_http_server  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slow  # every test here kills or reruns stages of a reproduced tiny pipeline

KILLED_RUN = "killed_run"  # a column the killed run's checkpoint log gets, to tell a resumed run from a restart
TIMINGS = {"seconds", "per_second"}  # wall-clock figures in the metrics files: all that may differ between runs


@contextmanager
def one_core() -> Iterator[None]:
    """Stages started in here run on one core: on two cores shared with other work, torch's two threads wait on
    each other and tiny training runs several times slower. Both runs a test compares start in here, as their
    float sums depend on the thread count. Under pytest -n each worker takes its own core."""
    cores = os.sched_getaffinity(0)
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    os.sched_setaffinity(0, {sorted(cores)[worker % len(cores)]})
    try:
        yield
    finally:
        os.sched_setaffinity(0, cores)


def without_timings(figures: object) -> object:
    if isinstance(figures, dict):
        return {key: without_timings(value) for key, value in figures.items() if key not in TIMINGS}
    return figures


def artifacts(project: Path, outs: list[str]) -> dict[str, object]:
    """Every file of the outputs, by path: its bytes, or for a metrics JSON file its figures less wall times."""
    files: dict[str, object] = {}
    for out in outs:
        root = project / out
        assert root.exists(), out
        for path in [root] if root.is_file() else sorted(path for path in root.rglob("*") if path.is_file()):
            name = path.relative_to(project).as_posix()
            metrics = name.startswith("metrics/") and name.endswith(".json")
            files[name] = without_timings(json.loads(path.read_text())) if metrics else path.read_bytes()
    return files


def leftovers(project: Path) -> list[str]:
    """Temporary paths of atomic writes (.NAME.tmp-PID) in the output folders."""
    return sorted(path.relative_to(project).as_posix() for folder in ("data", "metrics")
                  for path in (project / folder).rglob(".*.tmp-*"))


def written_since(path: Path, start: float) -> Callable[[], bool]:
    def written() -> bool:
        try:
            return path.stat().st_mtime > start
        except FileNotFoundError:
            return False
    return written


def kill_when(project: Path, stage: str, ready: Callable[[], bool]) -> None:
    """Start ``dvc repro`` of ``stage`` and SIGKILL it, stage script and all, as soon as ``ready()``: a crash."""
    process = subprocess.Popen(["dvc", "repro", "-s", stage], cwd=project, env=TOOLS_ENV, start_new_session=True,
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not ready():
        assert process.poll() is None, f"{stage} ended before it was killed:\n{process.stderr.read().decode()}"
        assert time.monotonic() < deadline, f"{stage} did not get far enough in 60 s"
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    process.stderr.close()


def mark_checkpoint(path: Path) -> None:
    """Tag the first log row of the killed run's checkpoint: the next run's log carries the tag only if it
    resumed from there (a restart logs afresh)."""
    state = torch.load(path, weights_only=True)
    state["log"][0][KILLED_RUN] = 1
    torch.save(state, path)


# ---------------------------------------------------------------- kills
@pytest.mark.parametrize("stage, overrides, checkpoint, log", [
    ("train-gan", {"gan": {"steps": 150, "checkpoint_every": 20}}, "train-gan.pt", "metrics/train-gan.csv"),
    ("train-classifier@synthetic", {"classifier": {"epochs": 8}}, "train-classifier-synthetic.pt",
     "metrics/train-classifier-synthetic.csv"),
], ids=["train-gan", "train-classifier@synthetic"])
def test_a_killed_training_stage_resumes_to_the_bytes_of_an_uninterrupted_run(tiny_project, stage, overrides,
                                                                               checkpoint, log):
    project = tiny_project
    set_params(project, overrides)
    checkpoint = project / ".cache/checkpoints" / checkpoint
    outs = [path for path in out_paths(project, stage) if path != log]
    with one_core():
        kill_when(project, stage, checkpoint.exists)
        mark_checkpoint(checkpoint)
        run_tool(["dvc", "repro", "-s", stage], project)
        resumed, resumed_log = artifacts(project, outs), pd.read_csv(project / log)
        assert leftovers(project) == [] and not checkpoint.exists()
        run_tool(["dvc", "repro", "--force", "-s", stage], project)
    assert artifacts(project, outs) == resumed
    assert resumed_log.pop(KILLED_RUN).iloc[0] == 1  # the killed run's log went on: resumed, not restarted
    pd.testing.assert_frame_equal(resumed_log, pd.read_csv(project / log))


def test_a_killed_render_restarts_to_the_bytes_of_an_uninterrupted_run(tiny_project):
    """render-fonts keeps no checkpoint: killed between its two image sets, it renders both again."""
    project = tiny_project
    set_params(project, {"render": {"count": 1000, "glyph_count": 20000}})
    outs = out_paths(project, "render-fonts")
    with one_core():
        kill_when(project, "render-fonts",
                  written_since(project / "data/synthetic/captchas/manifest.csv", time.time()))
        assert not (project / "data/synthetic/glyphs").exists()  # killed half-way: one set new, one missing
        run_tool(["dvc", "repro", "-s", "render-fonts"], project)
        restarted = artifacts(project, outs)
        assert leftovers(project) == []
        run_tool(["dvc", "repro", "--force", "-s", "render-fonts"], project)
    assert artifacts(project, outs) == restarted


def test_a_killed_fetch_keeps_its_finished_downloads_and_gives_the_same_bytes(tiny_project, fetch_http_server):
    """The first source is downloaded; the second hangs until the kill. The next run asks only for the second."""
    project = tiny_project
    first = fetch_http_server.serve("/c17", (SAMPLES / "challenge-17").read_bytes())
    second = fetch_http_server.serve("/c18", (SAMPLES / "challenge-18").read_bytes(), delay_s=60.0)
    set_params(project, {"fetch": {"unlabelled": {"sources": [first, second], "limit": 1300}}})
    downloaded = project / ".cache/fetch/unlabelled" / f"{hashlib.sha1(first.encode()).hexdigest()}-0"
    outs = out_paths(project, "fetch")
    kill_when(project, "fetch", downloaded.exists)
    fetch_http_server.routes["/c18"].delay_s = 0.0
    run_tool(["dvc", "repro", "-s", "fetch"], project)
    assert fetch_http_server.asked("/c17") == [None]  # once, by the killed run
    resumed = artifacts(project, outs)
    assert leftovers(project) == [] and not (project / ".cache/fetch").exists()
    run_tool(["dvc", "repro", "--force", "-s", "fetch"], project)
    assert artifacts(project, outs) == resumed


@pytest.mark.parametrize("content", [
    b"torn by a crash",
    {"epoch": 1, "model": {}},  # an older layout: no run fingerprint
    torch.zeros(3),  # loads, but is not a checkpoint
], ids=["torn", "older-layout", "not-a-mapping"])
def test_a_checkpoint_of_another_format_is_ignored_and_the_stage_finishes(tiny_project, content):
    project = tiny_project
    checkpoint = project / ".cache/checkpoints/train-classifier-synthetic.pt"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        checkpoint.write_bytes(content)
    else:
        torch.save(content, checkpoint)
    with one_core():
        run_tool([sys.executable, "stages/train_classifier.py", "synthetic"], project)
    assert pd.read_csv(project / "metrics/train-classifier-synthetic.csv")["epoch"].tolist() == [1]  # its one epoch
    assert not checkpoint.exists()


# ---------------------------------------------------------------- reproducibility
def test_two_forced_repros_give_byte_identical_artifacts(tiny_project):
    """The tiny project comes reproduced from scratch; dvc repro --force does it all again, with the same thread
    count (no one_core: the template was built without it). Every output file, models included, must match, and
    every metrics file but for its wall times."""
    project = tiny_project
    outs = out_paths(project)
    first = artifacts(project, outs)
    run_tool(["dvc", "repro", "--force"], project)
    second = artifacts(project, outs)
    assert sorted(second) == sorted(first)
    assert [path for path in first if second[path] != first[path]] == []

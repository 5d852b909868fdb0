"""Experiments the way a team compares them: two git branches, a queued grid run two at a time, offline plots.

All on the tiny pipeline; each experiment changes a param that reruns only the cheap end of the pipeline.
"""

import json
import time
from pathlib import Path

import pytest

from helpers import GIT, copy_project, run_tool

pytestmark = pytest.mark.slow  # dvc exp runs on a reproduced tiny pipeline


@pytest.fixture(scope="module")
def project(tiny_template, tmp_path_factory) -> Path:
    return copy_project(tiny_template, tmp_path_factory.mktemp("experiments") / "project")


@pytest.fixture(scope="module")
def branches(project) -> Path:
    """A branch `fewer-rounds` with selftrain.rounds 1, reproduced and committed beside the default branch."""
    run_tool(["git", "branch", "-M", "main"], project)
    run_tool(["git", "add", "-A"], project)
    run_tool([*GIT, "commit", "-qm", "main metrics"], project)
    run_tool(["git", "checkout", "-qb", "fewer-rounds"], project)
    run_tool(["dvc", "exp", "run", "-S", "selftrain.rounds=1"], project)  # exp run -S edits params.yaml and reproduces
    run_tool(["git", "add", "-A"], project)
    run_tool([*GIT, "commit", "-qm", "selftrain.rounds 1"], project)
    run_tool(["git", "checkout", "-q", "main"], project)
    run_tool(["dvc", "checkout", "-q"], project)
    return project


def test_params_and_metrics_diff_between_branches(branches):
    params = json.loads(run_tool(["dvc", "params", "diff", "main", "fewer-rounds", "--json"], branches))
    assert params["params.yaml"]["selftrain.rounds"] == {"old": 2, "new": 1, "diff": -1}
    metrics = json.loads(run_tool(["dvc", "metrics", "diff", "main", "fewer-rounds", "--all", "--json"], branches))
    assert metrics["metrics/self-train.json"]["round"] == {"old": 2, "new": 1, "diff": -1}
    assert "selftrained.char_accuracy" in metrics["metrics/evaluate.json"]
    assert metrics["metrics/train-gan.json"]["seconds"]["diff"] == 0  # the GAN did not rerun on the branch


def test_plots_diff_between_branches_draws_offline(branches, tmp_path):
    run_tool(["dvc", "plots", "diff", "main", "fewer-rounds", "-o", str(tmp_path / "plots")], branches)
    page = (tmp_path / "plots" / "index.html").read_text()
    assert "<script src=" not in page  # nothing loaded from a CDN: vega is inlined by .dvc/plots/offline.html
    assert "vegaEmbed(" in page and "self-train.csv" in page
    assert page.count("fewer-rounds") >= 1 and page.count("main") >= 1


def test_queued_grid_runs_two_at_a_time(branches):
    """The README's grid: one `dvc exp run --queue` with a sweep of values queues one experiment per value."""
    project = branches
    before = set(experiments(project))  # the branch fixture's own dvc exp run is listed too
    # ++ adds the key: params.yaml names only what differs from config.py's defaults
    run_tool(["dvc", "exp", "run", "--queue", "-S", "++evaluate.worst_errors=4,8"], project)
    run_tool(["dvc", "queue", "start", "-j", "2"], project)
    deadline = time.monotonic() + 300
    while "Queued" in (status := run_tool(["dvc", "queue", "status"], project)) or "Running" in status:
        assert time.monotonic() < deadline, f"queue did not finish in 300 s:\n{status}"
        time.sleep(2)
    assert status.count("Success") == 2, status
    queued = {name: data for name, data in experiments(project).items() if name not in before}
    by_value = {data["params"]["params.yaml"]["data"]["evaluate"]["worst_errors"]: name
                for name, data in queued.items()}
    assert set(by_value) == {4, 8}
    for name in by_value.values():
        assert "selftrained" in queued[name]["metrics"]["metrics/evaluate.json"]["data"]
    diff = json.loads(run_tool(["dvc", "exp", "diff", by_value[4], by_value[8], "--json"], project))
    assert diff["params"]["params.yaml"]["evaluate.worst_errors"] == {"old": 4, "new": 8, "diff": 4}


def experiments(project: Path) -> dict[str, dict]:
    """Every experiment `dvc exp show` lists, by name: its params and metrics."""
    shown = json.loads(run_tool(["dvc", "exp", "show", "--json"], project))
    return {run["name"]: run["data"] for commit in shown for run in (commit.get("experiments") or [])
            for run in run["revs"]}

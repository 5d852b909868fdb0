"""Shared fixtures: torch's thread count, and the tiny reproduced project (built once a session, copied per use).

Constants and helper functions live in helpers.py."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n: on two cores, two workers of two torch threads each (and
    os.environ["OMP_NUM_THREADS"] = "1"     # their stage subprocesses) would wait on each other: one thread each
    torch.set_num_threads(1)

# After the thread setting: helpers.TOOLS_ENV, the stage subprocesses' environment, is a copy of os.environ.
from helpers import GIT, REPO, TINY, copy_project, merge, run_tool  # noqa: E402


@pytest.fixture(scope="session")
def tiny_template(tmp_path_factory) -> Path:
    """A git repository holding the project's files (tracked and new, not ignored) with tiny params (helpers.TINY),
    committed, then reproduced: the whole pipeline, small enough for a test. Built once a session (once a worker
    under pytest -n); no test changes it: each takes a copy (``tiny_project``, or helpers.copy_project for a
    copy shared by a module's tests)."""
    template = tmp_path_factory.mktemp("tiny-template")
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (template / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, template / name)
    (template / "dvc.lock").unlink(missing_ok=True)  # the repository's lock is for other params and stages
    params = merge(yaml.safe_load((template / "params.yaml").read_text()), TINY)
    (template / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_tool(["git", "init", "-q"], template)
    run_tool(["git", "add", "-A"], template)
    run_tool([*GIT, "commit", "-qm", "tiny"], template)
    run_tool(["dvc", "repro"], template)
    return template


@pytest.fixture
def tiny_project(tiny_template, tmp_path) -> Path:
    """This test's own copy of the reproduced tiny project, to change as it likes."""
    return copy_project(tiny_template, tmp_path / "project")


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

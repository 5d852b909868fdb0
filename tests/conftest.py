"""Shared test fixtures: where the repository and the development data are."""

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"  # the development data set; CI always has it beside the repo
SAMPLES = REPO / "data" / "samples" / "hackmit2017"  # the embedded default target


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

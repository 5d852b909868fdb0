"""Shared test fixtures: where the repository and the development data are."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"  # the development data set; CI always has it beside the repo
SAMPLES = REPO / "data" / "samples" / "hackmit2017"  # the embedded default target

"""Resumable training state: a killed stage run again with the same inputs goes on where it stopped.

Checkpoints are loaded with ``weights_only=True`` (no unpickling), and only by the run whose fingerprint they hold.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from . import distributed
from .store import atomic_path


def fingerprint(*parts: object) -> str:
    """A hash of everything a run depends on: a checkpoint is resumed only by the same run."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.tobytes() if isinstance(part, np.ndarray) else json.dumps(part, sort_keys=True,
                                                                                       default=str).encode())
    return digest.hexdigest()


def save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def snapshot(parts: dict) -> dict:
    """The state of every module, optimizer, schedule, generator and buffer in ``parts``, plus torch's RNG."""
    state = {key: part.get_state() if isinstance(part, torch.Generator) else part.state_dict()
             for key, part in parts.items()}
    return {**state, "torch_rng": torch.get_rng_state()}


def restore(state: dict, parts: dict) -> None:
    """Put a ``snapshot`` back into the same parts."""
    for key, part in parts.items():
        if isinstance(part, torch.Generator):
            part.set_state(state[key])
        else:
            part.load_state_dict(state[key])
    torch.set_rng_state(state["torch_rng"])


def load_checkpoint(path: Path, run: str) -> dict | None:
    if not path.exists():
        return None
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception:  # a checkpoint from another version or a torn file: start over rather than fail
        return None
    return state if isinstance(state, dict) and state.get("run") == run else None


def resume(checkpoint: Path, run: str, parts: dict, counter: str) -> tuple[list[dict], int]:
    """The log so far and the ``counter`` (epoch or step) to go on from, with ``parts`` restored from a
    checkpoint of the same run; an empty log and 0 when there is none."""
    state = load_checkpoint(checkpoint, run)
    distributed.check_same_counter(state[counter] if state else 0, counter)
    if state is None:
        return [], 0
    restore(state, parts)
    return state["log"], state[counter]

"""Multi-process training under torchrun: one process per GPU (nccl) or per share of the CPU cores (gloo).

torchrun sets WORLD_SIZE, RANK, LOCAL_RANK and LOCAL_WORLD_SIZE; a plain ``python stages/...`` run has none and
is one process, exactly as before. Every process takes its slice of each batch and DistributedDataParallel
averages the gradients, so the global batch and the learning-rate schedule are those of one process. Only rank 0
writes artifacts, metrics and pictures; every rank keeps its own checkpoint, so a killed run resumes exactly.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .errors import SimcaptchaError
from .machine import process_count, process_rank


def join() -> torch.device:
    """Join torchrun's process group when launched by it; the device this process trains on."""
    cuda = torch.cuda.is_available()
    if process_count() > 1 and not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
    if not cuda:
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def leave() -> None:
    if dist.is_initialized():
        dist.barrier()  # rank 0 may still be writing; no process exits before it is done
        dist.destroy_process_group()


def wrap(module: nn.Module) -> nn.Module:
    """The module DistributedDataParallel-wrapped when there are several processes, else itself."""
    if process_count() == 1:
        return module
    device = next(module.parameters()).device
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def rank_slice(rows):
    """This process's share of a batch's rows (every process_count-th row, from its rank on)."""
    return rows[process_rank()::process_count()]


def rank_path(path: Path) -> Path:
    """Each rank's own checkpoint file: train.pt alone, train.rank1.pt for rank 1 of several."""
    return path if process_count() == 1 else path.with_name(f"{path.stem}.rank{process_rank()}{path.suffix}")


def _collective_device() -> torch.device | None:
    """Where a collective's tensors live: NCCL reduces only CUDA tensors, gloo CPU ones."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None


def check_same_counter(counter: int, what: str) -> None:
    """Every rank must resume from the same epoch or step, or the processes would wait on each other forever."""
    if process_count() == 1:
        return
    device = _collective_device()
    counters = [torch.tensor(0, device=device) for _ in range(process_count())]
    dist.all_gather(counters, torch.tensor(counter, device=device))
    if len({int(value) for value in counters}) > 1:
        raise SimcaptchaError(f"the ranks' checkpoints stopped at different {what}s "
                              f"({[int(value) for value in counters]}); delete .cache/checkpoints and run again")


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any, so all processes leave a training loop together."""
    if process_count() == 1:
        return flag
    device = _collective_device()
    value = torch.tensor(int(flag), device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value)

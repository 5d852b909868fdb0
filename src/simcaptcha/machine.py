"""What this machine lends the process, and how work is spread over it."""

import multiprocessing
import os
import subprocess
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

CPUINFO = "/proc/cpuinfo"
CPU_READ_CHUNK = 32  # images per forward pass of a reader on a CPU, torch's or onnxruntime's: larger chunks fall
#                      out of the cache and read no faster
BFLOAT16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})  # CPU flags of hardware bfloat16 products


def available_cores() -> int:
    """CPU cores this process may run on (a container's share, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cpu_model() -> str:
    """The CPU's model name, from /proc/cpuinfo or lscpu; "not recorded" where neither says."""
    try:
        for line in Path(CPUINFO).read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    try:
        result = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "not recorded"
    for line in result.stdout.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Model name" and value.strip():
            return value.strip()
    return "not recorded"


def reading_threads() -> int:
    """Threads for a reader on the CPU: one core is left to the thread that decodes and binarizes the next batch.

    On a busy machine this matters more: two torch threads on two shared cores wait on each other at every layer
    (measured 2.4x slower than one thread while another process kept one of the two cores busy).
    """
    return max(1, available_cores() - 1)


def has_native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 products in hardware: AMX tiles (``amx_bf16``) or AVX-512 BF16 dot
    products (``avx512_bf16``), both of which oneDNN's convolutions use. Without either torch emulates bfloat16,
    and autocast trains several times slower than float32. Read from the kernel's CPU flags: never assumed from
    the CPU's make (machines named "AMD EPYC" come with and without ``avx512_bf16``)."""
    try:
        with open(CPUINFO, encoding="ascii", errors="replace") as info:
            return any(line.startswith("flags") and not BFLOAT16_FLAGS.isdisjoint(line.split()) for line in info)
    except OSError:  # not Linux: no way to tell, so no bfloat16
        return False


def process_count() -> int:
    """Processes in this run: torchrun's WORLD_SIZE, 1 for a plain run."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def process_rank() -> int:
    """This process's place in a torchrun run (RANK); 0 for a plain run."""
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """Whether this process writes artifacts and shows progress: rank 0, or the only process."""
    return process_rank() == 0


def process_map(function: Callable, jobs: Sequence, workers: int) -> Iterator:
    """``function`` over ``jobs`` in order, in up to ``workers`` forked processes (0: one per core; 1: here)."""
    workers = min(workers or available_cores(), len(jobs))
    if workers <= 1:
        yield from map(function, jobs)
        return
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        yield from pool.imap(function, jobs)

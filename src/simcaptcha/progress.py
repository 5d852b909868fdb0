"""Progress bars for long work: shown on a terminal, silent in logs and CI (where they would flood the output)
and in every process of a multi-process run but the first."""

from tqdm import tqdm

from .machine import is_main_process


def progress(iterable=None, **kwargs) -> tqdm:
    kwargs.setdefault("disable", None if is_main_process() else True)  # None: only when stderr is a terminal
    kwargs.setdefault("mininterval", 0.5)
    return tqdm(iterable, **kwargs)

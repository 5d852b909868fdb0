"""Progress bars for long work: shown on a terminal, silent in logs and CI (where they would flood the output)."""

from tqdm import tqdm


def progress(iterable=None, **kwargs) -> tqdm:
    kwargs.setdefault("disable", None)  # None: only when stderr is a terminal
    kwargs.setdefault("mininterval", 0.5)
    return tqdm(iterable, **kwargs)

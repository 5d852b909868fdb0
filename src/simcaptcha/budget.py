"""The label-budget study: what N real labelled captchas are worth, alone and beside synthetic or refined images.

Every point of the grid (training data × N × seed) is judged on one fixed held-out split of the real labelled
set that no point trains on. Points that train beside a synthetic set start from the pipeline's zero-label reader
of that set and fine-tune on the N real captchas with synthetic images added, so at N = 0 a point *is* that
zero-label reader; real-only points train the same reader architecture from scratch on the same real images.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from .config import BudgetConfig, ClassifierConfig
from .errors import SimcaptchaError

MODES = {"real": "real only", "synthetic": "real + synthetic", "refined": "real + refined"}


def held_out_split(count: int, config: BudgetConfig) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the fixed test captchas (sorted) and the other rows, in the seeded order budgets draw from."""
    if config.test_size >= count:
        raise SimcaptchaError(f"params: budget.test_size = {config.test_size} leaves no labelled captcha to train "
                              f"on ({count} are labelled)")
    order = np.random.default_rng(config.split_seed).permutation(count)
    return np.sort(order[:config.test_size]), order[config.test_size:]


def budget_rows(candidates: np.ndarray, size: int, seed: int, config: BudgetConfig) -> np.ndarray:
    """The ``size`` real captchas of one point: a seeded draw from the non-test rows, so for one seed a larger
    budget holds every captcha of a smaller one."""
    if size > len(candidates):
        raise SimcaptchaError(f"params: budget.sizes has {size}, but only {len(candidates)} labelled captchas are "
                              f"left beside budget.test_size = {config.test_size}")
    return candidates[np.random.default_rng(seed).permutation(len(candidates))[:size]]


def training_mix(real: np.ndarray, real_labels: list[str], synthetic: np.ndarray | None,
                 synthetic_labels: list[str], config: BudgetConfig, seed: int) -> tuple[np.ndarray, list[str], int]:
    """The real-only recipe's images plus, beside a synthetic set, synthetic ones on top.

    The real captchas are repeated to budget.steps batches, the same in every mode, so adding a synthetic set
    never takes real training away; synthetic images drawn from the set are added until they are
    ``synthetic_share(N)`` of the mix (none when there is no real captcha: N = 0 trains nothing). Returns the
    images (synthetic first), their labels and the synthetic count.
    """
    real_count = config.steps * config.batch_size if len(real) else 0
    synthetic_count = 0
    if synthetic is not None and real_count:
        share = synthetic_share(len(real), config)
        synthetic_count = int(round(real_count * share / (1 - share)))
    rng = np.random.default_rng(seed)
    synthetic_rows = np.empty(0, dtype=np.int64)
    if synthetic_count:
        synthetic_rows = rng.choice(len(synthetic), synthetic_count, replace=synthetic_count > len(synthetic))
    real_rows = np.resize(rng.permutation(len(real)), real_count)  # every real captcha as often as the others
    parts = [synthetic[synthetic_rows]] if synthetic_count else []
    images = np.concatenate(parts + [real[real_rows]])
    labels = [synthetic_labels[row] for row in synthetic_rows] + [real_labels[row] for row in real_rows]
    return images, labels, synthetic_count


def synthetic_share(size: int, config: BudgetConfig) -> float:
    """The synthetic share of a mix beside ``size`` real captchas: budget.synthetic_share, halved at N =
    budget.synthetic_halving. A few real captchas seen a thousand times need the synthetic set to keep the reader
    general; thousands of them carry the site better than any synthetic image (one share for all N was either too
    little beside 10 HackMIT captchas or too much beside 1,000 digits)."""
    return config.synthetic_share * config.synthetic_halving / (config.synthetic_halving + size)


def point_config(reader: ClassifierConfig, config: BudgetConfig, seed: int) -> ClassifierConfig:
    """One pass over the mix (its length already counts the steps), no synthetic validation share."""
    return replace(reader, epochs=1, batch_size=config.batch_size, learning_rate=config.learning_rate,
                   validation_share=0.0, seed=seed)


def point_path(directory: Path, mode: str, size: int, seed: int) -> Path:
    return directory / f"{mode}-{size}-{seed}.json"

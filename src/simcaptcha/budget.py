"""The label-budget study: what N real labelled captchas are worth, alone and beside synthetic or refined images.

Every point of the grid (training data × N × seed) is judged on one fixed held-out split of the real labelled
set that no point trains on. Points that train beside a synthetic set start from the pipeline's zero-label reader
of that set and fine-tune on the N real captchas with synthetic images added, so at N = 0 a point *is* that
zero-label reader; real-only points train the same reader architecture from scratch on the same real images.
"""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

from .config import BudgetConfig, ClassifierConfig
from .errors import SimcaptchaError
from .store import read_json, write_bytes

matplotlib.use("Agg")  # files only, no display

START_READERS = ("synthetic", "refined")  # the zero-label readers a mixed point starts from
MODES = {"real": "real only", "synthetic": "real + synthetic", "refined": "real + refined"}
REFINED_ONLY = "refined only"  # the refined reader with no real label: the real + refined point at N = 0


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
    budget.synthetic_share of the mix (none when there is no real captcha: N = 0 trains nothing). Returns the
    images (synthetic first), their labels and the synthetic count.
    """
    real_count = config.steps * config.batch_size if len(real) else 0
    synthetic_count = 0
    if synthetic is not None and real_count:
        synthetic_count = int(round(real_count * config.synthetic_share / (1 - config.synthetic_share)))
    rng = np.random.default_rng(seed)
    synthetic_rows = np.empty(0, dtype=np.int64)
    if synthetic_count:
        synthetic_rows = rng.choice(len(synthetic), synthetic_count, replace=synthetic_count > len(synthetic))
    real_rows = np.resize(rng.permutation(len(real)), real_count)  # every real captcha as often as the others
    parts = [synthetic[synthetic_rows]] if synthetic_count else []
    images = np.concatenate(parts + [real[real_rows]])
    labels = [synthetic_labels[row] for row in synthetic_rows] + [real_labels[row] for row in real_rows]
    return images, labels, synthetic_count


def point_config(reader: ClassifierConfig, config: BudgetConfig, seed: int) -> ClassifierConfig:
    """One pass over the mix (its length already counts the steps), no synthetic validation share."""
    return replace(reader, epochs=1, batch_size=config.batch_size, learning_rate=config.learning_rate,
                   validation_share=0.0, seed=seed)


def point_path(directory: Path, mode: str, size: int, seed: int) -> Path:
    return directory / f"{mode}-{size}-{seed}.json"


def summarize(directory: Path, config: BudgetConfig) -> tuple[pd.DataFrame, dict]:
    """One row per N with the seed-mean per-character and whole-captcha accuracy of every mode, and the figures
    for metrics: mean and spread per point, and where real + refined is below real only."""
    rows, points = [], {}
    for size in config.sizes:
        row = {"n": size}
        for mode, title in MODES.items():
            results = [read_json(point_path(directory, mode, size, seed), "run its label-budget stage first")
                       for seed in config.seeds]
            char = [result["char_accuracy"] for result in results]
            whole = [result["captcha_accuracy"] for result in results]
            row[f"char {title}"], row[f"whole {title}"] = round(float(np.mean(char)), 5), round(float(np.mean(whole)), 5)
            points.setdefault(title, {})[str(size)] = {
                "char_accuracy": row[f"char {title}"], "char_accuracy_std": round(float(np.std(char)), 5),
                "captcha_accuracy": row[f"whole {title}"], "captcha_accuracy_std": round(float(np.std(whole)), 5),
                "seeds": len(results), "real_labels_used": size}
        rows.append(row)
    table = pd.DataFrame(rows).sort_values("n", kind="stable")
    if 0 in config.sizes:  # the refined reader without a real label, drawn flat across N
        zero = table.loc[table["n"] == 0].iloc[0]
        for measure in ("char", "whole"):
            table[f"{measure} {REFINED_ONLY}"] = zero[f"{measure} {MODES['refined']}"]
    below = [int(size) for size, mixed, alone in zip(table["n"], table[f"char {MODES['refined']}"],
                                                       table[f"char {MODES['real']}"]) if mixed < alone]
    figures = {"test_size": config.test_size, "seeds": list(config.seeds), "steps": config.steps,
               "points": points, "refined_below_real_only_at": below}
    return table, figures


def draw_chart(table: pd.DataFrame, figures: dict, path: Path) -> None:
    """Per-character and whole-captcha accuracy against N, one line per mode (seed spread as error bars)."""
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(1, 2, figsize=(10, 4), sharex=True)
    for axis, (measure, key) in zip(axes, (("char", "char_accuracy"), ("whole", "captcha_accuracy"))):
        for title in MODES.values():
            spread = [figures["points"][title][str(size)][f"{key}_std"] for size in table["n"]]
            axis.errorbar(table["n"], table[f"{measure} {title}"], yerr=spread, marker="o", capsize=3, label=title)
        if f"{measure} {REFINED_ONLY}" in table:
            axis.plot(table["n"], table[f"{measure} {REFINED_ONLY}"], linestyle="--", color="grey", label=REFINED_ONLY)
        axis.set_xscale("symlog", linthresh=10)
        axis.set_xlabel("real labelled captchas in training (N)")
        axis.set_ylabel("per-character accuracy" if measure == "char" else "whole-captcha accuracy")
        axis.set_ylim(0, 1)
        axis.grid(alpha=0.3)
    axes[0].legend(loc="lower right")
    figure.suptitle(f"Label budget: {figures['test_size']} held-out test captchas, "
                    f"{len(figures['seeds'])} seed(s) per point, {figures['steps']} steps")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})  # no version stamp: same bytes
    pyplot.close(figure)
    write_bytes(path, buffer.getvalue())

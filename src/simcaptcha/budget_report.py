"""The label-budget grid gathered: a table of accuracy against N per mode (seed means), figures and a chart.

Kept apart from ``budget`` so that a change to the report does not rerun the grid's training points.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

from .budget import MODES, point_path
from .config import BudgetConfig
from .store import read_json, write_bytes

matplotlib.use("Agg")  # files only, no display
REFINED_ONLY = "refined only"  # the refined reader with no real label: the real + refined point at N = 0


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
            row[f"char {title}"] = round(float(np.mean(char)), 5)
            row[f"whole {title}"] = round(float(np.mean(whole)), 5)
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
        axis.set_xlabel("real labelled images in training (N)")
        axis.set_ylabel("per-character accuracy" if measure == "char" else "whole-captcha (whole-image) accuracy")
        axis.set_ylim(0, 1)
        axis.grid(alpha=0.3)
    axes[0].legend(loc="lower right")
    figure.suptitle(f"Label budget: {figures['test_size']} held-out real test images, "
                    f"{len(figures['seeds'])} seed(s) per point, {figures['steps']} steps")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})  # no version stamp: same bytes
    pyplot.close(figure)
    write_bytes(path, buffer.getvalue())

"""DVC stage evaluate: every reader on the real labelled captchas, beside two baselines.

selftrained: the pipeline's answer (a reader that learnt the pool from its own confident readings);
refined: the reader trained on refined synthetic captchas; synthetic: the same recipe on unrefined synthetic
captchas (so the refiner's value is a number); letters: a single-glyph reader applied to equal-width slices.
Real captchas a reader was trained on are skipped for that reader. Confusion and worst errors: selftrained.
selftrained also gets its label-free accuracy estimate (read from pool captchas no reader trained on, no label
used) beside the measured figures, its calibration on the labelled captchas and its accuracy against coverage.
"""

import json

import numpy as np
import pandas as pd

from simcaptcha.calibration import (PRECISIONS, coverage_at, coverage_curve, expected_calibration_error,
                                    label_free_estimate, reliability, reliability_diagram)
from simcaptcha.config import load_config
from simcaptcha.errors import run_main
from simcaptcha.imaging import contact_sheet, save_png
from simcaptcha.metrics import accuracy_figures, confusion_pairs
from simcaptcha.modelfile import load_reader
from simcaptcha.pipeline import BINARIZED, IMAGES, METRICS, MODELS, labelled_set, stage_metrics
from simcaptcha.pool import pool_rows
from simcaptcha.reading import pick_device, read_images, read_letters, read_logits
from simcaptcha.store import read_image_set, write_csv

READERS = ("selftrained", "refined", "synthetic", "letters")  # the first is the pipeline's answer


def read_with(name: str, images: np.ndarray, slots: int, batch_size: int) -> tuple[list[str], list[float],
                                                                               tuple[str, ...]]:
    """Readings, confidences and the real captchas trained on, of reader ``name`` (letters: the glyph reader)."""
    model, spec, _ = load_reader(MODELS / f"{'glyphs' if name == 'letters' else name}.safetensors")
    model.to(pick_device())
    if name == "letters":
        return *read_letters(model, spec.coder(), images, slots, batch_size), ()
    return *read_images(model, spec.coder(), images, batch_size), spec.trained_on_real


def trust_figures(params, labelled, predicted: list[str], truth: list[str], confidences: list[float]) -> dict:
    """The answer's label-free estimate from the held-out pool, and, against the labels, how well its confidences
    are calibrated (reliability diagram) and what share it reads at each of ``PRECISIONS``."""
    model, spec, _ = load_reader(MODELS / f"{READERS[0]}.safetensors")
    pool = read_image_set(BINARIZED / "unlabelled")
    _, held_out = pool_rows(pool, labelled, params.selftrain)
    estimate = label_free_estimate(spec.coder(), read_logits(model.to(pick_device()), pool.images[held_out]),
                                   params.render.length[0])
    if estimate["collapsed"]:
        print(f"warning: the {READERS[0]} reader reads {estimate['most_common_share']:.0%} of the held-out pool as "
              f"{estimate['most_common_reading']!r}: it has collapsed, and its figures are no result")
    correct = [text == label for text, label in zip(predicted, truth)]
    bins, curve = reliability(confidences, correct), coverage_curve(confidences, correct)
    write_csv(METRICS / "reliability.csv", pd.DataFrame(bins, columns=["bin", "count", "confidence", "accuracy"]))
    write_csv(METRICS / "coverage.csv", pd.DataFrame(curve[:: max(1, len(curve) // 500)] + curve[-1:],
                                                     columns=["coverage", "precision", "min_confidence"]))
    save_png(IMAGES / "reliability.png", reliability_diagram(bins))
    if not truth:
        return estimate
    return {**estimate, "expected_calibration_error": expected_calibration_error(bins),
            **{f"coverage_at_{round(precision * 100)}_precision": coverage_at(curve, precision)
               for precision in PRECISIONS}}


def main() -> None:
    params = load_config()
    config = params.evaluate
    labelled = labelled_set(params.render)
    with stage_metrics("evaluate") as figures:
        for name in READERS:
            texts, confidences, trained_on = read_with(name, labelled.images, params.render.length[1],
                                                       config.batch_size)
            keep = ~np.isin(labelled.names, trained_on)
            truth = [label for label, kept in zip(labelled.labels, keep) if kept]
            predicted = [text for text, kept in zip(texts, keep) if kept]
            figures[name] = {**accuracy_figures(predicted, truth), "real_labels_used": len(trained_on)}
            if name != READERS[0]:
                continue
            write_csv(METRICS / "confusion.csv",
                      pd.DataFrame(confusion_pairs(predicted, truth), columns=["actual", "predicted"]))
            rows = np.flatnonzero(keep)
            wrong = [row for row, text in zip(rows, predicted) if text != labelled.labels[row]]
            wrong.sort(key=lambda row: -confidences[row])  # confidently wrong first
            worst = wrong[: config.worst_errors]
            save_png(IMAGES / "worst-errors.png", contact_sheet(
                [labelled.images[row] for row in worst],
                [f"{labelled.labels[row]}>{texts[row]}" for row in worst], columns=8))
            figures[name].update(trust_figures(params, labelled, predicted, truth,
                                               [confidences[row] for row in rows]))
        if "char_accuracy" in figures["refined"]:
            figures["refiner_gain_char"] = round(figures["refined"]["char_accuracy"]
                                                 - figures["synthetic"]["char_accuracy"], 5)
    print(json.dumps({name: figures[name] for name in READERS}, indent=1))


if __name__ == "__main__":
    run_main(main)

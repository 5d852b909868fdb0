"""How far to trust a reader without a label: its accuracy estimated from the pool, whether its confidences
mean what they say, and how much it reads at a wanted precision.

The estimate reads pool captchas that no reader trained on (``selftrain.holdout``): a reader's confidence on
the images it learnt from is inflated, on unseen ones from the same site it is the probability its reading is
right as far as the reader can tell. The estimated accuracy is the mean of those probabilities, per character
and per captcha. No real label enters it; the labelled set only measures how close it comes
(``expected_calibration_error``, the reliability diagram).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch
from PIL import Image, ImageDraw

from .reading import LabelCoder

COLLAPSE_SHARE = 0.25  # one reading for this share of the pool is a collapse ...
COLLAPSE_OVER_CHANCE = 5  # ... unless the site draws so few readings that chance comes within this factor of it
RELIABILITY_BINS = 10
PRECISIONS = (0.99, 0.95)  # the coverage evaluate reports at each


def character_confidences(coder: LabelCoder, logits: torch.Tensor) -> list[list[float]]:
    """Each read character's probability: its position's top class (positions), or the top class's highest
    probability over the columns that read it (CTC, greedy: a run of one class is one character)."""
    best, classes = logits.float().softmax(-1).max(-1)
    if coder.head == "positions":
        return best.tolist()
    confidences = []
    for row, probabilities in zip(classes.tolist(), best.tolist()):
        chars: list[float] = []
        for column, code in enumerate(row):
            if code == 0:
                continue
            if column and row[column - 1] == code:
                chars[-1] = max(chars[-1], probabilities[column])
            else:
                chars.append(probabilities[column])
        confidences.append(chars)
    return confidences


def label_free_estimate(coder: LabelCoder, logits: torch.Tensor, shortest: int) -> dict:
    """The accuracy a reader should score on the site, from its scores for unseen pool captchas alone.

    estimated_char_accuracy: the mean probability of a read character; estimated_captcha_accuracy: the mean
    probability of a whole reading (the product of its characters'). ``collapsed``: one reading stands for
    ``COLLAPSE_SHARE`` or more of the pool, far above what chance gives a site of ``shortest`` characters: the
    reader has given up reading, its figures are no result, and the estimate is withheld (None).
    """
    texts, captcha_confidences = coder.decode(logits)
    chars = character_confidences(coder, logits)
    reading, count = Counter(texts).most_common(1)[0] if texts else ("", 0)
    share = count / max(len(texts), 1)
    collapsed = share >= max(COLLAPSE_SHARE, COLLAPSE_OVER_CHANCE * len(coder.charset) ** -shortest)
    read_chars = sum(len(row) for row in chars)
    char_confidence = round(sum(map(sum, chars)) / read_chars, 5) if read_chars else None
    captcha_confidence = round(float(np.mean(captcha_confidences)), 5) if texts else None
    return {
        "estimate_count": len(texts),
        "estimated_char_accuracy": None if collapsed else char_confidence,
        "estimated_captcha_accuracy": None if collapsed else captcha_confidence,
        "estimate_standard_error": round(float(np.std(captcha_confidences) / np.sqrt(len(texts))), 5)
        if texts else None,  # of the whole-captcha estimate, from the sample of held-out captchas alone
        "held_out_char_confidence": char_confidence,  # what the estimate would be, collapsed or not
        "held_out_captcha_confidence": captcha_confidence,
        "most_common_reading": reading,
        "most_common_share": round(share, 5),
        "collapsed": bool(collapsed),
    }


def reliability(confidences: list[float], correct: list[bool], bins: int = RELIABILITY_BINS) -> list[dict]:
    """Equal-width confidence bins: each bin's captchas, mean confidence and share read right."""
    confidences, correct = np.asarray(confidences, dtype=float), np.asarray(correct, dtype=float)
    which = np.minimum((confidences * bins).astype(int), bins - 1)
    rows = []
    for index in range(bins):
        members = which == index
        if members.any():
            rows.append({"bin": round((index + 0.5) / bins, 3), "count": int(members.sum()),
                         "confidence": round(float(confidences[members].mean()), 5),
                         "accuracy": round(float(correct[members].mean()), 5)})
    return rows


def expected_calibration_error(rows: list[dict]) -> float:
    """The captcha-weighted mean gap between confidence and accuracy over the reliability bins."""
    total = sum(row["count"] for row in rows)
    return round(sum(row["count"] * abs(row["confidence"] - row["accuracy"]) for row in rows) / max(total, 1), 5)


def coverage_curve(confidences: list[float], correct: list[bool]) -> list[dict]:
    """Reading the most confident captchas first: at each coverage (share of captchas answered), the precision
    (share of answered ones read right) and the least confidence answered, i.e. ``predict --min-confidence``."""
    order = np.argsort(-np.asarray(confidences, dtype=float), kind="stable")
    right = np.cumsum(np.asarray(correct, dtype=float)[order])
    answered = np.arange(1, len(order) + 1)
    return [{"coverage": round(float(count / len(order)), 5), "precision": round(float(hits / count), 5),
             "min_confidence": round(float(confidences[row]), 5)}
            for count, hits, row in zip(answered, right, order)]


def coverage_at(curve: list[dict], precision: float) -> float:
    """The largest share of captchas answered with at least ``precision`` of them right (0 if none)."""
    return max((row["coverage"] for row in curve if row["precision"] >= precision), default=0.0)


def reliability_diagram(rows: list[dict], bins: int = RELIABILITY_BINS, size: int = 240) -> Image.Image:
    """Bars of each bin's accuracy over its confidence range, the diagonal a calibrated reader would follow."""
    margin = 24
    image = Image.new("RGB", (size + 2 * margin, size + 2 * margin), "white")
    draw = ImageDraw.Draw(image)
    for row in rows:
        left = margin + (row["bin"] - 0.5 / bins) * size
        top = margin + (1 - row["accuracy"]) * size
        draw.rectangle([left, top, left + size / bins - 1, margin + size], fill=(90, 130, 200), outline="black")
    draw.line([margin, margin + size, margin + size, margin], fill=(200, 60, 60), width=2)
    draw.rectangle([margin, margin, margin + size, margin + size], outline="black")
    draw.text((margin, margin + size + 6), "confidence 0 .. 1", fill="black")
    draw.text((4, 4), "share read right", fill="black")
    return image

"""How well a reader reads: per-character, whole-captcha, per-position and presence accuracy, and confusion."""

from __future__ import annotations

from collections import Counter

import numpy as np


def accuracy_figures(predicted: list[str], truth: list[str]) -> dict:
    """Figures for predictions against true labels (same order).

    char_accuracy: characters read right in their position, over all true characters (a missing character
    counts as wrong; an extra one only costs captcha_accuracy). presence_accuracy: captchas whose multiset of
    characters is right, wherever they stand (what a position-free reader would score). length_accuracy: captchas
    read with as many characters as they hold (what a variable-length site asks of a CTC reader first).
    """
    if not truth:
        return {"count": 0}
    length = max(len(label) for label in truth)
    per_position = []
    for position in range(length):
        pairs = [(guess, label) for guess, label in zip(predicted, truth) if position < len(label)]
        right = sum(position < len(guess) and guess[position] == label[position] for guess, label in pairs)
        per_position.append(round(right / len(pairs), 5))
    characters = sum(len(label) for label in truth)
    right = sum(a == b for guess, label in zip(predicted, truth) for a, b in zip(guess, label))
    return {
        "count": len(truth),
        "char_accuracy": round(right / characters, 5),
        "captcha_accuracy": round(float(np.mean([g == t for g, t in zip(predicted, truth)])), 5),
        "per_position_accuracy": per_position,
        "presence_accuracy": round(float(np.mean([Counter(g) == Counter(t) for g, t in zip(predicted, truth)])), 5),
        "length_accuracy": round(float(np.mean([len(g) == len(t) for g, t in zip(predicted, truth)])), 5),
    }


def confusion_pairs(predicted: list[str], truth: list[str]) -> list[tuple[str, str]]:
    """(actual, predicted) per position, for DVC's confusion-matrix template; a missing character is ''."""
    pairs = []
    for guess, label in zip(predicted, truth):
        for position, actual in enumerate(label):
            pairs.append((actual, guess[position] if position < len(guess) else ""))
    return pairs


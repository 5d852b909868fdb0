"""A reader's class scores -> text and the probability of that text, in NumPy alone: a reader run by onnxruntime
reads without importing torch, and every reader, torch's included, decodes the same way."""

from __future__ import annotations

import numpy as np

BLANK = 0  # the CTC head's class 0; character c of the charset is class c + 1


def log_softmax(scores: np.ndarray) -> np.ndarray:
    """Log probabilities over the last axis, in float32 as the readers' scores are."""
    shifted = scores.astype(np.float32) - scores.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def decode_scores(scores: np.ndarray, charset: str, head: str) -> tuple[list[str], list[float]]:
    """Each reading of N×positions×classes (CTC: N×columns×(classes + 1)) scores, and its confidence: the
    reader's probability of that whole reading. positions: the product of each position's top probability; CTC:
    the probability of the greedy reading summed over every alignment that gives it (the CTC forward pass), not of
    the one best path, whose blank columns would count against a reading that no other alignment disputes."""
    log_probabilities = log_softmax(np.asarray(scores))
    classes = log_probabilities.argmax(axis=-1)
    if head == "positions":
        best = np.take_along_axis(log_probabilities, classes[..., None], axis=-1)[..., 0]
        return ["".join(charset[c] for c in row) for row in classes.tolist()], np.exp(best.sum(axis=-1)).tolist()
    codes = [greedy_code(row) for row in classes.tolist()]
    likelihood = np.exp(ctc_log_likelihood(log_probabilities, codes))
    return ["".join(charset[c - 1] for c in code) for code in codes], np.minimum(likelihood, 1.0).tolist()


def greedy_code(columns: list[int]) -> list[int]:
    """Greedy CTC: each column's best class, repeats merged, blanks dropped."""
    return [c for position, c in enumerate(columns) if c != BLANK and (position == 0 or c != columns[position - 1])]


def ctc_log_likelihood(log_probabilities: np.ndarray, codes: list[list[int]]) -> np.ndarray:
    """log P(code | scores) for each row of N×columns×classes log probabilities, summed over every alignment of
    its code (classes, no blank) to the columns: the CTC forward pass over the states blank, c1, blank, c2, ...,
    blank, in float64. A row's code must fit its columns (a greedy reading always does)."""
    count, columns, _ = log_probabilities.shape
    states = 2 * max(map(len, codes), default=0) + 1
    extended = np.full((count, states), BLANK)
    for row, code in enumerate(codes):
        extended[row, 1:2 * len(code):2] = code
    # a character's state may also be entered from two states back, skipping the blank between two characters,
    # unless those two characters are the same
    skips = np.zeros((count, states), bool)
    skips[:, 2:] = (extended[:, 2:] != BLANK) & (extended[:, 2:] != extended[:, :-2])
    emitted = np.take_along_axis(log_probabilities, np.repeat(extended[:, None, :], columns, axis=1), axis=2)
    alpha = np.full((count, states), -np.inf)
    alpha[:, :2] = emitted[:, 0, :2]
    for column in range(1, columns):
        previous = alpha
        alpha = previous.copy()
        alpha[:, 1:] = np.logaddexp(alpha[:, 1:], previous[:, :-1])
        alpha[:, 2:] = np.where(skips[:, 2:], np.logaddexp(alpha[:, 2:], previous[:, :-2]), alpha[:, 2:])
        alpha += emitted[:, column]
    rows, ends = np.arange(count), np.asarray([2 * len(code) for code in codes], dtype=np.int64)
    # a reading ends on its last character or on the blank after it; an empty reading only on the one blank
    before_end = np.where(ends > 0, alpha[rows, np.maximum(ends - 1, 0)], -np.inf)
    return np.logaddexp(alpha[rows, ends], before_end)

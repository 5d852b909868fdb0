"""decoding: class scores -> readings and their probabilities in NumPy, as torch's softmax and CTC loss give them."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from simcaptcha.decoding import ctc_log_likelihood, decode_scores, greedy_code, log_softmax

CHARSET = "0123456789abcdefghijklmnopqrstuvwxyz"


def torch_ctc_log_likelihood(log_probabilities: np.ndarray, codes: list[list[int]]) -> np.ndarray:
    """torch's CTC loss, negated: the reference the NumPy forward pass must match."""
    targets = torch.zeros(len(codes), max(1, max(map(len, codes))), dtype=torch.long)
    for row, code in enumerate(codes):
        targets[row, :len(code)] = torch.tensor(code, dtype=torch.long)
    log_probs = torch.from_numpy(log_probabilities).transpose(0, 1)
    columns = torch.full((len(codes),), log_probabilities.shape[1], dtype=torch.long)
    lengths = torch.tensor([len(code) for code in codes], dtype=torch.long)
    return (-F.ctc_loss(log_probs, targets, columns, lengths, blank=0, reduction="none")).double().numpy()


@pytest.mark.parametrize("classes, columns", [(4, 12), (37, 24)])
@pytest.mark.parametrize("sharpness", [1.0, 5.0, 20.0])
def test_ctc_likelihood_is_torchs_for_greedy_and_other_codes(classes, columns, sharpness):
    rng = np.random.default_rng(int(sharpness) + classes)
    log_probabilities = log_softmax((rng.normal(size=(200, columns, classes)) * sharpness).astype(np.float32))
    greedy = [greedy_code(row) for row in log_probabilities.argmax(-1).tolist()]
    # codes of every length the columns allow, repeats ("aa" needs a blank between) and empty ones included
    others = [list(rng.integers(1, classes, size=length)) for length in rng.integers(0, columns // 2, size=200)]
    others[:3] = [[], [1, 1], [2, 2, 2]]
    for codes in (greedy, others):
        assert np.allclose(ctc_log_likelihood(log_probabilities, codes),
                           torch_ctc_log_likelihood(log_probabilities, codes), atol=1e-4, rtol=1e-5)


def test_greedy_code_merges_repeats_and_drops_blanks():
    assert greedy_code([0, 3, 3, 0, 3, 5, 5, 0]) == [3, 3, 5]
    assert greedy_code([0, 0, 0]) == [] and greedy_code([]) == []


def test_positions_confidence_is_the_product_of_each_positions_top_probability():
    scores = np.log(np.array([[[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]], np.float32)) + 3.0  # any shift: softmax
    texts, confidences = decode_scores(scores, "abc", "positions")
    assert texts == ["ac"] and confidences == pytest.approx([0.7 * 0.8], rel=1e-5)


def test_ctc_confidence_sums_every_alignment_of_the_reading():
    # two columns over blank and "a": "a" is read (greedy: a, blank or a, a) by a-a, a-blank and blank-a
    probabilities = np.array([[[0.4, 0.6], [0.3, 0.7]]], np.float32)
    texts, confidences = decode_scores(np.log(probabilities), "a", "ctc")
    assert texts == ["a"] and confidences == pytest.approx([0.6 * 0.7 + 0.6 * 0.3 + 0.4 * 0.7], rel=1e-5)


def test_no_scores_no_readings():
    for head in ("positions", "ctc"):
        assert decode_scores(np.zeros((0, 5, 37), np.float32), CHARSET, head) == ([], [])

"""Self-training on the unlabelled pool: pseudo-labelling in rounds, class balance, and the noisy student.

No real label is used: the labels are the reader's own readings of the pool.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .config import AugmentConfig, ClassifierConfig, SelfTrainConfig
from .modelfile import ReaderSpec
from .models import Reader
from .reader_training import train_reader
from .reading import LabelCoder, read_images, read_logits


def balancing_offsets(logits: torch.Tensor, blank: bool, iterations: int = 100) -> torch.Tensor:
    """Per-class log-score offsets that raise the characters the pool's readings under-read.

    A reader trained on fonts favours the characters whose fonts look most like the site's and under-reads the
    others (HackMIT: 'e' read as 'o', '4' as 'w'). Each character's target is its own soft share of the
    readings, raised to an equal share where it is below, the whole renormalised; added to the scores, the
    offsets move the least sure readings of the over-read characters to their runner-up, the under-read one
    (class-balanced self-training, Zou et al. 2018). Over-read characters give up only in proportion to that:
    a site may draw some characters more often (Kaggle's 'n', 1.9 times), and holding every character to an
    equal share relabelled that surplus as its runner-up. ``blank``: class 0 is CTC's blank, left alone.
    """
    first = 1 if blank else 0
    offsets = torch.zeros(logits.shape[-1])
    shares = logits.softmax(-1)[..., first:].sum((0, 1))
    target = torch.clamp(shares / shares.sum(), min=1.0 / (logits.shape[-1] - first))
    target = (target / target.sum()).log()
    for _ in range(iterations):  # damped fixed point on the soft class shares
        mass = (logits + offsets).softmax(-1)[..., first:].sum((0, 1))
        offsets[first:] += 0.5 * (target - (mass / mass.sum()).log())
    return offsets


def self_train(model: Reader, coder: LabelCoder, synthetic: np.ndarray, synthetic_labels: list[str],
               pool: np.ndarray, config: SelfTrainConfig, reader_config: ClassifierConfig,
               augment: AugmentConfig | None, checkpoints: Path, device: torch.device,
               mask: np.ndarray | None = None, lengths: tuple[int, int] | None = None,
               after_round: Callable[[Reader], dict] | None = None) -> list[dict]:
    """Teach ``model`` the real images without a single label: pseudo-labelling in rounds (noisy student).

    Each round reads the unlabelled pool with the current model, keeps its most confident share (growing from
    keep[0] to keep[1]) with the model's readings as labels, and trains on those beside the synthetic set, the
    pseudo-labelled ones repeated where they are less than ``config.real_share`` of the round (``round_rows``;
    augmented on the fly, so the student sees harder images than the teacher did). Synthetic images keep the
    labels anchored; the held-out synthetic share is still the only validation. The first
    ``config.balance_rounds`` rounds' readings have their under-read characters raised toward an equal share
    (``balancing_offsets``): round 1's for the font-trained start reader's bias; later ones where a reader drifts,
    learning its own confusions until one character is read for another (HackMIT's ``l`` as ``i``). Each log row
    says which character the round's reader reads least and at what share of an equal one, its own readings
    before any balance: no label is needed to see such a drift. A killed run resumes: every
    round's last checkpoint stays in ``checkpoints`` and restores that round's weights. ``lengths``: the site's
    [min, max] characters per captcha (default 1 to the reader's); a CTC reading of another length is no label.
    ``after_round``: figures added to each round's log row, read from the round's reader (the stage's labelled
    figures: how the reader moves, never fed back).
    """
    model.to(device, memory_format=torch.channels_last)
    log: list[dict] = []
    previous: dict[int, str] = {}
    for round_index in range(config.rounds):
        low, high = config.keep
        share = low + (high - low) * round_index / max(config.rounds - 1, 1)
        logits = read_logits(model, pool, device=device, precision=reader_config.precision)
        least_read, least_share = least_read_character(coder.decode(logits)[0], coder.charset)
        offsets = balancing_offsets(logits, coder.head == "ctc") if round_index < config.balance_rounds else None
        texts, confidences = coder.decode(logits if offsets is None else logits + offsets)
        valid = of_site_length(texts, lengths, coder.length)
        order = [row for row in np.argsort(-np.asarray(confidences), kind="stable") if valid[row]]
        kept = np.sort(np.asarray(order[:int(round(share * len(pool)))], dtype=np.int64))
        changed = [previous[row] != texts[row] for row in kept if row in previous]
        synthetic_rows, real_rows = round_rows(len(synthetic), kept, config.real_share,
                                               np.random.default_rng(reader_config.seed + round_index),
                                               config.synthetic_share, config.max_repeats)
        images = np.concatenate([synthetic[synthetic_rows], pool[real_rows]])
        labels = [synthetic_labels[row] for row in synthetic_rows] + [texts[row] for row in real_rows]
        round_config = replace(reader_config, epochs=config.epochs, learning_rate=config.learning_rate,
                               seed=reader_config.seed + round_index + 1)
        history = train_reader(model, coder, images, labels, round_config, augment,
                               checkpoints / f"round-{round_index + 1}.pt", device, len(synthetic_rows), mask)
        log.append({"round": round_index + 1, "pseudo_labels": len(kept), "kept_share": round(share, 4),
                    "lowest_kept_confidence": round(min((confidences[row] for row in kept), default=0.0), 5),
                    "relabelled_share": round(float(np.mean(changed)), 5) if changed else 0.0,
                    "class_offset_range": 0.0 if offsets is None else round(float(np.ptp(offsets.numpy())), 4),
                    "least_read_char": least_read, "least_read_share": least_share,
                    **{key: value for key, value in history[-1].items() if key != "epoch"},
                    **(after_round(model) if after_round else {})})
        previous = {row: texts[row] for row in kept}
    return log


def least_read_character(texts: list[str], charset: str) -> tuple[str, float]:
    """The character ``texts`` hold least often and its count over an equal share's (1.0: as often as any)."""
    counts = Counter("".join(texts))
    total = sum(counts[char] for char in charset)
    char = min(charset, key=lambda c: counts[c])  # the first of equals: charset order
    return char, round(counts[char] * len(charset) / max(total, 1), 4)


def of_site_length(texts: list[str], lengths: tuple[int, int] | None, longest: int) -> np.ndarray:
    """Which readings are as long as the site's captchas ([min, max]; None: 1 to ``longest``, the reader's): a
    CTC reader may read too few or too many characters, and such a reading is no label."""
    shortest, longest = lengths or (1, longest)
    return np.asarray([shortest <= len(text) <= longest for text in texts], dtype=bool)


def round_rows(synthetic_count: int, kept: np.ndarray, real_share: float, rng: np.random.Generator,
               synthetic_share: float = 1.0, max_repeats: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One self-training round's images: ``synthetic_share`` of the synthetic set (drawn at random) and the kept
    pool images, at least ``real_share`` of them real, each pool image at most ``max_repeats`` times.

    A small pool (Kaggle's 1,040 beside 20,000 synthetic) would otherwise be a few percent of what the reader
    sees and barely move it. Its images are then repeated (each repeat augmented differently) in place of
    randomly dropped synthetic ones, so the round keeps its size and time; but a reader that sees its own
    readings of the same few hundred images dozens of times learns their errors too. Returns sorted synthetic
    rows and pool rows (repeats included).
    """
    drawn = int(round(synthetic_share * synthetic_count))
    if not len(kept):
        return np.sort(rng.choice(synthetic_count, drawn, replace=False)).astype(np.int64), np.empty(0, np.int64)
    size = drawn + len(kept)
    real_count = max(len(kept), int(round(real_share * size)))  # real_share <= 1: never more than the round
    if max_repeats is not None:
        real_count = min(real_count, max_repeats * len(kept))
    repeats, remainder = divmod(real_count, len(kept))
    real_rows = np.sort(np.concatenate([np.tile(kept, repeats), rng.choice(kept, remainder, replace=False)]))
    synthetic_rows = np.sort(rng.choice(synthetic_count, size - real_count, replace=False))
    return synthetic_rows, real_rows.astype(np.int64)


def train_student(teacher: Reader, spec: ReaderSpec, synthetic: np.ndarray, synthetic_labels: list[str],
                  pool: np.ndarray, config: SelfTrainConfig, reader_config: ClassifierConfig,
                  augment: AugmentConfig | None, checkpoint: Path, device: torch.device,
                  mask: np.ndarray | None = None,
                  lengths: tuple[int, int] | None = None) -> tuple[Reader, ReaderSpec, list[dict]]:
    """Noisy student: a fresh reader ``selftrain.student_channels`` wide learns the teacher's readings of the pool.

    The self-trained reader has trained on its own readings round after round and keeps their errors; a new
    reader with more capacity, trained from scratch on those readings beside a ``student_synthetic_share`` of the
    synthetic set, under augmentation and dropout, generalises past some of them (Xie et al. 2020). The mix is
    drawn as a self-training round draws it (``round_rows``). Returns the student, its spec and its log, one row
    per epoch.
    """
    coder = spec.coder()
    texts, _ = read_images(teacher, coder, pool, device=device)
    kept = np.flatnonzero(of_site_length(texts, lengths, coder.length))
    synthetic_rows, real_rows = round_rows(len(synthetic), kept, config.real_share,
                                           np.random.default_rng(reader_config.seed + config.rounds + 1),
                                           config.student_synthetic_share, config.max_repeats)
    images = np.concatenate([synthetic[synthetic_rows], pool[real_rows]])
    labels = [synthetic_labels[row] for row in synthetic_rows] + [texts[row] for row in real_rows]
    student_config = replace(reader_config, channels=list(config.student_channels), epochs=config.student_epochs)
    student_spec = replace(spec, channels=tuple(config.student_channels))
    torch.manual_seed(reader_config.seed)  # the student's initial weights come from the seed
    student = student_spec.build(reader_config.dropout)
    log = train_reader(student, coder, images, labels, student_config, augment, checkpoint, device,
                       len(synthetic_rows), mask)
    return student, student_spec, log

"""Which of the unlabelled pool's captchas a stage may read: the evaluation captchas kept out by content, and
the held-out share that no reader trains on, read only by the label-free accuracy estimate."""

from __future__ import annotations

import hashlib

import numpy as np

from .config import SelfTrainConfig
from .errors import SimcaptchaError
from .store import ImageSet


def pool_rows(pool: ImageSet, labelled: ImageSet, config: SelfTrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Which pool captchas self-training reads, and which it never reads: the held-out ones the label-free
    accuracy estimate reads (``selftrain.holdout``, at most a tenth of what is left).

    With ``exclude_labelled`` no evaluation captcha is read, so their figures stay held out. They are told by
    content, not by name: a pool and an evaluation folder that number their files alike are different captchas.
    The held-out captchas are chosen by content too, those of the highest pixel digests: a pool in name order is
    often in label order (files named by their text, datasets stored class by class), and its last captchas would
    be those of a few labels. Returns two boolean masks over the pool.
    """
    digests = image_digests(pool.images)
    readable = ~np.isin(digests, image_digests(labelled.images)) if config.exclude_labelled \
        else np.ones(len(pool), dtype=bool)
    if not readable.any():
        raise SimcaptchaError("params: selftrain.exclude_labelled leaves no unlabelled captcha (the pool is the "
                              "labelled set); set it to false to read the evaluation images unlabelled")
    rows = np.flatnonzero(readable)
    by_digest = rows[np.argsort(digests[rows], kind="stable")]
    held_out = np.zeros(len(pool), dtype=bool)
    held_out[by_digest[len(rows) - min(config.holdout, len(rows) // 10):]] = True
    return readable & ~held_out, held_out


def image_digests(images: np.ndarray) -> np.ndarray:
    """A digest of each image's pixels: equal images, whatever their names, have equal digests."""
    return np.asarray([hashlib.blake2b(image.tobytes(), digest_size=16).digest() for image in images], dtype=object)

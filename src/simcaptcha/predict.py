"""``simcaptcha predict``: read new captchas with a trained reader file, batch by batch.

Everything about preprocessing comes from the model file (image size, binarize params, the site's background
estimate and text polarity), so a reader trained on one target reads that target's captchas with nothing else.
Inputs are whatever ``fetch`` reads (challenge JSON, zip/tar archives, folders, single images; paths or URLs);
images are decoded, binarized and read one batch at a time, the next batch being prepared while the reader
reads the current one, so memory stays bounded by the encoded files plus one or two batches.
"""

from __future__ import annotations

import copy
import csv
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TextIO

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .config import FetchConfig, SourceConfig
from .errors import EXIT_ERROR, SimcaptchaError
from .fetch import fetch_set
from .imaging import binarize_images, decode_set
from .modelfile import ReaderSpec, load_reader
from .models import Reader
from .store import atomic_path
from .machine import available_cores
from .reading import pick_device, read_chunk, to_batch

CSV_HEADER = ("name", "prediction", "confidence")


# ---------------------------------------------------------------- preprocessing
def preprocess(blobs: Sequence[bytes], names: Sequence[str], spec: ReaderSpec,
               background: np.ndarray | None) -> np.ndarray:
    """Encoded images -> the reader's input, uint8 N×H×W with text 255: decode, fit, binarize as the file says."""
    rgb = decode_set(blobs, names, spec.height, spec.width)
    return binarize_images(rgb, background, spec.binarize, spec.polarity)


# ---------------------------------------------------------------- the reader
def inference_reader(model: Reader) -> Reader:
    """A copy of ``model`` for reading only: batch norms folded into the convolutions before them, eval mode.

    Same outputs up to float rounding, and on the CPU about twice as fast (an eval batch norm in channels_last
    is a separate pass over the largest activations).
    """
    model = copy.deepcopy(model).eval()
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module._modules.items())
        for (conv_key, conv), (norm_key, norm) in zip(children, children[1:]):
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d) and norm.track_running_stats:
                module._modules[conv_key] = fuse_conv_bn_eval(conv, norm)
                module._modules[norm_key] = nn.Identity()
    return model


class Predictor:
    """A reader file, loaded once: preprocessing and reading for batches of encoded images."""

    def __init__(self, model_path: str | Path):
        model, self.spec, self.background = load_reader(model_path)
        fits = ((1, self.spec.width), (self.spec.height, 1), (self.spec.height, self.spec.width))
        if self.background is not None and (self.background.ndim != 3 or self.background.shape[2] != 3
                                            or self.background.shape[:2] not in fits):
            raise SimcaptchaError(f"{model_path}: its background has shape {tuple(self.background.shape)}, "
                                  f"which does not fit {self.spec.height}x{self.spec.width} RGB images")
        self.device = pick_device()
        self.model = inference_reader(model).to(self.device, memory_format=torch.channels_last)
        self.coder = self.spec.coder()

    def preprocess(self, blobs: Sequence[bytes], names: Sequence[str]) -> np.ndarray:
        return preprocess(blobs, names, self.spec, self.background)

    @torch.inference_mode()
    def read(self, images: np.ndarray) -> tuple[list[str], list[float]]:
        """Text and confidence for the reader's uint8 N×H×W input."""
        chunk = read_chunk(self.device, max(len(images), 1))
        texts: list[str] = []
        confidences: list[float] = []
        for start in range(0, len(images), chunk):
            batch_texts, batch_confidences = self.coder.decode(self.model(to_batch(images[start:start + chunk],
                                                                                   self.device)))
            texts += batch_texts
            confidences += batch_confidences
        return texts, confidences


def read_inputs(inputs: Sequence[str]) -> tuple[list[bytes], list[str]]:
    """The encoded images of every input, in input order, with their names; every image is checked to decode."""
    with tempfile.TemporaryDirectory(prefix="simcaptcha-predict-") as cache_dir:
        try:
            blobs, manifest = fetch_set(SourceConfig(sources=list(inputs), labels="none"), FetchConfig(), "predict",
                                        Path(cache_dir))
        except SimcaptchaError as error:  # fetch names the set it was fetching; here that is the inputs
            raise SimcaptchaError(f"input: {str(error).removeprefix('fetch.predict: ')}") from None
    return blobs, manifest["name"].tolist()


def predict(model_path: str | Path, inputs: Sequence[str], batch_size: int = 512) -> Iterator[tuple[str, str, float]]:
    """(name, prediction, confidence) for every image of ``inputs``, in input order.

    The model file and the inputs are read (and every image checked) before this returns, so errors come
    before any result; the images are decoded, binarized and read batch by batch as the results are consumed.
    On the CPU it sets torch's thread count to the cores available less one.
    """
    if batch_size < 1:
        raise SimcaptchaError(f"--batch-size must be at least 1, got {batch_size}")
    predictor = Predictor(model_path)
    if predictor.device.type == "cpu":
        # One core is left to the thread that decodes and binarizes the next batch. On a busy machine this
        # matters more: two torch threads on two shared cores wait on each other at every layer (measured
        # 2.4x slower than one thread while another process kept one of the two cores busy).
        torch.set_num_threads(max(1, available_cores() - 1))
    blobs, names = read_inputs(inputs)
    return _predict_batches(predictor, blobs, names, batch_size)


def _predict_batches(predictor: Predictor, blobs: list[bytes], names: list[str],
                     batch_size: int) -> Iterator[tuple[str, str, float]]:
    """While the reader reads one batch, a worker thread decodes and binarizes the next (Pillow and NumPy
    release the GIL for most of it)."""
    starts = range(0, len(blobs), batch_size)
    with ThreadPoolExecutor(max_workers=1) as pool:
        def prepare(start: int):
            return pool.submit(predictor.preprocess, blobs[start:start + batch_size], names[start:start + batch_size])

        pending = prepare(starts[0]) if starts else None
        for number, start in enumerate(starts):
            images = pending.result()
            pending = prepare(starts[number + 1]) if number + 1 < len(starts) else None
            texts, confidences = predictor.read(images)
            yield from zip(names[start:start + batch_size], texts, confidences)


def write_predictions(model_path: str | Path, inputs: Sequence[str], batch_size: int,
                      output: str | None = None) -> None:
    """``simcaptcha predict``: the CSV of ``predict`` into the file ``output`` or on stdout (``None`` or ``-``).

    The model and the inputs are checked before anything is written. A full disk is a one-line error.
    """
    rows = predict(model_path, inputs, batch_size)
    if output in (None, "-"):
        _write_stdout(rows)
    else:
        _write_file(rows, Path(output))


def _write_stdout(rows: Iterable[tuple[str, str, float]]) -> None:
    """A reader that stops early (``| head``) is fine: no error message, as for any Unix filter."""
    try:
        write_csv(rows, sys.stdout)
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        sys.exit(EXIT_ERROR)
    except OSError as error:
        _silence_stdout()
        raise SimcaptchaError(f"stdout: {error.strerror or error}") from None


def _silence_stdout() -> None:
    """Point stdout at /dev/null: Python would otherwise fail again flushing what is left of it at exit."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _write_file(rows: Iterable[tuple[str, str, float]], path: Path) -> None:
    """A file is written beside and renamed into place, so a failed run leaves no partial CSV; a device or a
    pipe (``/dev/stdout``) cannot be replaced and is written as it is."""
    try:
        if path.exists() and not path.is_file():
            with open(path, "w", encoding="utf-8", newline="") as stream:
                write_csv(rows, stream)
        else:
            with atomic_path(path.resolve()) as tmp, open(tmp, "w", encoding="utf-8", newline="") as stream:
                write_csv(rows, stream)
    except OSError as error:
        raise SimcaptchaError(f"{path}: {error.strerror or error}") from None


def write_csv(rows: Iterable[tuple[str, str, float]], stream: TextIO) -> int:
    """Write ``name,prediction,confidence`` CSV (confidence to 4 decimals), header first; returns the row count."""
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    count = 0
    for name, text, confidence in rows:
        writer.writerow((name, text, f"{confidence:.4f}"))
        count += 1
    return count

"""``simcaptcha predict``: read new captchas with a trained reader file, batch by batch.

Everything about preprocessing comes from the model file (image size, binarize params, the site's background
estimate and text polarity), so a reader trained on one target reads that target's captchas with nothing else.
The model file is a safetensors reader (read by torch) or its ONNX export (``.onnx``, read by onnxruntime, with
no torch imported: the first result comes a second or two sooner).
Inputs are whatever ``fetch`` reads (challenge JSON, zip/tar archives, folders, single images; paths or URLs);
images are decoded, binarized and read one batch at a time, the next batch being prepared while the reader
reads the current one, so memory stays bounded by the encoded files plus one or two batches.
"""

from __future__ import annotations

import csv
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TextIO

import numpy as np

from . import bundled
from .config import FetchConfig, SourceConfig
from .decoding import decode_scores
from .errors import EXIT_ERROR, SimcaptchaError
from .fetch import fetch_set, source_images
from .imaging import binarize_images, decode_image, decode_set, fit_to_size
from .machine import reading_threads
from .onnxfile import ONNX_SUFFIX, load_onnx
from .readerspec import ReaderSpec
from .store import atomic_path

CSV_HEADER = ("name", "prediction", "confidence")
ERROR_COLUMN = "error"  # with --skip-bad: why a row has no reading, empty where it has one
ABSTAINED_COLUMN = "abstained"  # with --min-confidence: "yes" where the reading was left empty as too unsure


# ---------------------------------------------------------------- preprocessing
def preprocess(blobs: Sequence[bytes], names: Sequence[str], spec: ReaderSpec,
               background: np.ndarray | None) -> np.ndarray:
    """Encoded images -> the reader's input, uint8 N×H×W with text 255: decode, fit, binarize as the file says."""
    rgb = decode_set(blobs, names, spec.height, spec.width)
    return binarize_images(rgb, background, spec.binarize, spec.polarity)


def preprocess_each(blobs: Sequence[bytes], names: Sequence[str], reasons: Sequence[str], spec: ReaderSpec,
                    background: np.ndarray | None) -> tuple[np.ndarray, list[str]]:
    """``preprocess`` for --skip-bad: an image that does not decode is left out, not fatal. Returns the images that
    decode, and why each image was left out ("" where it was not); ``reasons`` are those already known."""
    reasons = list(reasons)
    rgb = []
    for index, (blob, name) in enumerate(zip(blobs, names)):
        if not reasons[index]:
            try:
                rgb.append(fit_to_size(decode_image(blob, f"image {name!r}"), spec.height, spec.width))
            except SimcaptchaError as error:
                reasons[index] = _reason(error)
    fitted = np.stack(rgb) if rgb else np.zeros((0, spec.height, spec.width, 3), np.uint8)
    return binarize_images(fitted, background, spec.binarize, spec.polarity), reasons


# ---------------------------------------------------------------- the reader
class Predictor:
    """A reader file, loaded once: preprocessing and reading for batches of encoded images. A ``.onnx`` file (made
    by ``simcaptcha export``) is read by onnxruntime on the CPU, any other as a safetensors reader by torch (on the
    GPU when there is one; on the CPU it sets torch's thread count to ``reading_threads()``)."""

    def __init__(self, model_path: str | Path):
        model_path = bundled.model_path(model_path)
        if model_path.suffix.lower() == ONNX_SUFFIX:
            self.reader, self.spec, self.background = load_onnx(model_path, reading_threads())
        else:
            from .inference import load_torch_reader  # torch, for this kind of file only
            self.reader, self.spec, self.background = load_torch_reader(model_path)
        fits = ((1, self.spec.width), (self.spec.height, 1), (self.spec.height, self.spec.width))
        if self.background is not None and (self.background.ndim != 3 or self.background.shape[2] != 3
                                            or self.background.shape[:2] not in fits):
            raise SimcaptchaError(f"{model_path}: its background has shape {tuple(self.background.shape)}, "
                                  f"which does not fit {self.spec.height}x{self.spec.width} RGB images")

    def preprocess(self, blobs: Sequence[bytes], names: Sequence[str]) -> np.ndarray:
        return preprocess(blobs, names, self.spec, self.background)

    def preprocess_each(self, blobs: Sequence[bytes], names: Sequence[str],
                        reasons: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        return preprocess_each(blobs, names, reasons, self.spec, self.background)

    def read(self, images: np.ndarray) -> tuple[list[str], list[float]]:
        """Text and confidence for the reader's uint8 N×H×W input."""
        if not len(images):
            return [], []
        return decode_scores(self.reader(images), self.spec.charset, self.spec.head)


def read_inputs(inputs: Sequence[str]) -> tuple[list[bytes], list[str]]:
    """The encoded images of every input, in input order, with their names; every image is checked to decode."""
    with tempfile.TemporaryDirectory(prefix="simcaptcha-predict-") as cache_dir:
        try:
            blobs, manifest = fetch_set(SourceConfig(sources=list(inputs), labels="none"), FetchConfig(), "predict",
                                        Path(cache_dir))
        except SimcaptchaError as error:  # fetch names the set it was fetching; here that is the inputs
            raise SimcaptchaError(f"input: {str(error).removeprefix('fetch.predict: ')}") from None
    return blobs, manifest["name"].tolist()


def read_each_input(inputs: Sequence[str]) -> tuple[list[bytes], list[str], list[str]]:
    """``read_inputs`` for --skip-bad: also why each image cannot be read ("" where it can, as far as known here).

    An input that cannot be read at all is one entry named by the input; a name met before, or one that is not
    Unicode text, is refused for its image alone. Images are not checked to decode here, as fetch_set would (and
    stop at the first that does not): ``preprocess_each`` decodes them one by one, batch by batch.
    """
    blobs, names, reasons = [], [], []
    seen: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="simcaptcha-predict-") as cache_dir:
        for spec in inputs:
            try:
                images = source_images(spec, FetchConfig(), Path(cache_dir))
            except SimcaptchaError as error:
                blobs.append(b"")
                names.append(_printable(spec))
                reasons.append(_reason(error))
                continue
            for image in images:
                name = _printable(image.name)
                blobs.append(image.data)
                names.append(name)
                if name != image.name:
                    reasons.append(_reason(f"{image.where}: image name is not valid Unicode text"))
                elif name in seen:
                    reasons.append(_reason(f"{image.where}: image name {name!r} appears in an earlier input or entry"))
                else:
                    reasons.append("")
                seen.add(name)
    return blobs, names, reasons


def _printable(text: str) -> str:
    """``text`` as it can be written to a UTF-8 CSV: a lone surrogate (a file name in another encoding, a JSON
    "\\ud800") as its escape."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _reason(error: object) -> str:
    """An error as the one line of an error column (a name from the data may hold line breaks)."""
    return _printable(" ".join(str(error).split()))


def predict(model_path: str | Path, inputs: Sequence[str], batch_size: int = 512,
            skip_bad: bool = False) -> Iterator[tuple]:
    """(name, prediction, confidence) for every image of ``inputs``, in input order.

    The model file and the inputs are read (and, without ``skip_bad``, every image checked) before this returns,
    so errors come before any result; the images are decoded, binarized and read batch by batch as the results are
    consumed. With ``skip_bad`` an unreadable input or image does not stop the run: rows are (name, prediction, confidence,
    error), and such an input or image has ("", 0.0, the one-line reason).
    """
    if batch_size < 1:
        raise SimcaptchaError(f"--batch-size must be at least 1, got {batch_size}")
    predictor = Predictor(model_path)
    if skip_bad:
        return _predict_batches(predictor, *read_each_input(inputs), batch_size)
    return _predict_batches(predictor, *read_inputs(inputs), None, batch_size)


def _predict_batches(predictor: Predictor, blobs: list[bytes], names: list[str], reasons: list[str] | None,
                     batch_size: int) -> Iterator[tuple]:
    """While the reader reads one batch, a worker thread decodes and binarizes the next (Pillow and NumPy
    release the GIL for most of it). ``reasons``: as ``read_each_input`` gives them, for --skip-bad rows."""
    starts = range(0, len(blobs), batch_size)
    with ThreadPoolExecutor(max_workers=1) as pool:
        def prepare(start: int):
            batch = slice(start, start + batch_size)
            if reasons is None:
                return pool.submit(predictor.preprocess, blobs[batch], names[batch])
            return pool.submit(predictor.preprocess_each, blobs[batch], names[batch], reasons[batch])

        pending = prepare(starts[0]) if starts else None
        for number, start in enumerate(starts):
            prepared = pending.result()
            pending = prepare(starts[number + 1]) if number + 1 < len(starts) else None
            batch_names = names[start:start + batch_size]
            if reasons is None:
                yield from zip(batch_names, *predictor.read(prepared))
            else:
                images, batch_reasons = prepared
                yield from _rows_with_errors(batch_names, *predictor.read(images), batch_reasons)


def _rows_with_errors(names: list[str], texts: list[str], confidences: list[float],
                      reasons: list[str]) -> Iterator[tuple[str, str, float, str]]:
    """--skip-bad rows: the readings in order, and an empty one of confidence 0 with the reason where one is."""
    readings = zip(texts, confidences)
    for name, reason in zip(names, reasons):
        yield (name, "", 0.0, reason) if reason else (name, *next(readings), "")


def write_predictions(model_path: str | Path, inputs: Sequence[str], batch_size: int,
                      output: str | None = None, skip_bad: bool = False,
                      min_confidence: float | None = None) -> None:
    """``simcaptcha predict``: the CSV of ``predict`` into the file ``output`` or on stdout (``None`` or ``-``).

    The model and the inputs are checked before anything is written. A full disk is a one-line error. With
    ``skip_bad`` the whole CSV is written, then rows without a reading are one error, as for any failed run.
    With ``min_confidence`` a reading less likely than that to be right is left empty, its row kept and marked
    in an abstained column (the confidence is a calibrated probability: see docs/method.md).
    """
    if min_confidence is not None and not 0.0 <= min_confidence <= 1.0:
        raise SimcaptchaError(f"--min-confidence must be a probability from 0 to 1, got {min_confidence}")
    rows = predict(model_path, inputs, batch_size, skip_bad)
    failed: list[str] = []
    if skip_bad:
        rows = _noting_failures(rows, failed)
    columns = (ERROR_COLUMN,) * skip_bad
    if min_confidence is not None:
        rows, columns = _abstaining(rows, min_confidence, skip_bad), columns + (ABSTAINED_COLUMN,)
    if output in (None, "-"):
        count = _write_stdout(rows, columns)
    else:
        count = _write_file(rows, Path(output), columns)
    if failed:
        raise SimcaptchaError(f"{len(failed)} of {count} rows have no reading, the first {failed[0]!r} "
                              f"(the error column says why)")


def _abstaining(rows: Iterable[tuple], min_confidence: float, skip_bad: bool) -> Iterator[tuple]:
    """Rows with the readings below ``min_confidence`` emptied and an abstained column: "yes" for those, "" for
    the rest and for rows that have no reading anyway (an --skip-bad error)."""
    for name, text, confidence, *error in rows:
        unsure = confidence < min_confidence and not (skip_bad and error[0])
        yield name, "" if unsure else text, confidence, *error, "yes" if unsure else ""


def _noting_failures(rows: Iterable[tuple], failed: list[str]) -> Iterator[tuple]:
    """The rows, passed on as they come, the name of each with an error added to ``failed``."""
    for row in rows:
        if row[3]:
            failed.append(row[0])
        yield row


def _write_stdout(rows: Iterable[tuple], columns: tuple[str, ...]) -> int:
    """A reader that stops early (``| head``) is fine: no error message, as for any Unix filter."""
    try:
        count = write_csv(rows, sys.stdout, columns)
        sys.stdout.flush()
        return count
    except BrokenPipeError:
        _silence_stdout()
        sys.exit(EXIT_ERROR)
    except OSError as error:
        _silence_stdout()
        raise SimcaptchaError(f"stdout: {error.strerror or error}") from None


def _silence_stdout() -> None:
    """Point stdout at /dev/null: Python would otherwise fail again flushing what is left of it at exit."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _write_file(rows: Iterable[tuple], path: Path, columns: tuple[str, ...]) -> int:
    """A file is written beside and renamed into place, so a failed run leaves no partial CSV; a device or a
    pipe (``/dev/stdout``) cannot be replaced and is written as it is."""
    try:
        if path.exists() and not path.is_file():
            with open(path, "w", encoding="utf-8", newline="") as stream:
                return write_csv(rows, stream, columns)
        with atomic_path(path.resolve()) as tmp, open(tmp, "w", encoding="utf-8", newline="") as stream:
            return write_csv(rows, stream, columns)
    except OSError as error:
        raise SimcaptchaError(f"{path}: {error.strerror or error}") from None


def write_csv(rows: Iterable[tuple], stream: TextIO, columns: tuple[str, ...] = ()) -> int:
    """Write ``name,prediction,confidence`` CSV (confidence to 4 decimals), header first, then the rows' further
    ``columns`` (--skip-bad's error, --min-confidence's abstained); returns the row count."""
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(CSV_HEADER + columns)
    count = 0
    for name, text, confidence, *rest in rows:
        writer.writerow((name, text, f"{confidence:.4f}", *rest))
        count += 1
    return count

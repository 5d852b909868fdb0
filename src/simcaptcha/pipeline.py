"""Where the pipeline's artifacts live (the same paths dvc.yaml declares) and how a stage reports itself."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .config import RenderConfig
from .machine import is_main_process
from .store import ImageSet, read_image_set, write_json

DATA = Path("data")
FETCHED = DATA / "fetched"  # encoded images as fetched: unlabelled/, labelled/
BINARIZED = DATA / "binarized"  # text 255 on 0, fixed size: unlabelled/, labelled/
PREPROCESSING = BINARIZED / "preprocessing.npz"  # the site's background estimate and text polarity, for predict
MASK = DATA / "mask" / "mask.png"
ESTIMATE = DATA / "estimate" / "site.json"  # the pool's text height, stroke width, length and fitted fonts
SYNTHETIC = DATA / "synthetic"  # rendered: captchas/, glyphs/, anchors/
AUGMENTED = DATA / "augmented"  # captchas/, glyphs/, anchors/
FETCH_CACHE = Path(".cache") / "fetch"  # partial downloads kept for resuming a killed fetch
METRICS = Path("metrics")
IMAGES = METRICS / "images"
ROLES = ("unlabelled", "labelled")


@contextmanager
def stage_metrics(name: str) -> Iterator[dict]:
    """Collect a stage's figures and write them, with its wall time, to metrics/<name>.json on success (by the
    first process of a multi-process run only)."""
    figures: dict = {}
    start = time.perf_counter()
    yield figures
    figures["seconds"] = round(time.perf_counter() - start, 2)
    if is_main_process():
        write_json(METRICS / f"{name}.json", figures)
MODELS = DATA / "models"  # readers (synthetic, refined, glyphs) and the GAN, as self-describing safetensors
REFINED = DATA / "refined"  # captchas/: the augmented synthetic set passed through the refiner
CHECKPOINTS = Path(".cache") / "checkpoints"  # resumable training state of a killed stage
LABEL_BUDGET = DATA / "label-budget"  # one JSON per point of the label-budget grid
READER_DATA = {"synthetic": AUGMENTED / "captchas", "refined": REFINED / "captchas", "glyphs": AUGMENTED / "glyphs"}


def labelled_set(render: RenderConfig) -> ImageSet:
    """The real labelled captchas, each label as a reader of render.charset gives it (``RenderConfig.label_of``:
    a case-insensitive site's labels in the charset's case)."""
    labelled = read_image_set(BINARIZED / "labelled")
    labelled.manifest["label"] = [render.label_of(label) for label in labelled.labels]
    return labelled

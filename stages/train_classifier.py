"""DVC stage train-classifier@NAME: a reader trained on synthetic (NAME=synthetic) or single-glyph (glyphs) images,
and stage train-classifier-refined: the synthetic reader fine-tuned on refined images (classifier.refined_epochs;
0 trains it from scratch too); each plus classifier.real_labels real labelled captchas when allowed.

Runs as one process (dvc repro) or as several under torchrun:
    torchrun --nproc_per_node N stages/train_classifier.py NAME
"""

import sys
from dataclasses import replace

import numpy as np
import pandas as pd
import torch

from simcaptcha.config import load_config
from simcaptcha.distributed import leave, rank_path
from simcaptcha.errors import SimcaptchaError, run_main
from simcaptcha.imaging import load_preprocessing
from simcaptcha.machine import is_main_process
from simcaptcha.mask import site_mask
from simcaptcha.modelfile import ReaderSpec, load_reader, save_reader
from simcaptcha.pipeline import CHECKPOINTS, METRICS, MODELS, PREPROCESSING, READER_DATA, labelled_set, stage_metrics
from simcaptcha.reader_training import check_labels, real_labelled, train_reader
from simcaptcha.reading import pick_device, resolve_precision
from simcaptcha.store import read_image_set, write_csv


def fine_tuning_start(spec: ReaderSpec, dropout: float) -> torch.nn.Module:
    """The synthetic reader, to fine-tune on refined images: it must read what this reader will."""
    model, start, _ = load_reader(MODELS / "synthetic.safetensors", dropout)
    if (start.charset, start.length, start.head, start.channels, start.height, start.width) != (
            spec.charset, spec.length, spec.head, spec.channels, spec.height, spec.width):
        raise SimcaptchaError(f"{MODELS / 'synthetic.safetensors'}: built for other params than the refined reader's; "
                              "run dvc repro to rebuild it")
    return model


def main(name: str) -> None:
    params = load_config()
    config, render = params.classifier, params.render
    if name not in READER_DATA:
        raise SimcaptchaError(f"unknown reader {name!r}: expected one of {', '.join(READER_DATA)}")
    glyphs = name == "glyphs"
    length = 1 if glyphs else render.length[1]
    head = "positions" if glyphs else config.head
    labelled = labelled_set(params.render)
    check_labels(labelled, params)
    with stage_metrics(f"train-classifier-{name}") as figures:
        data = read_image_set(READER_DATA[name])
        images, labels, real_names = data.images, data.labels, []
        if config.real_labels and not glyphs:
            real_images, real_labels, real_names = real_labelled(labelled, config.real_labels, config.seed)
            images, labels = np.concatenate([images, real_images]), labels + real_labels
        background, polarity = load_preprocessing(PREPROCESSING)
        spec = ReaderSpec(render.charset, length, head, tuple(config.channels), images.shape[1], images.shape[2],
                          params.binarize, polarity, tuple(real_names))
        torch.manual_seed(config.seed)  # the initial weights, too, come from the seed
        if name == "refined" and config.refined_epochs:
            model = fine_tuning_start(spec, config.dropout)
            config = replace(config, epochs=config.refined_epochs, learning_rate=config.refined_learning_rate)
        else:
            model = spec.build(config.dropout)
        checkpoint, device = CHECKPOINTS / f"train-classifier-{name}.pt", pick_device()
        figures["precision"] = resolve_precision(config.precision, device)  # what "auto" chose on this machine
        log = train_reader(model, spec.coder(), images, labels, config,
                           params.training_augment, checkpoint, device,
                           synthetic_count=len(data), mask=None if glyphs else site_mask(params))
        if is_main_process():  # under torchrun, one process writes
            save_reader(MODELS / f"{name}.safetensors", model, spec, background)
            write_csv(METRICS / f"train-classifier-{name}.csv", pd.DataFrame(log))  # one row per epoch
        figures.update(log[-1], images=len(images), real_labels_used=len(real_names))
    rank_path(checkpoint).unlink(missing_ok=True)
    leave()


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1] if len(sys.argv) > 1 else ""))

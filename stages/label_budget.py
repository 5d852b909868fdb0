"""DVC stage label-budget-MODE@N-SEED: one point of the label-budget study.

MODE real: a reader trained from scratch on N real labelled captchas alone (none at N = 0: it reads nothing).
MODE synthetic / refined: the pipeline's zero-label reader of that set, fine-tuned on the same N real captchas
with images of the set added (budget.synthetic_share of the mix, halved at N = budget.synthetic_halving); at
N = 0 it is that reader unchanged.
Every point sees its real captchas for budget.steps batches and is judged on the fixed test split, which no
point trains on.

Usage: python stages/label_budget.py MODE N SEED
"""

import sys

import torch

from simcaptcha.budget import (MODES, budget_rows, held_out_split, point_config, point_path, synthetic_share,
                               training_mix)
from simcaptcha.config import load_config
from simcaptcha.errors import SimcaptchaError, run_main
from simcaptcha.imaging import load_preprocessing
from simcaptcha.mask import site_mask
from simcaptcha.metrics import accuracy_figures
from simcaptcha.modelfile import ReaderSpec, load_reader
from simcaptcha.pipeline import CHECKPOINTS, LABEL_BUDGET, MODELS, PREPROCESSING, READER_DATA, labelled_set
from simcaptcha.reader_training import check_labels, train_reader
from simcaptcha.reading import pick_device, read_images
from simcaptcha.store import read_image_set, write_json


def main(argv: list[str]) -> None:
    params = load_config()  # params first: a typo is reported before anything else
    config, render = params.budget, params.render
    mode, size, seed = arguments(argv)
    if mode not in MODES:
        raise SimcaptchaError(f"unknown label-budget mode {mode!r}: expected one of {', '.join(MODES)}")
    labelled = labelled_set(params.render)
    check_labels(labelled, params)
    test, candidates = held_out_split(len(labelled), config)
    rows = budget_rows(candidates, size, seed, config)
    real_labels = [labelled.labels[row] for row in rows]
    device = pick_device()
    if mode == "real":
        _, polarity = load_preprocessing(PREPROCESSING)
        spec = ReaderSpec(render.charset, render.length[1], params.classifier.head, tuple(params.classifier.channels),
                          *labelled.images.shape[1:3], params.binarize, polarity)
        torch.manual_seed(seed)  # the initial weights come from the point's seed
        model = spec.build(params.classifier.dropout)
    else:
        model, spec, _ = load_reader(MODELS / f"{mode}.safetensors", params.classifier.dropout)
    coder = spec.coder()
    model.to(device)
    if size:  # at N = 0 nothing trains, so the synthetic set is not read
        synthetic = None if mode == "real" else read_image_set(READER_DATA[mode])
        images, labels, synthetic_count = training_mix(
            labelled.images[rows], real_labels, None if synthetic is None else synthetic.images,
            [] if synthetic is None else synthetic.labels, config, seed)
        checkpoint = CHECKPOINTS / f"label-budget-{mode}-{size}-{seed}.pt"
        train_reader(model, coder, images, labels, point_config(params.classifier, config, seed),
                     params.training_augment, checkpoint, device, synthetic_count, site_mask(params))
        checkpoint.unlink(missing_ok=True)
    truth = [labelled.labels[row] for row in test]
    if size or mode != "real":
        figures = accuracy_figures(read_images(model, coder, labelled.images[test])[0], truth)
    else:  # no label, no synthetic set: no reader at all
        figures = accuracy_figures([""] * len(truth), truth)
    write_json(point_path(LABEL_BUDGET, mode, size, seed),
               {"mode": MODES[mode], "n": size, "seed": seed, "real_labels_used": size, "steps": config.steps,
                "start": "none" if mode == "real" else f"{mode}.safetensors",
                "synthetic_share": 0.0 if mode == "real" or not size else round(synthetic_share(size, config), 5),
                **figures})
    print(f"{MODES[mode]}, N = {size}, seed {seed}: {figures['char_accuracy']:.1%} per character, "
          f"{figures['captcha_accuracy']:.1%} whole on {len(test)} test captchas")


def arguments(argv: list[str]) -> tuple[str, int, int]:
    if len(argv) != 3 or not argv[1].isdigit() or not argv[2].isdigit():
        raise SimcaptchaError(f"usage: python stages/label_budget.py MODE N SEED (got {' '.join(argv) or 'nothing'})")
    return argv[0], int(argv[1]), int(argv[2])


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))

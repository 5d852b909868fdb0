"""DVC stage self-train: the start reader labels the unlabelled real pool and learns from its own confident readings.

No real label is used: the pseudo-labels are the model's own. The evaluation captchas are kept out of the pool
(selftrain.exclude_labelled, by content) so their figures stay held out, and so are selftrain.holdout pool
captchas, for evaluate's label-free accuracy estimate. With selftrain.student_channels a fresh, wider
reader then learns the self-trained reader's readings of the pool and is saved in its place (noisy student).
"""

import numpy as np
import pandas as pd
import torch

from simcaptcha.config import load_config
from simcaptcha.errors import run_main
from simcaptcha.mask import site_mask
from simcaptcha.metrics import accuracy_figures
from simcaptcha.modelfile import load_reader, save_reader
from simcaptcha.pipeline import AUGMENTED, BINARIZED, CHECKPOINTS, METRICS, MODELS, stage_metrics
from simcaptcha.pool import pool_rows
from simcaptcha.reading import pick_device, read_images
from simcaptcha.selftraining import self_train, train_student
from simcaptcha.store import read_image_set, write_csv


def main() -> None:
    params = load_config()
    config = params.selftrain
    with stage_metrics("self-train") as figures:
        model, spec, background = load_reader(MODELS / f"{config.start}.safetensors", params.classifier.dropout)
        anchors = read_image_set(AUGMENTED / "anchors")  # hold the pseudo-labels in place, whichever reader starts
        pool, labelled = read_image_set(BINARIZED / "unlabelled"), read_image_set(BINARIZED / "labelled")
        keep, for_estimate = pool_rows(pool, labelled, config)  # the estimate's captchas: read by evaluate only
        coder = spec.coder()
        held_out = ~np.isin(labelled.names, spec.trained_on_real)  # as evaluate: real labels trained on never judge
        truth = [label for label, kept in zip(labelled.labels, held_out) if kept]

        def labelled_figures(reader) -> dict:
            """The labelled captchas read after each round, logged only: shows whether later rounds still help."""
            figures = accuracy_figures(read_images(reader, coder, labelled.images[held_out])[0], truth)
            return {"labelled_char_accuracy": figures["char_accuracy"],
                    "labelled_captcha_accuracy": figures["captcha_accuracy"]}

        torch.manual_seed(params.classifier.seed)
        checkpoints, mask, device = CHECKPOINTS / "self-train", site_mask(params), pick_device()
        log = self_train(model, coder, anchors.images, anchors.labels, pool.images[keep], config,
                         params.classifier, params.training_augment, checkpoints, device, mask,
                         tuple(params.render.length), labelled_figures if truth else None)
        write_csv(METRICS / "self-train.csv", pd.DataFrame(log))  # one row per round
        figures.update(log[-1] if log else {}, pool=int(keep.sum()), held_out=int(for_estimate.sum()),
                       excluded_labelled=int((~keep & ~for_estimate).sum()), real_labels_used=len(spec.trained_on_real))
        if config.student_channels:  # the answer is then a fresh, wider reader taught by the self-trained one
            model, spec, history = train_student(model, spec, anchors.images, anchors.labels, pool.images[keep],
                                                 config, params.classifier, params.training_augment,
                                                 checkpoints / "student.pt", device, mask,
                                                 tuple(params.render.length))
            student_figures = {**history[-1], **(labelled_figures(model) if truth else {})}
            figures.update({f"student_{key}": value for key, value in student_figures.items()})
        save_reader(MODELS / "selftrained.safetensors", model, spec, background)
    for path in sorted(checkpoints.glob("*.pt")):
        path.unlink()


if __name__ == "__main__":
    run_main(main)

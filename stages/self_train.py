"""DVC stage self-train: the start reader labels the unlabelled real pool and learns from its own confident readings.

No real label is used: the pseudo-labels are the model's own. The evaluation captchas are kept out of the pool
(selftrain.exclude_labelled) so their figures stay held out.
"""

import numpy as np
import pandas as pd
import torch

from simcaptcha.config import load_config
from simcaptcha.errors import SimcaptchaError, run_main
from simcaptcha.metrics import accuracy_figures
from simcaptcha.mask import site_mask
from simcaptcha.modelfile import load_reader, save_reader
from simcaptcha.pipeline import AUGMENTED, BINARIZED, CHECKPOINTS, METRICS, MODELS, stage_metrics
from simcaptcha.store import read_image_set, write_csv
from simcaptcha.training import LabelCoder, pick_device, read_images, self_train


def main() -> None:
    params = load_config()
    config = params.selftrain
    with stage_metrics("self-train") as figures:
        model, spec, background = load_reader(MODELS / f"{config.start}.safetensors", params.classifier.dropout)
        anchors = read_image_set(AUGMENTED / "anchors")  # hold the pseudo-labels in place, whichever reader starts
        pool, labelled = read_image_set(BINARIZED / "unlabelled"), read_image_set(BINARIZED / "labelled")
        keep = np.ones(len(pool), dtype=bool)
        if config.exclude_labelled:
            keep = ~np.isin(pool.names, labelled.names)
        if not keep.any():
            raise SimcaptchaError("params: selftrain.exclude_labelled leaves no unlabelled captcha (the pool is the "
                                  "labelled set); set it to false to read the evaluation images unlabelled")
        coder = LabelCoder(spec.charset, spec.length, spec.head)
        held_out = ~np.isin(labelled.names, spec.trained_on_real)  # as evaluate: real labels trained on never judge
        truth = [label for label, kept in zip(labelled.labels, held_out) if kept]

        def labelled_figures(reader) -> dict:
            """The labelled captchas read after each round, logged only: shows whether later rounds still help."""
            figures = accuracy_figures(read_images(reader, coder, labelled.images[held_out])[0], truth)
            return {"labelled_char_accuracy": figures["char_accuracy"],
                    "labelled_captcha_accuracy": figures["captcha_accuracy"]}

        torch.manual_seed(params.classifier.seed)
        checkpoints = CHECKPOINTS / "self-train"
        log = self_train(model, coder, anchors.images, anchors.labels, pool.images[keep], config,
                         params.classifier, params.training_augment, checkpoints, pick_device(), site_mask(params),
                         tuple(params.render.length), labelled_figures if truth else None)
        save_reader(MODELS / "selftrained.safetensors", model, spec, background)
        write_csv(METRICS / "self-train.csv", pd.DataFrame(log))  # one row per round
        figures.update(log[-1] if log else {}, pool=int(keep.sum()), excluded_labelled=int((~keep).sum()),
                       real_labels_used=len(spec.trained_on_real))
    for path in sorted(checkpoints.glob("round-*.pt")):
        path.unlink()


if __name__ == "__main__":
    run_main(main)

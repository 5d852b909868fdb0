"""DVC stage self-train: the start reader labels the unlabelled real pool and learns from its own confident readings.

No real label is used: the pseudo-labels are the model's own. The evaluation captchas are kept out of the pool
(selftrain.exclude_labelled) so their figures stay held out.
"""

import numpy as np
import pandas as pd
import torch

from simcaptcha.config import load_config
from simcaptcha.errors import SimcaptchaError, run_main
from simcaptcha.mask import site_mask
from simcaptcha.modelfile import load_reader, save_reader
from simcaptcha.pipeline import AUGMENTED, BINARIZED, CHECKPOINTS, METRICS, MODELS, stage_metrics
from simcaptcha.store import read_image_set, write_csv
from simcaptcha.training import LabelCoder, pick_device, self_train


def main() -> None:
    params = load_config()
    config = params.selftrain
    with stage_metrics("self-train") as figures:
        model, spec, background = load_reader(MODELS / f"{config.start}.safetensors")
        synthetic = read_image_set(AUGMENTED / "captchas")  # anchors the labels, whichever reader starts
        pool = read_image_set(BINARIZED / "unlabelled")
        keep = np.ones(len(pool), dtype=bool)
        if config.exclude_labelled:
            keep = ~np.isin(pool.names, read_image_set(BINARIZED / "labelled").names)
        if not keep.any():
            raise SimcaptchaError("params: selftrain.exclude_labelled leaves no unlabelled captcha (the pool is the "
                                  "labelled set); set it to false to read the evaluation images unlabelled")
        torch.manual_seed(params.classifier.seed)
        checkpoints = CHECKPOINTS / "self-train"
        log = self_train(model, LabelCoder(spec.charset, spec.length, spec.head), synthetic.images,
                         synthetic.labels, pool.images[keep], config, params.classifier,
                         params.training_augment, checkpoints,
                         pick_device(), site_mask(params), tuple(params.render.length))
        save_reader(MODELS / "selftrained.safetensors", model, spec, background)
        write_csv(METRICS / "self-train.csv", pd.DataFrame(log))  # one row per round
        figures.update(log[-1] if log else {}, pool=int(keep.sum()), excluded_labelled=int((~keep).sum()),
                       real_labels_used=len(spec.trained_on_real))
    for path in sorted(checkpoints.glob("round-*.pt")):
        path.unlink()


if __name__ == "__main__":
    run_main(main)

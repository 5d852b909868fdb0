"""DVC stage train-gan: a SimGAN refiner that makes synthetic captchas look like the site's real ones.

Runs as one process (dvc repro) or as several under torchrun: torchrun --nproc_per_node N stages/train_gan.py
"""

import sys

import pandas as pd
import torch

from simcaptcha.config import load_config
from simcaptcha.distributed import leave, rank_path
from simcaptcha.errors import SimcaptchaError, run_main
from simcaptcha.imaging import save_png
from simcaptcha.machine import is_main_process
from simcaptcha.modelfile import load_reader, save_gan
from simcaptcha.models import PatchDiscriminator, Refiner
from simcaptcha.pipeline import AUGMENTED, BINARIZED, CHECKPOINTS, IMAGES, METRICS, MODELS, stage_metrics
from simcaptcha.reading import pick_device
from simcaptcha.simgan import sample_sheet, train_gan, training_summary
from simcaptcha.store import read_image_set, write_csv


def main() -> None:
    params = load_config()
    config = params.gan
    with stage_metrics("train-gan") as figures:
        synthetic = read_image_set(AUGMENTED / "captchas")
        pool = read_image_set(BINARIZED / "unlabelled").images
        if len(pool) <= config.holdout:
            raise SimcaptchaError(f"params: gan.holdout = {config.holdout} leaves none of the {len(pool)} real "
                                  "captchas to train on")
        real = pool[: len(pool) - config.holdout]
        reader, spec, _ = load_reader(MODELS / "synthetic.safetensors")
        torch.manual_seed(config.seed)  # the initial weights, too, come from the seed
        refiner = Refiner(config.refiner_channels, config.refiner_blocks)
        discriminator = PatchDiscriminator(config.discriminator_channels)
        device = pick_device()
        checkpoint = CHECKPOINTS / "train-gan.pt"
        log = train_gan(refiner, discriminator, synthetic.images, synthetic.labels, real,
                        reader if config.consistency else None, spec.coder(), config, checkpoint, device,
                        params.classifier.precision)
        if is_main_process():  # under torchrun, one process writes
            save_gan(MODELS / "gan.safetensors", refiner, discriminator, config)
            write_csv(METRICS / "train-gan.csv", pd.DataFrame(log))  # one row per step
            save_png(IMAGES / "gan-samples.png", sample_sheet(refiner, real, synthetic.images, device))
        summary = training_summary(log)
        if summary["collapsed_at_step"] is not None:
            print(f"warning: train-gan: the refiner collapsed at step {summary['collapsed_at_step']} (its pixel "
                  f"change stayed above gan.collapse_change for {config.collapse_steps} steps in a row); it is the "
                  f"refiner of step {summary['restored_step']}", file=sys.stderr)
        figures.update({key: value for key, value in summary.items() if key != "restored_step"})
        figures["real_images"] = len(real)
    rank_path(checkpoint).unlink(missing_ok=True)
    leave()


if __name__ == "__main__":
    run_main(main)

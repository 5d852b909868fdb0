"""DVC stage refine: pass the augmented synthetic captchas through the refiner, keeping (and checking) labels."""

import numpy as np

from simcaptcha.config import load_config
from simcaptcha.errors import run_main
from simcaptcha.imaging import contact_sheet, save_png
from simcaptcha.metrics import accuracy_figures
from simcaptcha.modelfile import load_gan, load_reader
from simcaptcha.pipeline import AUGMENTED, BINARIZED, IMAGES, MODELS, REFINED, stage_metrics
from simcaptcha.reading import pick_device, read_images
from simcaptcha.simgan import patch_accuracy, refine_images
from simcaptcha.store import read_image_set, write_image_set


def main() -> None:
    params = load_config()
    config = params.refine
    device = pick_device()
    with stage_metrics("refine") as figures:
        synthetic = read_image_set(AUGMENTED / "captchas")
        refiner, discriminator = load_gan(MODELS / "gan.safetensors")
        reader, spec, _ = load_reader(MODELS / "synthetic.safetensors")
        coder = spec.coder()
        refined = refine_images(refiner, synthetic.images, config.batch_size, device)
        if config.threshold > 0:
            refined = np.where(refined > config.threshold * 255, 255, 0).astype(np.uint8)
        precision = params.classifier.precision  # the reader's, as in train-gan's consistency pass
        before, _ = read_images(reader.to(device), coder, synthetic.images, config.batch_size, precision=precision)
        after, _ = read_images(reader, coder, refined, config.batch_size, precision=precision)
        flipped = np.array([b != a for b, a in zip(before, after)], dtype=bool)
        keep = ~flipped if config.drop_flipped else np.ones(len(refined), dtype=bool)
        write_image_set(REFINED / "captchas", refined[keep], synthetic.manifest[keep], config.shard_size)
        held_out_real = read_image_set(BINARIZED / "unlabelled").images[-params.gan.holdout:]
        figures.update({
            "images": len(refined), "kept": int(keep.sum()), "label_flip_rate": round(float(flipped.mean()), 5),
            "synthetic_reader_on_synthetic": accuracy_figures(before, synthetic.labels)["captcha_accuracy"],
            "synthetic_reader_on_refined": accuracy_figures(after, synthetic.labels)["captcha_accuracy"],
            "d_accuracy_held_out_real": round(patch_accuracy(discriminator, held_out_real, True, device), 4),
            "d_accuracy_refined": round(patch_accuracy(discriminator, refined[:len(held_out_real)], False, device), 4),
            "d_accuracy_unrefined": round(patch_accuracy(discriminator, synthetic.images[:len(held_out_real)], False,
                                                         device), 4),
        })
        count = config.sample_sheet
        pairs = [image for index in range(count) for image in (synthetic.images[index], refined[index])]
        captions = [text for index in range(count)
                    for text in (synthetic.labels[index], f"{after[index]}{' FLIP' if flipped[index] else ''}")]
        save_png(IMAGES / "refine-before-after.png", contact_sheet(pairs, captions, columns=8))


if __name__ == "__main__":
    run_main(main)

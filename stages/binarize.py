"""DVC stage binarize: decode, fit to one size, remove the background bands, threshold; text becomes 255 on 0."""

import numpy as np

from simcaptcha.config import load_config
from simcaptcha.errors import run_main
from simcaptcha.imaging import (binarize_images, contact_sheet, decode_set, detect_polarity, estimate_background,
                                save_png, save_preprocessing)
from simcaptcha.pipeline import BINARIZED, FETCHED, IMAGES, PREPROCESSING, ROLES, stage_metrics
from simcaptcha.store import read_encoded_set, write_image_set


def main() -> None:
    config = load_config().binarize
    height, width = config.size
    with stage_metrics("binarize") as figures:
        colour = {}
        for role in ROLES:
            blobs, manifest = read_encoded_set(FETCHED / role)
            colour[role] = (decode_set(blobs, manifest["name"], height, width), manifest)
        pool = colour["unlabelled"][0]
        background = estimate_background(pool, config.background)
        polarity = detect_polarity(pool, config)
        save_preprocessing(PREPROCESSING, background, polarity)
        for role, (images, manifest) in colour.items():
            binary = binarize_images(images, background, config, polarity)
            write_image_set(BINARIZED / role, binary, manifest, config.shard_size)
            figures[role] = {"images": len(binary), "ink_share": round(float((binary > 127).mean()), 4)}
            if role == "unlabelled":
                pool_binary = binary
        figures["polarity"] = polarity
        count = min(config.sample_sheet, len(pool))
        pairs = [image for index in range(count) for image in (pool[index], pool_binary[index])]
        save_png(IMAGES / "binarize-before-after.png", contact_sheet(pairs, columns=8))
        ink = pool_binary.astype(np.float32) / 255.0
        save_png(IMAGES / "binarize-mean.png", (ink.mean(axis=0) * 255).round().astype(np.uint8))
        save_png(IMAGES / "binarize-std.png", (ink.std(axis=0) * 255).round().astype(np.uint8))


if __name__ == "__main__":
    run_main(main)

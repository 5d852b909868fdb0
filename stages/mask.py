"""DVC stage mask: the fixed noise every captcha of the site shares, estimated from the unlabelled pool."""

import numpy as np

from simcaptcha.config import load_config
from simcaptcha.errors import run_main
from simcaptcha.imaging import contact_sheet, save_png
from simcaptcha.mask import estimate_mask, lit_share, mask_figures
from simcaptcha.pipeline import BINARIZED, IMAGES, MASK, stage_metrics
from simcaptcha.store import read_image_set


def main() -> None:
    config = load_config().mask
    with stage_metrics("mask") as figures:
        pool = read_image_set(BINARIZED / "unlabelled").images
        mask = estimate_mask(pool, config)
        save_png(MASK, mask.astype(np.uint8) * 255)
        figures.update(mask_figures(pool, mask))
        share = (lit_share(pool) * 255).round().astype(np.uint8)
        save_png(IMAGES / "mask.png", contact_sheet([mask.astype(np.uint8) * 255, share], ["mask", "lit share"],
                                                     columns=2, scale=4))


if __name__ == "__main__":
    run_main(main)

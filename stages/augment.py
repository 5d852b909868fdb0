"""DVC stage augment: N stored variants of every synthetic image (Keras-style geometry, blur, noise, warps, JPEG).

The site's fixed noise (the mask) stays in place while the text moves, as on the real site.
"""

import numpy as np

from simcaptcha.augment import augment_images
from simcaptcha.config import load_config
from simcaptcha.errors import run_main
from simcaptcha.imaging import contact_sheet, save_png
from simcaptcha.mask import site_mask
from simcaptcha.pipeline import AUGMENTED, IMAGES, SYNTHETIC, stage_metrics
from simcaptcha.store import read_image_set, write_image_set


def main() -> None:
    params = load_config()
    config = params.augment
    site = site_mask(params)
    with stage_metrics("augment") as figures:
        for offset, kind in enumerate(("captchas", "glyphs", "anchors")):
            synthetic = read_image_set(SYNTHETIC / kind)
            mask = None if kind == "glyphs" else site  # a glyph's slice of the mask has no fixed place
            if config.enabled:
                images, source_index = augment_images(synthetic.images, config, config.seed + offset, mask)
            else:
                images, source_index = synthetic.images, np.repeat(np.arange(len(synthetic)), config.variants)
                images = images[source_index]
            manifest = synthetic.manifest.iloc[source_index].reset_index(drop=True)
            manifest["name"] = [f"{name}-v{row % config.variants}" for row, name in enumerate(manifest["name"])]
            write_image_set(AUGMENTED / kind, images, manifest, config.shard_size)
            figures[kind] = {"images": len(images)}
            save_png(IMAGES / f"augment-{kind}.png", contact_sheet(list(images[:32]), manifest["label"][:32].tolist(),
                                                                   columns=8))


if __name__ == "__main__":
    run_main(main)

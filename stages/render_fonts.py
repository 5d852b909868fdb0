"""DVC stage render-fonts: labelled synthetic captchas and single glyphs drawn from the font pool, with the mask."""

import time
from dataclasses import replace

import numpy as np
import pandas as pd

from simcaptcha.config import load_config
from simcaptcha.errors import run_main
from simcaptcha.estimate import load_site, pool_placement, site_styles
from simcaptcha.fonts import font_id
from simcaptcha.imaging import contact_sheet, save_png
from simcaptcha.mask import site_mask
from simcaptcha.pipeline import ESTIMATE, IMAGES, SYNTHETIC, stage_metrics
from simcaptcha.rendering import Renderer, render_set
from simcaptcha.store import write_image_set


def main() -> None:
    params = load_config()
    config = params.render
    height, width = params.binarize.size
    site = load_site(ESTIMATE)
    styles = site_styles(config, site)
    mask = site_mask(params)
    mask = np.zeros((height, width), dtype=bool) if mask is None else mask
    placement = pool_placement(site, config)
    renderer = Renderer(config, height, width, styles, mask, **placement)
    # self-training's anchor set: the same captchas' stream with each character narrowed by its own factor
    anchor_renderer = Renderer(replace(config, glyph_width=config.anchor_glyph_width), height, width, styles, mask,
                               **placement)
    with stage_metrics("render-fonts") as figures:
        figures["fonts"] = [f"{font_id(style.path)} {style.size[0]}-{style.size[1]}px +{style.stroke[0]}"
                            for style in styles]
        for name, kind, set_renderer, count in (("captchas", "captcha", renderer, config.count),
                                                ("glyphs", "glyph", renderer, config.glyph_count),
                                                ("anchors", "captcha", anchor_renderer, config.count)):
            start = time.perf_counter()
            images, labels = render_set(set_renderer, kind, count, config.workers)
            seconds = time.perf_counter() - start
            names = [f"{name[:-1]}-{index:06d}" for index in range(count)]
            manifest = pd.DataFrame({"name": names, "label": labels, "source": "render"})
            write_image_set(SYNTHETIC / name, images, manifest, config.shard_size)
            figures[name] = {"images": count, "per_second": round(count / max(seconds, 1e-9))}
            save_png(IMAGES / f"render-{name}.png", contact_sheet(list(images[:32]), labels[:32], columns=8))


if __name__ == "__main__":
    run_main(main)

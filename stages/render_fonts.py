"""DVC stage render-fonts: labelled synthetic captchas and single glyphs drawn from the font pool, with the mask."""

import time

import numpy as np
import pandas as pd

from simcaptcha.config import RenderConfig, load_config
from simcaptcha.errors import run_main
from simcaptcha.estimate import fitted_styles, load_site, pool_placement
from simcaptcha.fonts import font_id
from simcaptcha.imaging import contact_sheet, save_png
from simcaptcha.mask import site_mask
from simcaptcha.pipeline import ESTIMATE, IMAGES, SYNTHETIC, stage_metrics
from simcaptcha.rendering import FontStyle, Renderer, candidate_fonts, render_set, uniform_styles
from simcaptcha.store import write_image_set


def font_styles(config: RenderConfig, site: dict) -> tuple[FontStyle, ...]:
    """The closest fonts as the estimate stage fitted them, or every font of render.fonts at the given sizes."""
    if config.closest_fonts:
        return fitted_styles(site, config.closest_fonts, config.size_spread)
    return uniform_styles(candidate_fonts(config), config)


def main() -> None:
    params = load_config()
    config = params.render
    height, width = params.binarize.size
    site = load_site(ESTIMATE)
    styles = font_styles(config, site)
    mask = site_mask(params)
    mask = np.zeros((height, width), dtype=bool) if mask is None else mask
    renderer = Renderer(config, height, width, styles, mask, **pool_placement(site, config))
    with stage_metrics("render-fonts") as figures:
        figures["fonts"] = [f"{font_id(style.path)} {style.size[0]}-{style.size[1]}px +{style.stroke[0]}"
                            for style in styles]
        for kind, count in (("captcha", config.count), ("glyph", config.glyph_count)):
            start = time.perf_counter()
            images, labels = render_set(renderer, kind, count, config.workers)
            seconds = time.perf_counter() - start
            names = [f"{kind}-{index:06d}" for index in range(count)]
            manifest = pd.DataFrame({"name": names, "label": labels, "source": "render"})
            write_image_set(SYNTHETIC / f"{kind}s", images, manifest, config.shard_size)
            figures[f"{kind}s"] = {"images": count, "per_second": round(count / max(seconds, 1e-9))}
            save_png(IMAGES / f"render-{kind}s.png", contact_sheet(list(images[:32]), labels[:32], columns=8))


if __name__ == "__main__":
    run_main(main)

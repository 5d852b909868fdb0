"""DVC stage estimate: measure the unlabelled pool (text height, stroke width, length) and fit every candidate font.

render-fonts draws the render.closest_fonts best fits at their fitted size and outline.
"""

import sys

from simcaptcha.config import load_config
from simcaptcha.errors import run_main
from simcaptcha.estimate import estimate_site, fonts_sheet
from simcaptcha.imaging import save_png
from simcaptcha.mask import load_mask
from simcaptcha.pipeline import BINARIZED, ESTIMATE, IMAGES, MASK, stage_metrics
from simcaptcha.rendering import candidate_fonts
from simcaptcha.store import read_image_set, write_json


def main() -> None:
    params = load_config()
    render = params.render
    height, width = params.binarize.size
    fonts = candidate_fonts(render)
    pool = read_image_set(BINARIZED / "unlabelled").images
    mask = load_mask(MASK, height, width)
    with stage_metrics("estimate") as figures:
        site = estimate_site(pool, mask, [str(path) for path in fonts], render, params.estimate)
        write_json(ESTIMATE, site)
        figures.update({key: value for key, value in site.items() if key not in ("fonts", "text_spans", "line_spans")},
                       candidate_fonts=len(fonts), closest_fonts=site["fonts"][:max(render.closest_fonts, 1)])
        if not render.length[0] <= site["length"] <= render.length[1]:
            print(f"warning: the pool looks like {site['length']} characters per captcha "
                  f"(range {site['length_range']}), but render.length is {render.length}", file=sys.stderr)
        save_png(IMAGES / "estimate-fonts.png", fonts_sheet(site, pool, render, mask))

if __name__ == "__main__":
    run_main(main)

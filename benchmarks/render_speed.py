"""Benchmark: synthetic captchas per second per core from render-fonts (target: >= 1,000 at 100x50).

Usage: python benchmarks/render_speed.py [--count 10000] [--workers 1]
Renders with the default params' render section and font pool (no mask), once cold (glyph caches empty) and
once warm, and writes the figures to metrics/bench-render.json.
"""

import argparse
import time

import numpy as np

from simcaptcha.config import load_config
from simcaptcha.pipeline import METRICS
from simcaptcha.rendering import Renderer, candidate_fonts, render_set, uniform_styles
from simcaptcha.store import write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10000)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    params = load_config()
    height, width = params.binarize.size
    fonts = candidate_fonts(params.render)
    renderer = Renderer(params.render, height, width, uniform_styles(fonts, params.render),
                        np.zeros((height, width), bool))
    figures = {"count": args.count, "workers": args.workers, "size": [height, width], "fonts": len(fonts)}
    for run in ("cold", "warm"):
        start = time.perf_counter()
        render_set(renderer, "captcha", args.count, args.workers)
        per_second = args.count / (time.perf_counter() - start)
        figures[f"{run}_per_second_per_core"] = round(per_second / args.workers)
        print(f"{run}: {per_second:,.0f} captchas/s with {args.workers} worker(s), "
              f"{per_second / args.workers:,.0f} per core")
    write_json(METRICS / "bench-render.json", figures)


if __name__ == "__main__":
    main()

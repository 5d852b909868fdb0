"""The site's fixed noise: pixels lit in (nearly) every captcha, such as HackMIT's four white lines.

Text moves between captchas and lines do not, so a pixel's share of lit images separates the two
without any labels. Synthetic captchas get this mask composited so they carry the same noise.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy.ndimage import binary_dilation
from skimage.morphology import disk

from .config import MaskConfig
from .errors import SimcaptchaError
from .pipeline import MASK


def lit_share(images: np.ndarray) -> np.ndarray:
    """Share of images in which each pixel is text-coloured (float64 H×W), in chunks to bound memory."""
    total = np.zeros(images.shape[1:], dtype=np.int64)
    for start in range(0, len(images), 2000):
        total += (images[start:start + 2000] > 127).sum(axis=0)
    return total / max(len(images), 1)


def estimate_mask(images: np.ndarray, config: MaskConfig) -> np.ndarray:
    """Boolean H×W mask of fixed noise from binarized images (text 255 on 0)."""
    if config.method == "none" or len(images) == 0:
        return np.zeros(images.shape[1:], dtype=bool)
    share = lit_share(images)
    mask = share >= 1.0 if config.method == "and" else share >= config.threshold
    if config.dilate:
        mask = binary_dilation(mask, structure=disk(config.dilate))
    return mask


def mask_figures(images: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """How much of the image the mask covers and how much of the pool's lit pixels it explains."""
    lit = images > 127
    lit_total = int(lit.sum())
    in_mask = int(lit[:, mask].sum()) if mask.any() else 0
    return {
        "coverage": float(mask.mean()),
        "pixels": int(mask.sum()),
        "lit_pixels_explained": in_mask / lit_total if lit_total else 0.0,
        "mean_presence": float(lit[:, mask].mean()) if mask.any() else 0.0,
    }


def load_mask(path, height: int, width: int) -> np.ndarray:
    """Read the mask PNG back as a boolean H×W array, checking it matches the image size."""
    try:
        with Image.open(path) as image:
            mask = np.asarray(image.convert("L")) > 127
    except FileNotFoundError:
        raise SimcaptchaError(f"{path}: no such file (run the mask stage first)") from None
    except OSError as error:
        raise SimcaptchaError(f"{path}: cannot read the mask ({error})") from None
    if mask.shape != (height, width):
        raise SimcaptchaError(f"{path}: mask is {mask.shape[0]}×{mask.shape[1]}, images are {height}×{width}")
    return mask


def site_mask(params) -> np.ndarray | None:
    """The mask synthetic captchas carry (None when render.use_mask is off), at the binarized image size."""
    if not params.render.use_mask:
        return None
    return load_mask(MASK, *params.binarize.size)

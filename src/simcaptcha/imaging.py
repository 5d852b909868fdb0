"""Decoding, resizing, binarization and contact sheets: the image operations every stage shares.

Binarized images are uint8 with text at 255 on a 0 background, whatever the site's colours were, so
synthetic and real images meet in one representation.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from skimage.filters import threshold_sauvola
from .progress import progress

from .config import BinarizeConfig
from .errors import SimcaptchaError
from .store import load_npz, save_npz, write_bytes

Image.MAX_IMAGE_PIXELS = 50_000_000  # a captcha is tiny; anything bigger is a decompression bomb
OTSU_BINS = 256  # as skimage's threshold_otsu
BACKGROUND_SAMPLE = 2000  # images used to estimate the background colours of a site


def decode_image(blob: bytes, name: str) -> np.ndarray:
    """Decode one encoded image to RGB uint8 H×W×3; ``name`` says which image in any error."""
    if not blob:
        raise SimcaptchaError(f"{name}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(blob)) as image:
                image.load()
                if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                    rgba = image.convert("RGBA")
                    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                    return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
                if image.mode.startswith("I") or image.mode == "F":  # 16/32-bit gray: scale, don't clip
                    levels = np.asarray(image, dtype=np.float64)
                    top = 65535.0 if image.mode.startswith("I;16") else max(float(levels.max()), 1.0)
                    gray = np.clip(levels * (255.0 / top) + 0.5, 0, 255).astype(np.uint8)
                    return np.repeat(gray[..., None], 3, axis=-1)
                return np.asarray(image.convert("RGB"))
    except Exception as error:  # Pillow's plugins raise many types on hostile bytes; each means "unreadable"
        raise SimcaptchaError(f"{name}: not a readable image ({' '.join(str(error).split())})") from None


def fit_to_size(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize keeping the aspect ratio, then pad to height×width with the image's border colour.

    Stretching would change stroke shapes between sites' images of different sizes; padding does not.
    """
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    scale = min(height / h, width / w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    fill = np.median(border, axis=0).astype(np.uint8)
    canvas = np.empty((height, width) + image.shape[2:], dtype=np.uint8)
    canvas[...] = fill
    top, left = (height - new_h) // 2, (width - new_w) // 2
    canvas[top:top + new_h, left:left + new_w] = resized
    return canvas


def estimate_background(pool: np.ndarray, mode: str) -> np.ndarray | None:
    """The site's background colour per column, per row or per pixel: the median over the pool.

    Text and noise move from captcha to captcha while the background bands stay, so the median over
    many images (and over the band's other axis) recovers the bands. Returns float32, broadcastable
    against H×W×3 images, or None for mode "none".
    """
    if mode == "none":
        return None
    step = max(1, len(pool) // BACKGROUND_SAMPLE)
    sample = pool[::step].astype(np.float32)
    if mode == "columns":
        return np.median(sample.reshape(-1, sample.shape[2], 3), axis=0)[None]
    if mode == "rows":
        return np.median(sample.transpose(0, 2, 1, 3).reshape(-1, sample.shape[1], 3), axis=0)[:, None]
    return np.median(sample, axis=0)


def save_preprocessing(path, background: np.ndarray | None, polarity: str) -> None:
    """Keep what binarizing a new image of the site needs: its background estimate and text polarity."""
    save_npz(path, background=np.zeros((0,), np.float32) if background is None else background.astype(np.float32),
             polarity=np.array(polarity))


def load_preprocessing(path) -> tuple[np.ndarray | None, str]:
    arrays = load_npz(path)
    background = arrays["background"]
    return (background if background.size else None), str(arrays["polarity"])


def foreground_score(images: np.ndarray, background: np.ndarray | None, config: BinarizeConfig,
                     polarity: str) -> np.ndarray:
    """Per-pixel evidence of text in 0..1 (float32 N×H×W): distance from the background, or brightness."""
    rgb = images.astype(np.float32)
    if background is not None:
        # The RGB distance, as three squared planes summed: several times faster than np.linalg.norm(axis=-1).
        rgb -= background.astype(np.float32, copy=False)
        rgb *= rgb
        squared = rgb[..., 0] + rgb[..., 1]
        squared += rgb[..., 2]
        return np.sqrt(squared, out=squared) / np.float32(255.0 * np.sqrt(3.0))
    if config.gray == "min":
        gray = rgb.min(axis=-1)
    elif config.gray == "max":
        gray = rgb.max(axis=-1)
    else:
        gray = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    gray /= 255.0
    return 1.0 - gray if polarity == "dark" else gray


def detect_polarity(images: np.ndarray, config: BinarizeConfig) -> str:
    """Text is the minority of pixels: a bright majority means dark text."""
    if config.polarity != "auto":
        return config.polarity
    luma = images[: BACKGROUND_SAMPLE].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return "dark" if np.median(luma) > 127.5 else "light"


def threshold_scores(scores: np.ndarray, config: BinarizeConfig) -> np.ndarray:
    """Turn foreground scores into uint8 images, text 255 on 0 (or scaled scores for method "none")."""
    if config.method == "none":
        return np.clip(scores * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if config.method == "otsu":
        levels, spans = _batch_otsu(scores, OTSU_BINS)
        levels *= config.otsu_scale
        levels[spans < 1e-6] = 1.0  # a blank image has no two classes for Otsu: it stays blank
        return np.multiply(scores > levels.reshape((-1,) + (1,) * (scores.ndim - 1)), 255, dtype=np.uint8)
    out = np.empty(scores.shape, dtype=np.uint8)
    for index, score in enumerate(scores):
        level = config.threshold if config.method == "fixed" else threshold_sauvola(
            score, window_size=config.sauvola_window | 1)
        out[index] = np.where(score > level, 255, 0)
    return out


def batch_otsu(scores: np.ndarray, bins: int = OTSU_BINS) -> np.ndarray:
    """Otsu's threshold of every image in N×H×W float scores at once: one threshold per image.

    Gives exactly what ``skimage.filters.threshold_otsu`` gives each image (tests check it): a ``bins``-bin
    histogram between the image's minimum and maximum with NumPy's bin rules, in the scores' precision, and
    the centre of the bin that maximises the between-class variance. The histograms are counted in one
    ``np.bincount`` over per-image offset bin indices instead of a Python loop over images. An image with a
    single value gets that value, as in skimage.
    """
    return _batch_otsu(scores, bins)[0]


def _batch_otsu(scores: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Thresholds, and each image's max - min."""
    count = len(scores)
    flat = scores.reshape(count, int(np.prod(scores.shape[1:])))
    if not np.issubdtype(flat.dtype, np.floating):
        flat = flat.astype(np.float64)
    dtype = flat.dtype
    if count == 0 or flat.shape[1] == 0:
        return np.zeros(count, dtype), np.zeros(count, dtype)
    low, high = flat.min(axis=1), flat.max(axis=1)
    single = low == high
    span = np.where(single, dtype.type(1), high - low)
    # np.histogram, row by row: index = (x - first) / (last - first) * bins, the maximum in the last bin,
    # then moved by one where x is on the wrong side of its bin's edges, edge k = k * (span / bins) + first
    # as np.linspace computes it (recomputed per pixel, which is cheaper than looking the edge up).
    work = flat - low[:, None]
    work /= span[:, None]
    work *= dtype.type(bins)
    index = work.astype(np.intp)
    np.minimum(index, bins - 1, out=index)
    step, first = (span / dtype.type(bins))[:, None], low[:, None]

    def edge(k: np.ndarray) -> np.ndarray:
        value = k.astype(dtype)
        value *= step
        value += first
        return value

    index -= flat < edge(index)
    index += (flat >= edge(index + 1)) & (index != bins - 1)  # edge ``bins`` (the maximum) only bounds the last bin
    index += (np.arange(count, dtype=np.intp) * bins)[:, None]
    counts = np.bincount(index.ravel(), minlength=count * bins).reshape(count, bins).astype(np.float32)
    edges = np.arange(bins + 1, dtype=dtype)[None, :] * step + first
    edges[:, -1] = high
    centres = (edges[:, :-1] + edges[:, 1:]) / 2
    # skimage.filters.threshold_otsu, a row per image, in the same float32 arithmetic.
    weight1 = np.cumsum(counts, axis=1)
    weight2 = np.cumsum(counts[:, ::-1], axis=1)[:, ::-1]
    moments = counts * centres
    with np.errstate(divide="ignore", invalid="ignore"):
        mean1 = np.cumsum(moments, axis=1) / weight1
        mean2 = (np.cumsum(moments[:, ::-1], axis=1) / weight2[:, ::-1])[:, ::-1]
        variance = weight1[:, :-1] * weight2[:, 1:] * (mean1[:, :-1] - mean2[:, 1:]) ** 2
    thresholds = centres[np.arange(count), np.argmax(variance, axis=1)]
    return np.where(single, low, thresholds), high - low


def binarize_images(images: np.ndarray, background: np.ndarray | None, config: BinarizeConfig,
                    polarity: str, batch: int = 1000) -> np.ndarray:
    """Binarize RGB uint8 N×H×W×3 images in batches (the float scores of 20,000 images would not be small)."""
    parts = [threshold_scores(foreground_score(images[i:i + batch], background, config, polarity), config)
             for i in range(0, len(images), batch)]
    return np.concatenate(parts) if parts else np.zeros((0,) + images.shape[1:3], dtype=np.uint8)


def to_rgb(image: np.ndarray) -> np.ndarray:
    return np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image


def contact_sheet(images: Sequence[np.ndarray], captions: Sequence[str] | None = None, columns: int = 8,
                  scale: int = 2, pad: int = 2) -> Image.Image:
    """A grid of images (gray or RGB, any sizes) with an optional caption under each, for people to look at."""
    if not len(images):
        return Image.new("RGB", (1, 1), "white")
    font = ImageFont.load_default()
    cell_h = max(image.shape[0] for image in images) * scale
    cell_w = max(image.shape[1] for image in images) * scale
    caption_h = 12 if captions is not None else 0
    rows = -(-len(images) // columns)
    sheet = Image.new("RGB", (columns * (cell_w + pad) + pad, rows * (cell_h + caption_h + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for index, image in enumerate(images):
        x = pad + (index % columns) * (cell_w + pad)
        y = pad + (index // columns) * (cell_h + caption_h + pad)
        tile = Image.fromarray(to_rgb(np.asarray(image, dtype=np.uint8)))
        sheet.paste(tile.resize((tile.width * scale, tile.height * scale), Image.NEAREST), (x, y))
        if captions is not None:
            draw.text((x, y + cell_h), str(captions[index])[: cell_w // 6], fill=(0, 0, 0), font=font)
    return sheet


def save_png(path, image: Image.Image | np.ndarray) -> None:
    """Write a PNG atomically (contact sheets are DVC outputs too)."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    write_bytes(path, buffer.getvalue())


def decode_set(blobs: Sequence[bytes], names: Sequence[str], height: int, width: int) -> np.ndarray:
    """Decode encoded images and fit each to height×width: RGB uint8 N×H×W×3 (mixed sizes and modes allowed)."""
    out = np.empty((len(blobs), height, width, 3), dtype=np.uint8)
    for index, (blob, name) in enumerate(progress(zip(blobs, names), total=len(blobs), desc="decode", unit="img")):
        out[index] = fit_to_size(decode_image(blob, f"image {name!r}"), height, width)
    return out

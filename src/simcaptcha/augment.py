"""Random, label-preserving distortions of text images, batched in torch, with Keras ImageDataGenerator meanings.

Synthetic captchas are cleaner than real ones; the model must also see small rotations, shifts, shears, zooms,
warps, blur, noise and JPEG artefacts. Everything works on N×1×H×W float batches (text ≈ 1 on ≈ 0) on whatever
device the images live on, so the offline ``augment`` stage and an on-the-fly training loop share one code path.

Conventions. Geometry maps each *output* pixel to the input point it samples, as Keras does, in coordinates
x to the right and y down about the image centre, composed into one matrix R·T·S·Z (Keras's order):

- a positive rotation turns the content counter-clockwise on screen (as Keras);
- a shift is how far the content moves, in pixels (+x right, +y down); its range is ±range × width/height;
- shear is Keras's: x_in = x - sin(shear)·y, y_in = cos(shear)·y;
- zoom is Keras's sampling factor, drawn separately for x and y: zoom > 1 samples a larger area, so the
  content *shrinks*; zoom < 1 enlarges it;
- fill_mode: constant (cval), nearest (edge pixel repeated), reflect (d c b a | a b c d | d c b a),
  wrap (a b c d | a b c d | a b c d).

A stage whose config is neutral (range 0, zoom [1, 1], ...) is skipped, so the all-neutral config returns its
input unchanged.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from .progress import progress

from .config import AugmentConfig

_UNIFORMS = 18  # per image: rotation, shift x, y, shear, zoom x, y, brightness, blur, jpeg gate, quality, 8 corners
_PADDING = {"constant": "zeros", "nearest": "border", "reflect": "reflection", "wrap": "border"}


@dataclass(frozen=True)
class Draws:
    """The raw random numbers behind a batch in a fixed layout, so per-sample draws concatenate into a batch."""

    uniform: torch.Tensor  # N×18 in [0, 1)
    noise: torch.Tensor | None  # N×1×H×W standard normal; None when noise_std is 0
    elastic: torch.Tensor | None  # N×2×(H+2r)×(W+2r) standard normal (r: smoothing radius); None when alpha is 0


@dataclass(frozen=True)
class Params:
    """One batch's random choices in physical units; callers and tests may build or edit them directly."""

    rotation: torch.Tensor  # N, degrees, positive = counter-clockwise
    shift: torch.Tensor  # N×2 (x, y), pixels the content moves
    shear: torch.Tensor  # N, degrees
    zoom: torch.Tensor  # N×2 (x, y) sampling factors; > 1 shrinks the content
    corners: torch.Tensor  # N×4×2 perspective jitter of the corners (TL, TR, BR, BL), pixels
    brightness: torch.Tensor  # N multipliers
    blur: torch.Tensor  # N Gaussian sigmas, pixels
    jpeg_quality: torch.Tensor  # N integers; 0 leaves the image unencoded
    noise: torch.Tensor | None  # N×1×H×W additive noise
    elastic: torch.Tensor | None  # N×2×H×W displacement (x, y), pixels


# ---------------------------------------------------------------- public entry points
def augment_batch(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
    """Distort a float N×1×H×W batch in [0, 1]; random numbers come from ``generator``.

    ``mask`` (H×W, 1 = the site's fixed noise) stays where it is while the text moves, as on a real site that
    draws its lines after distorting the text: see ``apply_params``.

    They are drawn on the generator's device and moved to the images' device: pass a generator on the
    images' device to avoid the transfer.
    """
    n, _, h, w = images.shape
    if n == 0:
        return images
    return apply_params(images, sample_params(n, h, w, config, generator, images.device), config, mask)


def augment_images(images: np.ndarray, config: AugmentConfig, seed: int,
                   mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Make ``config.variants`` distorted copies of every uint8 N×H×W image; return them and their source index.

    Output row k is variant k % variants of image k // variants (sample-major: image 0's variants come first).
    Each row draws its random numbers from its own generator seeded by (seed mod 2**64, source index, variant),
    so the bytes depend on neither ``config.batch_size`` nor the other images, and raising ``variants`` keeps
    the existing variants.
    """
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"expected uint8 N×H×W images, got {images.dtype} with shape {images.shape}")
    n, h, w = images.shape
    total = n * config.variants
    source = np.arange(total) // config.variants
    out = np.empty((total, h, w), np.uint8)
    fixed = None if mask is None else torch.from_numpy(np.asarray(mask, dtype=np.float32))
    with torch.no_grad(), progress(total=total, desc="augment", unit="img") as bar:
        for start in range(0, total, config.batch_size):
            rows = np.arange(start, min(start + config.batch_size, total))
            batch = torch.from_numpy(images[source[rows]]).unsqueeze(1).float() / 255
            draws = _concat([_draw(1, h, w, config, _row_generator(seed, row, config.variants)) for row in rows])
            augmented = apply_params(batch, _params(draws, config, h, w), config, fixed)
            out[rows] = _to_uint8(augmented)[:, 0].numpy()
            bar.update(len(rows))
    return out, source


def sample_params(n: int, h: int, w: int, config: AugmentConfig, generator: torch.Generator,
                  device: torch.device | str = "cpu") -> Params:
    """Draw ``n`` images' parameters from ``generator`` and place them on ``device``."""
    draws = _draw(n, h, w, config, generator)
    return _params(Draws(*(None if part is None else part.to(device) for part in _parts(draws))), config, h, w)


def apply_params(images: torch.Tensor, params: Params, config: AugmentConfig,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """Apply chosen parameters: geometry, brightness, blur, noise, clamp to [0, 1], JPEG, threshold (in order).

    With a ``mask``, the images carry the site's fixed noise at its place: the mask is warped with them and its
    moved copy removed, and after the photometric steps the fixed mask is drawn back at full intensity.
    """
    if mask is not None:
        mask = mask.to(images.device, images.dtype).expand(len(images), 1, *mask.shape[-2:])
    if _moves_pixels(config):
        if mask is None:
            images = _warp(images, params, config)
        else:
            warped = _warp(torch.cat([images, mask], dim=1), params, config)
            images = _erase_moved_mask(warped[:, :1], warped[:, 1:] > 0.25)
    images = images * params.brightness.view(-1, 1, 1, 1)
    if config.blur_sigma[1] > 0:
        radius = _radius(config.blur_sigma[1])
        images = _separable_blur(F.pad(images, (radius,) * 4, mode="replicate"), params.blur, radius)
    if params.noise is not None:
        images = images + params.noise
    images = images.clamp(0, 1)
    if config.jpeg_probability > 0:
        images = _jpeg(images, params.jpeg_quality)
    if config.threshold > 0:  # back to the binarized sites' representation; with blur, varies stroke width
        images = (images > config.threshold).to(images.dtype)
    if mask is not None:
        images = torch.maximum(images, mask)
    return images


def _erase_moved_mask(images: torch.Tensor, moved: torch.Tensor) -> torch.Tensor:
    """Remove the mask's moved copy, filling its thin lines from the ink beside them.

    Setting them to background would cut every glyph they cross. A moved line pixel instead takes its brightest
    neighbour off the moved lines (every pixel of a line up to two pixels thick has one), so a glyph closes over
    the line and empty background stays empty.
    """
    beside = F.max_pool2d(images * ~moved, kernel_size=3, stride=1, padding=1)
    return torch.where(moved, torch.minimum(beside, images), images)


# ---------------------------------------------------------------- random numbers
def _draw(n: int, h: int, w: int, config: AugmentConfig, generator: torch.Generator) -> Draws:
    """Draw a batch's raw random numbers, always in the same order, on the generator's device."""
    device = generator.device
    uniform = torch.rand(n, _UNIFORMS, generator=generator, device=device)
    noise = torch.randn(n, 1, h, w, generator=generator, device=device) if config.noise_std > 0 else None
    margin = 2 * _radius(config.elastic_sigma)
    elastic = (torch.randn(n, 2, h + margin, w + margin, generator=generator, device=device)
               if config.elastic_alpha > 0 else None)
    return Draws(uniform, noise, elastic)


def _row_generator(seed: int, row: int, variants: int) -> torch.Generator:
    """A generator private to output row ``row``, keyed by (seed, source index, variant)."""
    entropy = [seed % 2**64, row // variants, row % variants]
    return torch.Generator().manual_seed(int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]))


def _parts(draws: Draws) -> list[torch.Tensor | None]:
    return [getattr(draws, f.name) for f in fields(Draws)]


def _concat(draws: list[Draws]) -> Draws:
    """Stack per-sample draws into one batch's draws."""
    return Draws(*(None if parts[0] is None else torch.cat(parts) for parts in zip(*map(_parts, draws))))


def _params(draws: Draws, config: AugmentConfig, h: int, w: int) -> Params:
    """Turn uniforms and normals into the config's ranges."""
    u = draws.uniform
    size = u.new_tensor([w, h])
    (low_zoom, high_zoom), (low_light, high_light) = config.zoom_range, config.brightness_range
    (low_blur, high_blur), (low_quality, high_quality) = config.blur_sigma, config.jpeg_quality
    shift_range = u.new_tensor([config.width_shift_range, config.height_shift_range])
    quality = (low_quality + u[:, 9] * (high_quality - low_quality + 1)).floor().clamp(max=high_quality)
    return Params(
        rotation=(2 * u[:, 0] - 1) * config.rotation_range,
        shift=(2 * u[:, 1:3] - 1) * shift_range * size,
        shear=(2 * u[:, 3] - 1) * config.shear_range,
        zoom=low_zoom + u[:, 4:6] * (high_zoom - low_zoom),
        corners=(2 * u[:, 10:18].view(-1, 4, 2) - 1) * config.perspective * size,
        brightness=low_light + u[:, 6] * (high_light - low_light),
        blur=low_blur + u[:, 7] * (high_blur - low_blur),
        jpeg_quality=torch.where(u[:, 8] < config.jpeg_probability, quality, 0).long(),
        noise=None if draws.noise is None else draws.noise * config.noise_std,
        elastic=None if draws.elastic is None else _elastic_field(draws.elastic, config),
    )


def _elastic_field(normal: torch.Tensor, config: AugmentConfig) -> torch.Tensor:
    """Smooth white noise (drawn with a margin, so the field is stationary up to the borders) to std alpha pixels.

    Smoothing unit-variance noise with a normalised kernel k⊗k leaves a standard deviation of sum(k²).
    """
    radius = _radius(config.elastic_sigma)
    sigma = normal.new_full((len(normal),), config.elastic_sigma)
    spread = _gaussian_kernels(sigma[:1], radius).square().sum()
    return _separable_blur(normal, sigma, radius) * (config.elastic_alpha / spread)


# ---------------------------------------------------------------- geometry
def _moves_pixels(config: AugmentConfig) -> bool:
    return bool(config.rotation_range or config.width_shift_range or config.height_shift_range
                or config.shear_range or config.zoom_range != [1.0, 1.0] or config.elastic_alpha
                or config.perspective)


def _warp(images: torch.Tensor, params: Params, config: AugmentConfig) -> torch.Tensor:
    """Resample every image through its own grid: affine, then perspective, plus the elastic displacement."""
    n, _, h, w = images.shape
    matrix = _affine_matrix(params, h, w)
    grid = F.affine_grid(matrix[:, :2], [n, 1, h, w], align_corners=False)
    if config.perspective > 0:
        grid = _project(grid, _homography(params.corners, h, w))
    if params.elastic is not None:
        grid = grid + params.elastic.permute(0, 2, 3, 1) * grid.new_tensor([2 / w, 2 / h])
    return _sample(images, grid, config)


def _matrices(*entries: torch.Tensor) -> torch.Tensor:
    """N×3×3 matrices from the six per-image entries of their top two rows (bottom row 0 0 1)."""
    zero, one = torch.zeros_like(entries[0]), torch.ones_like(entries[0])
    return torch.stack([*entries, zero, zero, one], -1).view(-1, 3, 3)


def _affine_matrix(params: Params, h: int, w: int) -> torch.Tensor:
    """Keras's output-to-input matrix R·T·S·Z in centred pixels, rescaled to affine_grid's [-1, 1] coordinates."""
    angle, slant = torch.deg2rad(params.rotation), torch.deg2rad(params.shear)
    zero, one = torch.zeros_like(angle), torch.ones_like(angle)
    rotate = _matrices(torch.cos(angle), -torch.sin(angle), zero, torch.sin(angle), torch.cos(angle), zero)
    shift = _matrices(one, zero, -params.shift[:, 0], zero, one, -params.shift[:, 1])
    shear = _matrices(one, -torch.sin(slant), zero, zero, torch.cos(slant), zero)
    zoom = _matrices(params.zoom[:, 0], zero, zero, zero, params.zoom[:, 1], zero)
    scale = angle.new_tensor([2 / w, 2 / h, 1.0])  # pixels -> [-1, 1]: the pixel centres sit at (2i + 1) / w - 1
    return scale.view(3, 1) * (rotate @ shift @ shear @ zoom) / scale.view(1, 3)


def _homography(corners: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The projective map taking each image corner to its jittered position, in [-1, 1] coordinates."""
    n = len(corners)
    source = corners.new_tensor([[-1, -1], [1, -1], [1, 1], [-1, 1]]).expand(n, 4, 2)
    target = source + corners * corners.new_tensor([2 / w, 2 / h])
    (x, y), (u, v) = source.unbind(-1), target.unbind(-1)
    zero, one = torch.zeros_like(x), torch.ones_like(x)
    rows_u = torch.stack([x, y, one, zero, zero, zero, -u * x, -u * y], -1)
    rows_v = torch.stack([zero, zero, zero, x, y, one, -v * x, -v * y], -1)
    solution = torch.linalg.solve(torch.cat([rows_u, rows_v], 1), torch.cat([u, v], 1))
    return torch.cat([solution, one[:, :1]], 1).view(n, 3, 3)


def _project(grid: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Send N×H×W×2 grid points through per-image 3×3 projective matrices."""
    m = matrix[:, None, None]
    x, y = grid.unbind(-1)
    depth = m[..., 2, 0] * x + m[..., 2, 1] * y + m[..., 2, 2]
    return torch.stack([(m[..., 0, 0] * x + m[..., 0, 1] * y + m[..., 0, 2]) / depth,
                        (m[..., 1, 0] * x + m[..., 1, 1] * y + m[..., 1, 2]) / depth], -1)


def _sample(images: torch.Tensor, grid: torch.Tensor, config: AugmentConfig) -> torch.Tensor:
    """Bilinear sampling with Keras's fill modes: grid_sample's paddings cover all but cval and wrap."""
    padding = _PADDING[config.fill_mode]
    if config.fill_mode == "constant":
        return F.grid_sample(images - config.cval, grid, padding_mode=padding, align_corners=False) + config.cval
    if config.fill_mode == "wrap":
        images, grid = _wrap(images, grid)
    return F.grid_sample(images, grid, padding_mode=padding, align_corners=False)


def _wrap(images: torch.Tensor, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold the grid into one period and append the first row and column after the last.

    The appended pixels let bilinear sampling blend the last pixel with the first, so the seam is smooth.
    """
    h, w = images.shape[-2:]
    size = grid.new_tensor([w, h])
    pixel = torch.remainder(((grid + 1) * size - 1) / 2, size)  # in [0, size)
    return F.pad(images, (0, 1, 0, 1), mode="circular"), (2 * pixel + 1) / (size + 1) - 1


# ---------------------------------------------------------------- photometric
def _radius(sigma: float) -> int:
    """Gaussian kernel half-width: 3 sigma. It depends on the config only, so results don't depend on the batch."""
    return math.ceil(3 * sigma)


def _gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """N×(2r+1) normalised Gaussians; sigma 0 gives the identity kernel."""
    offsets = torch.arange(-radius, radius + 1, device=sigma.device, dtype=sigma.dtype)
    kernels = torch.exp(-offsets.square() / (2 * sigma.clamp(min=1e-3).square()[:, None]))
    return kernels / kernels.sum(1, keepdim=True)


def _separable_blur(padded: torch.Tensor, sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """'Valid' Gaussian blur with a sigma per image (the input carries a ``radius`` margin), as sums of shifted views.

    Grouped convolution picks another algorithm for a batch of one, which would make the bytes depend on the
    batch size; weighted sums of shifted views are plain elementwise arithmetic.
    """
    weights = _gaussian_kernels(sigma, radius).T.reshape(2 * radius + 1, -1, 1, 1, 1)
    h, w = padded.shape[-2] - 2 * radius, padded.shape[-1] - 2 * radius
    return _shifted_sum(_shifted_sum(padded, weights, w, -1), weights, h, -2)


def _shifted_sum(x: torch.Tensor, weights: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """Σ_j weights[j] · x[j : j + size] along ``dim``: a 'valid' 1-D convolution, accumulated in place."""
    total = weights[0] * x.narrow(dim, 0, size)
    for j in range(1, len(weights)):
        total += weights[j] * x.narrow(dim, j, size)
    return total


def _jpeg(images: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """Re-encode the images with a nonzero quality through PIL's JPEG codec (on the CPU), like scraped captchas."""
    chosen = quality.nonzero().flatten()
    if len(chosen) == 0:
        return images
    pixels = _to_uint8(images[chosen]).cpu().numpy()
    decoded = np.stack([_jpeg_round_trip(image[0], q) for image, q in zip(pixels, quality[chosen].tolist())])
    out = images.clone()
    out[chosen] = torch.from_numpy(decoded).to(images)[:, None] / 255
    return out


def _jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(buffer))


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)

"""The schema of ``params.yaml``: one dataclass per stage, validated before any stage does work.

Every knob of the pipeline is a field here, with its default, its type and (where it has one) its range.
``load_config`` rejects unknown keys (suggesting the nearest one), wrong types and out-of-range values
with a one-line error naming the key.
"""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import SimcaptchaError
from .fonts import check_font_names

PARAMS_FILE = "params.yaml"
MAX_IMAGES = 2_000_000  # the most images any count may ask for: every set is held in memory
MAX_BATCH = 65_536
MAX_IMAGE_BYTES = 8 * 2**30  # the synthetic sets (captchas, anchors, glyphs, each times augment.variants) at the
#                             working size, as uint8: a bound on what render-fonts and augment hold in memory
# Characters a charset may not hold: a label taken from a file name ends at '.' or '_' (fetch's label_regex),
# paths cannot hold '/' or '\', and a space or control character cannot be told apart in a label.
CHARSET_CLASHES = "._/\\"


def bounded(default: Any, low: float | None = None, high: float | None = None, *, items: int | None = None,
            ordered: bool | None = None) -> Any:
    """A field whose number (or each number of a list) must lie in [low, high].

    A two-number list is a [min, max] range unless ``ordered=False``; ``items`` fixes a list's length.
    """
    pair = isinstance(default, list) and len(default) == 2
    metadata = {"low": low, "high": high, "items": items or (2 if pair else None),
                "ordered": pair if ordered is None else ordered}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


# ---------------------------------------------------------------- fetch
@dataclass(frozen=True)
class SourceConfig:
    """Where one set of real captchas comes from, and how its labels are read."""

    sources: list[str] = field(default_factory=list)  # URLs or paths: challenge JSON, zip/tar, folder, generator:
    repeat: int = bounded(1, 1, 10_000)  # fetch each source this many times (an endpoint that serves new captchas per call)
    labels: Literal["none", "filename", "csv", "json"] = "none"
    label_regex: str = r"^([^._]+)"  # first group, applied to the file name without folders
    labels_csv: str = ""  # path or URL of a name,label CSV; images without a row are dropped
    labels_json: str = ""  # path or URL of a JSON object {name: label}; images without an entry are dropped
    sha256: dict[str, str] = field(default_factory=dict)  # source -> expected sha256 of its bytes
    limit: int = bounded(0, 0, MAX_IMAGES)  # keep at most this many images (0 = all), in source order


@dataclass(frozen=True)
class FetchConfig:
    unlabelled: SourceConfig = field(default_factory=SourceConfig)
    labelled: SourceConfig = field(default_factory=SourceConfig)
    timeout_s: float = bounded(30.0, 0.1, 3600.0)
    retries: int = bounded(4, 0, 100)
    backoff_s: float = bounded(1.0, 0.0, 600.0)
    max_bytes: int = bounded(512 * 2**20, 1, 8 * 2**30)  # refuse a download, local file, folder or archive whose
    #                                                      images hold more bytes: they are all held in memory
    shard_size: int = bounded(10000, 1, MAX_IMAGES)


# ---------------------------------------------------------------- binarize
@dataclass(frozen=True)
class BinarizeConfig:
    size: list[int] = bounded([50, 100], 8, 1024, ordered=False)  # height, width of every output image (aspect
    #                                                                kept, padded)
    background: Literal["none", "columns", "rows", "pixels"] = "columns"  # estimated from the pool, subtracted
    gray: Literal["luma", "min", "max"] = "luma"  # channel reduction when background is "none"
    polarity: Literal["auto", "light", "dark"] = "auto"  # text colour in the source; output text is always 255
    method: Literal["otsu", "fixed", "sauvola", "none"] = "otsu"
    threshold: float = bounded(0.5, 0.0, 1.0)  # for method "fixed", on the 0..1 foreground score
    otsu_scale: float = bounded(1.0, 0.25, 4.0)  # method "otsu": Otsu's level times this; above 1 thins strokes
    #                                             and opens gaps that blur closed (the dot of a JPEG's i)
    sauvola_window: int = bounded(15, 3, 1025)
    sample_sheet: int = bounded(32, 1, 1000)  # images in the before/after contact sheet
    shard_size: int = bounded(10000, 1, MAX_IMAGES)


# ---------------------------------------------------------------- mask
@dataclass(frozen=True)
class MaskConfig:
    method: Literal["mean", "and", "none"] = "mean"
    threshold: float = bounded(0.95, 0.0, 1.0)  # "mean": fixed noise is lit in at least this share of images
    dilate: int = bounded(0, 0, 5)  # grow the mask by this many pixels


# ---------------------------------------------------------------- render-fonts
@dataclass(frozen=True)
class RenderConfig:
    charset: str = "abcdefghijklmnopqrstuvwxyz0123456789"
    length: list[int] = bounded([4, 4], 1, 64)  # min, max characters per captcha
    count: int = bounded(20000, 1, MAX_IMAGES)  # synthetic captchas
    glyph_count: int = bounded(20000, 0, MAX_IMAGES)  # single-glyph images (the letters trick)
    fonts: list[str] = field(default_factory=lambda: ["*"])  # vendored family names; "*" all; "system" adds
    #                                                          system fonts
    font_size: list[int] = bounded([24, 32], 4, 512)  # em size in pixels, min, max
    stroke_width: list[int] = bounded([0, 1], 0, 8)  # extra outline, pixels
    rotation: list[float] = bounded([-30.0, 30.0], -180, 180)  # degrees per character
    glyph_width: list[float] = bounded([1.0, 1.0], 0.2, 5.0)  # each character's width times a factor from this
    #                                                            range: a face narrower or wider than the fonts'
    anchor_glyph_width: list[float] = bounded([0.5, 1.0], 0.2, 5.0)  # glyph_width of the anchor set (render.count
    #                                    more captchas) self-training keeps learning from: narrowed characters stop
    #                                    the reader telling a site's narrow m from n by the fonts' widths
    spacing: list[int] = bounded([0, 12], -64, 256)  # pixels between neighbouring characters (negative overlaps)
    y_offset: list[int] = bounded([-10, 10], -256, 256)  # pixels per character from the vertical centre
    placement: Literal["pool", "spacing"] = "pool"  # pool: text spans the columns the pool's text spans (estimate
    #                                                 stage), gaps even ± gap_jitter; spacing: gaps from spacing
    gap_jitter: int = bounded(2, 0, 64)  # pixels each gap may differ from the even share (placement pool)
    lines: list[int] = bounded([0, 0], 0, 16)  # random strokes across the text per captcha, min, max
    line_width: list[int] = bounded([1, 2], 1, 16)  # pixels
    line_bends: list[int] = bounded([0, 0], 0, 8)  # corners per random line, min, max (0: straight)
    text_intensity: list[int] = bounded([255, 255], 0, 255)
    background_intensity: list[int] = bounded([0, 0], 0, 255)
    salt: float = bounded(0.0, 0.0, 1.0)  # share of pixels flipped at random
    use_mask: bool = True  # composite the site's fixed-noise mask
    case_insensitive: bool = False  # the site draws each letter in either case but its labels do not tell them
    #   apart: letters are drawn in a random case and labelled in the charset's, and real labels are read in it
    closest_fonts: int = bounded(8, 0, 1000)  # draw the N fonts of render.fonts closest to the pool, each at its fitted
    #                                     size and outline (the estimate stage); 0: all at font_size/stroke_width
    size_spread: float = bounded(0.1, 0.0, 0.9)  # fitted em size +- this share
    seed: int = bounded(0, 0, 2**31 - 1)
    workers: int = bounded(0, 0, 256)  # processes; 0 = one per core
    shard_size: int = bounded(10000, 1, MAX_IMAGES)

    def __post_init__(self) -> None:
        if not self.charset:
            raise SimcaptchaError("params: render.charset is empty")
        if len(set(self.charset)) != len(self.charset):
            raise SimcaptchaError(f"params: render.charset {self.charset!r} repeats a character")
        clashes = sorted({char for char in self.charset
                          if char in CHARSET_CLASHES or char.isspace() or not char.isprintable()})
        if clashes:
            raise SimcaptchaError(f"params: render.charset holds {''.join(clashes)!r}, which labels cannot carry "
                                  "(file-name labels end at '.' or '_'; no path separator, space or control character)")
        check_font_names(self.fonts)
        both = sorted({char.lower() for char in self.charset
                       if char.swapcase() != char and char.swapcase() in self.charset})
        if self.case_insensitive and both:
            raise SimcaptchaError(f"params: render.case_insensitive: render.charset holds both cases of "
                                  f"{''.join(both)!r}; give each letter once, in the case its labels use")

    def drawn_charset(self) -> str:
        """Every character a captcha may draw: the charset, and with case_insensitive its letters' other case."""
        if not self.case_insensitive:
            return self.charset
        return self.charset + "".join(char.swapcase() for char in self.charset
                                      if char.swapcase() != char and len(char.swapcase()) == 1)

    def label_of(self, text: str) -> str:
        """A real label as a reader of this charset gives it: with case_insensitive each letter outside the
        charset whose other case is in it is read in that case."""
        if not self.case_insensitive:
            return text
        return "".join(char.swapcase() if char not in self.charset and char.swapcase() in self.charset else char
                       for char in text)


# ---------------------------------------------------------------- estimate
@dataclass(frozen=True)
class EstimateConfig:
    sample: int = bounded(400, 1, 100_000)  # pool captchas measured
    probe: int = bounded(100, 10, 10_000)  # captchas rendered per candidate font and size
    min_area: int = bounded(30, 1, 100_000)  # smaller ink components (dots, line fragments) are not text
    opening: int = bounded(0, 0, 3)  # first remove strokes thinner than 2·opening + 1 px (random thin lines)
    seed: int = bounded(0, 0, 2**31 - 1)
    workers: int = bounded(0, 0, 256)  # processes; 0 = one per core


# ---------------------------------------------------------------- augment
@dataclass(frozen=True)
class AugmentConfig:
    enabled: bool = True  # false: the augment stage passes the rendered images through (for ablations)
    variants: int = bounded(1, 1, 100)  # augmented copies stored per synthetic image
    rotation_range: float = bounded(5.0, 0.0, 180.0)  # degrees, uniform in ±range (Keras)
    width_shift_range: float = bounded(0.05, 0.0, 1.0)  # fraction of width (Keras)
    height_shift_range: float = bounded(0.05, 0.0, 1.0)  # fraction of height (Keras)
    shear_range: float = bounded(5.0, 0.0, 80.0)  # degrees (Keras)
    zoom_range: list[float] = bounded([0.95, 1.05], 0.1, 10.0)  # scale factor range (Keras)
    brightness_range: list[float] = bounded([0.8, 1.0], 0.0, 4.0)  # multiplier range (Keras)
    fill_mode: Literal["constant", "nearest", "reflect", "wrap"] = "constant"
    cval: float = bounded(0.0, 0.0, 1.0)
    blur_sigma: list[float] = bounded([0.0, 0.8], 0.0, 10.0)  # Gaussian blur, pixels
    noise_std: float = bounded(0.03, 0.0, 1.0)  # additive Gaussian noise on 0..1 images
    elastic_alpha: float = bounded(0.0, 0.0, 100.0)  # elastic displacement amplitude, pixels
    elastic_sigma: float = bounded(4.0, 0.5, 50.0)  # smoothness of the displacement field, pixels
    perspective: float = bounded(0.0, 0.0, 0.5)  # corner jitter, fraction of the image size
    jpeg_probability: float = bounded(0.0, 0.0, 1.0)  # share of images re-encoded as JPEG
    jpeg_quality: list[int] = bounded([30, 95], 1, 100)
    threshold: float = bounded(0.5, 0.0, 1.0)  # re-binarize at the end (0 = keep gray; use 0 with binarize "none")
    seed: int = bounded(0, 0, 2**31 - 1)
    batch_size: int = bounded(512, 1, MAX_BATCH)
    shard_size: int = bounded(10000, 1, MAX_IMAGES)


# ---------------------------------------------------------------- train-classifier
@dataclass(frozen=True)
class ClassifierConfig:
    head: Literal["positions", "ctc"] = "positions"  # per-position heads (fixed length) or CTC (variable length)
    channels: list[int] = bounded([16, 32, 64, 96], 1, 1024, items=4)  # conv widths of the 4 blocks
    dropout: float = bounded(0.2, 0.0, 0.9)
    epochs: int = bounded(8, 1, 1000)
    batch_size: int = bounded(64, 1, MAX_BATCH)
    learning_rate: float = bounded(2e-3, 0.0)
    weight_decay: float = bounded(1e-4, 0.0)
    validation_share: float = bounded(0.05, 0.0, 0.5)  # held-out synthetic images (never real ones)
    augment_on_the_fly: bool = True  # apply the augment section's transforms to every training batch again
    precision: Literal["auto", "float32", "bfloat16"] = "auto"  # bfloat16: convolutions under autocast, faster only
    #   where the hardware has it (CPUs with AMX or AVX-512 BF16, GPUs), several times slower where it is emulated;
    #   auto detects it
    real_labels: int = bounded(0, 0, MAX_IMAGES)  # real labelled captchas allowed into training; evaluate skips them
    refined_epochs: int = bounded(2, 0, 1000)  # the refined reader fine-tunes the synthetic reader this many epochs: a
    #   refined image is a synthetic one with a few pixels changed, which that reader already reads; 0: from scratch
    refined_learning_rate: float = bounded(5e-4, 0.0)  # its peak rate: lower than a fresh reader's, to adapt, not relearn
    seed: int = bounded(0, 0, 2**31 - 1)


# ---------------------------------------------------------------- self-train
@dataclass(frozen=True)
class SelfTrainConfig:
    start: Literal["synthetic", "refined"] = "refined"  # the reader that labels the pool first, and its data
    rounds: int = bounded(12, 0, 1000)  # label the pool, keep the confident share, train on it with the synthetic set
    keep: list[float] = bounded([0.3, 1.0], 0.0, 1.0)  # share of the pool kept, first round to last (linear)
    epochs: int = bounded(1, 1, 1000)  # per round, continuing from the previous round's weights
    real_share: float = bounded(0.5, 0.0, 1.0)  # least share of a round's images that are pseudo-labelled: a small
    #                                             pool is repeated in place of synthetic images ...
    max_repeats: int = bounded(8, 1, 1000)  # ... but each at most this often: a reader that sees its own readings of a
    #                                   few hundred images dozens of times a round learns their errors too
    synthetic_share: float = bounded(1.0, 0.0, 1.0)  # share of the synthetic set drawn anew for each round: smaller
    #                                                  rounds relabel the pool more often for the same time
    learning_rate: float = bounded(1e-3, 0.0)
    exclude_labelled: bool = True  # keep the evaluation captchas out of the pool, so their figures stay held out
    holdout: int = bounded(500, 0, MAX_IMAGES)  # pool captchas no reader trains on (at most a tenth of the pool):
    #   the label-free accuracy estimate reads them; 500 keep its sampling error under 2 points
    balance_rounds: int = bounded(1, 0, 1000)  # rounds, from the first, whose readings have the characters their reader
    #                                     under-reads raised toward an equal share (1: the start reader's only)
    student_channels: list[int] = bounded([], 1, 1024)  # a fresh reader this wide learns the last round's readings
    #                                                    (noisy student) and is the answer; [] : no student
    student_epochs: int = bounded(6, 1, 1000)
    student_synthetic_share: float = bounded(0.5, 0.0, 1.0)  # share of the synthetic set beside the pool readings

    def __post_init__(self) -> None:
        if self.student_channels and len(self.student_channels) != 4:
            raise SimcaptchaError(f"params: selftrain.student_channels must list 4 conv widths (or none), got "
                                  f"{self.student_channels!r}")


# ---------------------------------------------------------------- train-gan
@dataclass(frozen=True)
class GanConfig:
    refiner_channels: int = bounded(16, 1, 256)  # narrower than the paper's 64 x 4 blocks: CPU-sized
    refiner_blocks: int = bounded(3, 1, 16)
    discriminator_channels: int = bounded(32, 1, 256)
    steps: int = bounded(600, 0, 1_000_000)
    batch_size: int = bounded(32, 2, MAX_BATCH)
    pretrain_refiner_steps: int = bounded(50, 0, 1_000_000)  # self-regularisation only, before the adversarial game
    pretrain_discriminator_steps: int = bounded(50, 0, 1_000_000)
    refiner_updates: int = bounded(1, 1, 100)  # Kg: refiner steps per training step
    discriminator_updates: int = bounded(1, 1, 100)  # Kd: discriminator steps per training step
    optimizer: Literal["adam", "sgd"] = "adam"
    refiner_learning_rate: float = bounded(1e-3, 0.0)
    discriminator_learning_rate: float = bounded(1e-3, 0.0)
    self_regularization: float = bounded(0.5, 0.0)  # lambda in lambda * mean over pixels |R(x) - x|
    consistency: float = bounded(1.0, 0.0)  # weight of the synthetic reader's loss on R(x) against x's label
    history_size: int = bounded(2560, 0, 100_000)  # refined images kept for the discriminator (half of each fake batch)
    holdout: int = bounded(500, 0, MAX_IMAGES)  # real pool images kept out of training, to judge the discriminator in refine
    checkpoint_every: int = bounded(100, 1, 1_000_000)
    collapse_change: float = bounded(0.1, 0.0, 1.0)  # refiner steps changing pixels by more on average ...
    collapse_steps: int = bounded(10, 1, 1_000_000)  # ... this many in a row have collapsed: stop, keep the last checkpoint's
    #                                       from before they began (collapse_change 0: never stop)
    seed: int = bounded(0, 0, 2**31 - 1)


# ---------------------------------------------------------------- refine
@dataclass(frozen=True)
class RefineConfig:
    drop_flipped: bool = True  # drop refined images whose reading the synthetic reader changes
    threshold: float = bounded(0.5, 0.0, 1.0)  # re-binarize refined images like the real ones (0 = keep gray)
    batch_size: int = bounded(256, 1, MAX_BATCH)
    sample_sheet: int = bounded(24, 1, 1000)
    shard_size: int = bounded(10000, 1, MAX_IMAGES)


# ---------------------------------------------------------------- evaluate
@dataclass(frozen=True)
class EvaluateConfig:
    worst_errors: int = bounded(32, 0, 1000)  # captchas in the worst-errors contact sheet
    batch_size: int = bounded(256, 1, MAX_BATCH)


# ---------------------------------------------------------------- label-budget
@dataclass(frozen=True)
class BudgetConfig:
    """The label-budget study: what N real labels are worth alone, beside synthetic and beside refined images."""

    sizes: list[int] = bounded([0, 10, 50, 100], 0, ordered=False)  # N: real labelled captchas per point
    seeds: list[int] = bounded([0], 0, ordered=False)  # one point per seed: which N captchas, initial weights, order
    test_size: int = bounded(140, 1, MAX_IMAGES)  # fixed held-out real captchas every point is judged on, never trained on
    split_seed: int = bounded(0, 0, 2**31 - 1)  # picks the test captchas
    steps: int = bounded(200, 1, 1_000_000)  # batches of real captchas per point (N > 0), the same in every mode
    batch_size: int = bounded(64, 2, MAX_BATCH)
    synthetic_share: float = bounded(0.5, 0.0, 0.9)  # share of synthetic images in the mix beside few real ones
    synthetic_halving: int = bounded(100, 1, MAX_IMAGES)  # N at which that share has halved: more labels, less synthetic
    learning_rate: float = bounded(2e-3, 0.0)

    def __post_init__(self) -> None:
        for key in ("sizes", "seeds"):  # each value names a DVC stage of the grid
            values = getattr(self, key)
            if not values or len(set(values)) != len(values):
                raise SimcaptchaError(f"params: budget.{key} must list distinct numbers, got {values!r}")


@dataclass(frozen=True)
class Config:
    fetch: FetchConfig = field(default_factory=FetchConfig)
    binarize: BinarizeConfig = field(default_factory=BinarizeConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    estimate: EstimateConfig = field(default_factory=EstimateConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    selftrain: SelfTrainConfig = field(default_factory=SelfTrainConfig)
    gan: GanConfig = field(default_factory=GanConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)

    def __post_init__(self) -> None:
        height, width = self.binarize.size
        images = (2 * self.render.count + self.render.glyph_count) * self.augment.variants
        if images * height * width > MAX_IMAGE_BYTES:
            raise SimcaptchaError(f"params: render.count, render.glyph_count and augment.variants ask for {images} "
                                  f"synthetic images of {height}x{width}, above {MAX_IMAGE_BYTES // 2**30} GiB in memory")
        if self.classifier.head == "positions" and self.render.length[0] != self.render.length[1]:
            raise SimcaptchaError(f"params: classifier.head 'positions' reads a fixed length, but render.length is "
                                  f"{self.render.length}; use classifier.head 'ctc'")

    @property
    def training_augment(self) -> AugmentConfig | None:
        """The transforms readers apply to every training batch, or None (classifier.augment_on_the_fly off, or
        augment.enabled off for an ablation)."""
        return self.augment if self.classifier.augment_on_the_fly and self.augment.enabled else None


# ---------------------------------------------------------------- parsing
def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint).replace("typing.", ""))


def _check_range(value: Any, key: str, low: float | None, high: float | None) -> None:
    if value != value or value in (float("inf"), float("-inf")):
        raise SimcaptchaError(f"params: {key} must be a finite number, got {value}")
    if low is not None and value < low:
        raise SimcaptchaError(f"params: {key} = {value} is below its minimum {low}")
    if high is not None and value > high:
        raise SimcaptchaError(f"params: {key} = {value} is above its maximum {high}")


def _coerce(hint: Any, value: Any, key: str, low: float | None = None, high: float | None = None) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if is_dataclass(hint):
        return parse_section(hint, value, key)
    if origin is Literal:
        if value not in args:
            raise SimcaptchaError(f"params: {key} = {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise SimcaptchaError(f"params: {key} must be a list, got {value!r}")
        items = [_coerce(args[0], item, f"{key}[{i}]", low, high) for i, item in enumerate(value)]
        return items
    if origin is dict:
        if not isinstance(value, dict):
            raise SimcaptchaError(f"params: {key} must be a mapping, got {value!r}")
        return {_coerce(args[0], k, key): _coerce(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return _coerce(option, value, key, low, high)
            except SimcaptchaError:
                continue
        raise SimcaptchaError(f"params: {key} = {value!r} is not a {_type_name(hint)}")
    if hint is bool:
        if not isinstance(value, bool):
            raise SimcaptchaError(f"params: {key} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SimcaptchaError(f"params: {key} must be an integer, got {value!r}")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SimcaptchaError(f"params: {key} must be a number, got {value!r}")
        value = float(value)
    elif hint is str:
        if not isinstance(value, str):
            raise SimcaptchaError(f"params: {key} must be a string, got {value!r}")
        return value
    elif hint is type(None):
        if value is not None:
            raise SimcaptchaError(f"params: {key} must be null, got {value!r}")
        return value
    else:  # pragma: no cover - a schema bug, not a user error
        raise TypeError(f"unsupported type {hint!r} for {key}")
    _check_range(value, key, low, high)
    return value


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else str(key)


def parse_section(cls: type, data: Any, where: str) -> Any:
    """Build dataclass ``cls`` from a params mapping, naming ``where.key`` in every error."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SimcaptchaError(f"params: {where or 'the file'} must be a mapping, got {data!r}")
    known = [f.name for f in fields(cls)]
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {_join(where, close[0])}?)" if close else ""
            raise SimcaptchaError(f"params: unknown key {_join(where, key)}{hint}")
    hints = typing.get_type_hints(cls)
    values = {}
    for f in fields(cls):
        if f.name in data:
            values[f.name] = _coerce(hints[f.name], data[f.name], _join(where, f.name),
                                     f.metadata.get("low"), f.metadata.get("high"))
        elif f.default is MISSING and f.default_factory is MISSING:  # pragma: no cover - all fields have defaults
            raise SimcaptchaError(f"params: missing key {_join(where, f.name)}")
    config = cls(**values)
    _check_pairs(config, where)
    return config


def _check_pairs(config: Any, where: str) -> None:
    """Lists with a fixed number of items, and [min, max] ranges in order."""
    for f in fields(config):
        value, items = getattr(config, f.name), f.metadata.get("items")
        if items is not None and len(value) != items:
            count = {2: "two", 3: "three", 4: "four"}.get(items, str(items))
            raise SimcaptchaError(f"params: {_join(where, f.name)} must have exactly {count} numbers, got {value!r}")
        if f.metadata.get("ordered") and value[0] > value[1]:
            raise SimcaptchaError(f"params: {_join(where, f.name)} = {value!r}: the minimum is above the maximum")


def read_yaml(path: str | Path) -> Any:
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SimcaptchaError(f"{path}: no such file") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise SimcaptchaError(f"{path}:{where} is not valid YAML") from None


def load_config(path: str | Path = PARAMS_FILE) -> Config:
    """Read and validate the whole params file; every stage calls this before doing any work."""
    return parse_section(Config, read_yaml(path), "")

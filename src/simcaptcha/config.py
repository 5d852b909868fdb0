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

PARAMS_FILE = "params.yaml"


def bounded(default: Any, low: float | None = None, high: float | None = None) -> Any:
    """A field whose number (or each number of a pair) must lie in [low, high]."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"low": low, "high": high})
    return field(default=default, metadata={"low": low, "high": high})


# ---------------------------------------------------------------- fetch
@dataclass(frozen=True)
class SourceConfig:
    """Where one set of real captchas comes from, and how its labels are read."""

    sources: list[str] = field(default_factory=list)  # URLs or paths: challenge JSON, zip/tar, folder, generator:
    repeat: int = bounded(1, 1)  # fetch each source this many times (an endpoint that serves new captchas per call)
    labels: Literal["none", "filename", "csv"] = "none"
    label_regex: str = r"^([^._]+)"  # first group, applied to the file name without folders
    labels_csv: str = ""  # path or URL of a name,label CSV; images without a row are dropped
    sha256: dict[str, str] = field(default_factory=dict)  # source -> expected sha256 of its bytes
    limit: int = bounded(0, 0)  # keep at most this many images (0 = all), in source order


@dataclass(frozen=True)
class FetchConfig:
    unlabelled: SourceConfig = field(default_factory=SourceConfig)
    labelled: SourceConfig = field(default_factory=SourceConfig)
    timeout_s: float = bounded(30.0, 0.1)
    retries: int = bounded(4, 0)
    backoff_s: float = bounded(1.0, 0.0)
    max_bytes: int = bounded(2_000_000_000, 1)  # refuse a download or archive member set larger than this
    shard_size: int = bounded(10000, 1)


# ---------------------------------------------------------------- binarize
@dataclass(frozen=True)
class BinarizeConfig:
    size: list[int] = bounded([50, 100], 8, 1024)  # height, width of every output image (aspect kept, padded)
    background: Literal["none", "columns", "rows", "pixels"] = "columns"  # estimated from the pool, subtracted
    gray: Literal["luma", "min", "max"] = "luma"  # channel reduction when background is "none"
    polarity: Literal["auto", "light", "dark"] = "auto"  # text colour in the source; output text is always 255
    method: Literal["otsu", "fixed", "sauvola", "none"] = "otsu"
    threshold: float = bounded(0.5, 0.0, 1.0)  # for method "fixed", on the 0..1 foreground score
    sauvola_window: int = bounded(15, 3)
    sample_sheet: int = bounded(32, 1)  # images in the before/after contact sheet
    shard_size: int = bounded(10000, 1)


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
    count: int = bounded(20000, 1)  # synthetic captchas
    glyph_count: int = bounded(20000, 0)  # single-glyph images (the letters trick)
    fonts: list[str] = field(default_factory=lambda: ["*"])  # vendored family names; "*" all; "system" adds system fonts
    font_size: list[int] = bounded([26, 34], 4, 512)  # em size in pixels, min, max
    stroke_width: list[int] = bounded([0, 1], 0, 8)  # extra outline, pixels
    rotation: list[float] = bounded([-30.0, 30.0], -180, 180)  # degrees per character
    spacing: list[int] = bounded([-2, 8], -64, 256)  # pixels between neighbouring characters (negative overlaps)
    y_offset: list[int] = bounded([-8, 8], -256, 256)  # pixels per character from the vertical centre
    text_intensity: list[int] = bounded([255, 255], 0, 255)
    background_intensity: list[int] = bounded([0, 0], 0, 255)
    salt: float = bounded(0.0, 0.0, 1.0)  # share of pixels flipped at random
    use_mask: bool = True  # composite the site's fixed-noise mask
    seed: int = bounded(0, 0)
    workers: int = bounded(0, 0)  # processes; 0 = one per core
    shard_size: int = bounded(10000, 1)

    def __post_init__(self) -> None:
        if not self.charset:
            raise SimcaptchaError("params: render.charset is empty")
        if len(set(self.charset)) != len(self.charset):
            raise SimcaptchaError(f"params: render.charset {self.charset!r} repeats a character")


# ---------------------------------------------------------------- augment
@dataclass(frozen=True)
class AugmentConfig:
    variants: int = bounded(1, 1)  # augmented copies stored per synthetic image
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
    seed: int = bounded(0, 0)
    batch_size: int = bounded(512, 1)
    shard_size: int = bounded(10000, 1)


@dataclass(frozen=True)
class Config:
    fetch: FetchConfig = field(default_factory=FetchConfig)
    binarize: BinarizeConfig = field(default_factory=BinarizeConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


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
    """A two-number list is a [min, max] range: it must have two items in order."""
    hints = typing.get_type_hints(type(config))
    for f in fields(config):
        value = getattr(config, f.name)
        if typing.get_origin(hints[f.name]) is list and typing.get_args(hints[f.name])[0] in (int, float):
            if len(value) != 2:
                raise SimcaptchaError(f"params: {_join(where, f.name)} must have exactly two numbers, got {value!r}")
            if f.name != "size" and value[0] > value[1]:
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

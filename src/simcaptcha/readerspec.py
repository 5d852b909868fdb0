"""What a reader reads and how its images are prepared: the spec a model file's metadata describes, checked field
by field. Torch is imported only to build the network or its label coder, so a reader exported to ONNX is read
without it (``simcaptcha predict`` then starts without loading torch)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .config import BinarizeConfig, parse_section
from .errors import SimcaptchaError

if TYPE_CHECKING:
    from .models import Reader
    from .reading import LabelCoder

HEADS = ("positions", "ctc")
POLARITIES = ("light", "dark")
MAX_LENGTH = 64  # render.length's bound
MAX_CHANNELS = 1024  # classifier.channels' bound
MIN_SIDE, MAX_SIDE = 8, 1024  # binarize.size's bounds


@dataclass(frozen=True)
class ReaderSpec:
    """What a reader reads: its charset, captcha length, head and input size, and how images are prepared."""

    charset: str
    length: int  # the longest label (positions: every label)
    head: str
    channels: tuple[int, ...]
    height: int
    width: int
    binarize: BinarizeConfig
    polarity: str
    trained_on_real: tuple[str, ...] = ()  # names of real labelled captchas used in training

    def build(self, dropout: float = 0.0) -> Reader:
        """The network; ``dropout`` acts only while it trains, so the file does not keep it."""
        from .models import Reader  # torch: only where a network is built
        return Reader(self.height, self.width, len(self.charset), self.length, self.head, self.channels, dropout)

    def coder(self) -> LabelCoder:
        """Labels <-> this reader's classes, for training and reading with torch."""
        from .reading import LabelCoder  # torch
        return LabelCoder(self.charset, self.length, self.head)


def reader_spec(path: Path, metadata: dict[str, str]) -> ReaderSpec:
    """The spec the metadata describes, every field checked: a wrong one names the file and the field."""
    try:
        values = {key: json.loads(metadata[key]) for key in ReaderSpec.__dataclass_fields__}
    except (KeyError, json.JSONDecodeError) as error:
        raise SimcaptchaError(f"{path}: model metadata is incomplete ({error})") from None

    def refuse(key: str, wanted: str) -> SimcaptchaError:
        return SimcaptchaError(f"{path}: model metadata {key} = {values[key]!r:.60} is not {wanted}")

    def whole(value: object, low: int, high: int) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high

    charset = values["charset"]
    if not isinstance(charset, str) or not charset or len(set(charset)) != len(charset):
        raise refuse("charset", "a non-empty string of distinct characters")
    if not whole(values["length"], 1, MAX_LENGTH):
        raise refuse("length", f"a whole number from 1 to {MAX_LENGTH}")
    if values["head"] not in HEADS:
        raise refuse("head", f"one of {', '.join(HEADS)}")
    channels = values["channels"]
    if not (isinstance(channels, list) and len(channels) == 4 and all(whole(c, 1, MAX_CHANNELS) for c in channels)):
        raise refuse("channels", f"four whole numbers from 1 to {MAX_CHANNELS}")
    for key in ("height", "width"):
        if not whole(values[key], MIN_SIDE, MAX_SIDE):
            raise refuse(key, f"a whole number of pixels from {MIN_SIDE} to {MAX_SIDE}")
    if values["polarity"] not in POLARITIES:
        raise refuse("polarity", f"one of {', '.join(POLARITIES)}")
    names = values["trained_on_real"]
    if not (isinstance(names, list) and all(isinstance(name, str) for name in names)):
        raise refuse("trained_on_real", "a list of captcha names")
    try:
        binarize = parse_section(BinarizeConfig, values["binarize"], "binarize")
    except SimcaptchaError as error:
        raise SimcaptchaError(f"{path}: model metadata {str(error).removeprefix('params: ')}") from None
    return ReaderSpec(**{**values, "binarize": binarize, "channels": tuple(channels), "trained_on_real": tuple(names)})

"""Self-describing model files: safetensors weights plus everything needed to read a new image.

The metadata carries charset, length, head, widths, image size and the site's preprocessing (binarize params,
polarity; the background estimate is a tensor), so ``simcaptcha predict`` needs nothing but the file. Loading
never unpickles: safetensors holds only tensors and strings.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from .config import BinarizeConfig, GanConfig, parse_section
from .errors import SimcaptchaError
from .models import PatchDiscriminator, Reader, Refiner
from .reading import LabelCoder
from .store import write_bytes

READER_FORMAT = "simcaptcha-reader/1"
GAN_FORMAT = "simcaptcha-gan/1"
BACKGROUND_KEY = "preprocessing.background"


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
        return Reader(self.height, self.width, len(self.charset), self.length, self.head, self.channels, dropout)

    def coder(self) -> LabelCoder:
        """Labels <-> this reader's classes."""
        return LabelCoder(self.charset, self.length, self.head)


def _write(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    data = save({key: value.detach().cpu().contiguous() for key, value in tensors.items()}, metadata)
    write_bytes(path, _sorted_header(data))


def _sorted_header(data: bytes) -> bytes:
    """The same safetensors file with its JSON header's keys sorted: safetensors writes the metadata in hash-map
    order, which changes from process to process, so the same model would otherwise give different bytes."""
    size = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8:8 + size]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the tensor data stays 8-byte aligned
    return len(header).to_bytes(8, "little") + header + data[8 + size:]


def _read(path: Path, expected_format: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except FileNotFoundError:
        raise SimcaptchaError(f"{path}: no such model file") from None
    except (SafetensorError, OSError, ValueError) as error:
        raise SimcaptchaError(f"{path}: not a safetensors model file ({error})") from None
    found = metadata.get("format", "none")
    if found != expected_format:
        raise SimcaptchaError(f"{path}: model format {found!r}, expected {expected_format!r}")
    return tensors, metadata


def save_reader(path: str | Path, model: Reader, spec: ReaderSpec, background: np.ndarray | None) -> None:
    tensors = dict(model.state_dict())
    if background is not None:
        tensors[BACKGROUND_KEY] = torch.from_numpy(np.ascontiguousarray(background, dtype=np.float32))
    fields = asdict(spec)
    metadata = {"format": READER_FORMAT, **{key: json.dumps(value) for key, value in fields.items()}}
    _write(Path(path), tensors, metadata)


def load_reader(path: str | Path, dropout: float = 0.0) -> tuple[Reader, ReaderSpec, np.ndarray | None]:
    """The reader in eval mode, its spec, and the site's background estimate (or None). ``dropout``: for a
    reader that trains on (self-train, the label-budget points that start from a reader)."""
    path = Path(path)
    tensors, metadata = _read(path, READER_FORMAT)
    try:
        values = {key: json.loads(metadata[key]) for key in ReaderSpec.__dataclass_fields__}
    except (KeyError, json.JSONDecodeError) as error:
        raise SimcaptchaError(f"{path}: model metadata is incomplete ({error})") from None
    values["binarize"] = parse_section(BinarizeConfig, values["binarize"], "binarize")
    values["channels"] = tuple(values["channels"])
    values["trained_on_real"] = tuple(values["trained_on_real"])
    spec = ReaderSpec(**values)
    background = tensors.pop(BACKGROUND_KEY, None)
    model = spec.build(dropout)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as error:
        raise SimcaptchaError(f"{path}: weights do not match the model it describes ({str(error)[:200]})") from None
    return model.eval(), spec, None if background is None else background.numpy()


def save_gan(path: str | Path, refiner: Refiner, discriminator: PatchDiscriminator, config: GanConfig) -> None:
    tensors = {f"refiner.{key}": value for key, value in refiner.state_dict().items()}
    tensors.update({f"discriminator.{key}": value for key, value in discriminator.state_dict().items()})
    metadata = {"format": GAN_FORMAT, "refiner_channels": str(config.refiner_channels),
                "refiner_blocks": str(config.refiner_blocks),
                "discriminator_channels": str(config.discriminator_channels)}
    _write(Path(path), tensors, metadata)


def load_gan(path: str | Path) -> tuple[Refiner, PatchDiscriminator]:
    """The trained refiner and discriminator, in eval mode."""
    tensors, metadata = _read(Path(path), GAN_FORMAT)
    try:
        refiner = Refiner(int(metadata["refiner_channels"]), int(metadata["refiner_blocks"]))
        discriminator = PatchDiscriminator(int(metadata["discriminator_channels"]))
        for prefix, model in (("refiner.", refiner), ("discriminator.", discriminator)):
            model.load_state_dict({key[len(prefix):]: value for key, value in tensors.items()
                                   if key.startswith(prefix)})
    except (KeyError, ValueError, RuntimeError) as error:
        raise SimcaptchaError(f"{path}: GAN file does not describe its weights ({str(error)[:200]})") from None
    return refiner.eval(), discriminator.eval()

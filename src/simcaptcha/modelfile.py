"""Self-describing model files: safetensors weights plus everything needed to read a new image.

The metadata carries charset, length, head, widths, image size and the site's preprocessing (binarize params,
polarity; the background estimate is a tensor), so ``simcaptcha predict`` needs nothing but the file. Loading
never unpickles: safetensors holds only tensors and strings.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from .config import GanConfig
from .errors import SimcaptchaError
from .models import PatchDiscriminator, Reader, Refiner
from .readerspec import ReaderSpec, reader_spec
from .store import regular_file_size, write_bytes

READER_FORMAT = "simcaptcha-reader/1"
GAN_FORMAT = "simcaptcha-gan/1"
BACKGROUND_KEY = "preprocessing.background"
MAX_FILE_BYTES = 512 * 2**20  # a reader is a few MB; a larger file is refused before it is read


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
        regular_file_size(path, MAX_FILE_BYTES, "the model file limit")
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
    reader that trains on (self-train, the label-budget points that start from a reader).

    The metadata is checked and the weights' shapes compared with the network it describes before the network
    is built, so a tampered file costs no more memory than its own size."""
    path = Path(path)
    tensors, metadata = _read(path, READER_FORMAT)
    spec = reader_spec(path, metadata)
    background = tensors.pop(BACKGROUND_KEY, None)
    with torch.device("meta"):  # shapes only: no memory for a network of any size
        expected = {key: tuple(value.shape) for key, value in spec.build().state_dict().items()}
    found = {key: tuple(value.shape) for key, value in tensors.items()}
    if found != expected:
        wrong = sorted(key for key in expected.keys() | found.keys() if expected.get(key) != found.get(key))
        raise SimcaptchaError(f"{path}: weights do not match the model its metadata describes ({', '.join(wrong[:3])}"
                              f"{' ...' if len(wrong) > 3 else ''})")
    model = spec.build(dropout)
    model.load_state_dict(tensors)
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

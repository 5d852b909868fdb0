"""Reading captchas with a reader: devices, input batches, label codes, and class scores to text.

Readers run on the GPU when there is one, else on the CPU in channels_last layout (faster convolutions there).
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

from . import distributed
from .decoding import BLANK, decode_scores
from .machine import CPU_READ_CHUNK, available_cores, has_native_bfloat16
from .models import Reader



def pick_device() -> torch.device:
    """The GPU when there is one, else the CPU with this process's share of its cores; under torchrun it also
    joins the process group (one process per GPU or per share of the cores)."""
    torch.set_num_threads(max(1, available_cores() // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    return distributed.join()


def resolve_precision(precision: str, device: torch.device) -> str:
    """``classifier.precision`` as it runs on ``device``: "auto" is bfloat16 where the hardware computes it
    natively (a CUDA GPU that supports it, a CPU with AMX or AVX-512 BF16), float32 elsewhere, where emulated
    bfloat16 is slower."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if device.type == "cpu" and has_native_bfloat16() else "float32"


def reader_autocast(device: torch.device, precision: str) -> torch.autocast:
    """The reader's passes under bfloat16 autocast when ``classifier.precision`` resolves to it (else a no-op)."""
    return torch.autocast(device.type, torch.bfloat16, enabled=resolve_precision(precision, device) == "bfloat16")


def to_batch(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 N×H×W (text 255) -> float N×1×H×W in [0, 1], channels_last."""
    batch = torch.from_numpy(np.ascontiguousarray(images)).to(device).float().div_(255.0).unsqueeze(1)
    return batch.contiguous(memory_format=torch.channels_last)


class LabelCoder:
    """Labels <-> class indices for a reader head, and logits -> text with a confidence."""

    def __init__(self, charset: str, length: int, head: str):
        self.charset, self.length, self.head = charset, length, head
        self.index = {char: position for position, char in enumerate(charset)}

    def encode(self, labels: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """positions: N×length class indices; ctc: N×length padded indices + 1 (0 is blank), with lengths."""
        offset = 1 if self.head == "ctc" else 0
        codes = torch.zeros(len(labels), self.length, dtype=torch.long)
        for row, label in enumerate(labels):
            codes[row, :len(label)] = torch.tensor([self.index[char] + offset for char in label])
        lengths = torch.tensor([len(label) for label in labels], dtype=torch.long)
        return codes.to(device), lengths.to(device)

    def loss(self, logits: torch.Tensor, codes: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        logits = logits.float()  # a bfloat16 reader's scores: the loss in float32
        if self.head == "positions":
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), codes.reshape(-1))
        log_probs = logits.log_softmax(-1).transpose(0, 1)  # T×N×C
        columns = torch.full((logits.shape[0],), logits.shape[1], dtype=torch.long, device=logits.device)
        return F.ctc_loss(log_probs, codes, columns, lengths, blank=BLANK, zero_infinity=True)

    def decode(self, logits: torch.Tensor) -> tuple[list[str], list[float]]:
        """Each reading and its confidence, the reader's probability of that whole reading (``decode_scores``)."""
        return decode_scores(logits.detach().float().cpu().numpy(), self.charset, self.head)


def read_chunk(device: torch.device, batch_size: int) -> int:
    """Images per forward pass when reading: on a CPU at most ``CPU_READ_CHUNK``, on a GPU the whole batch."""
    return min(batch_size, CPU_READ_CHUNK) if device.type == "cpu" else batch_size


@torch.no_grad()
def read_logits(model: Reader, images: np.ndarray, batch_size: int = 256,
                device: torch.device | None = None, precision: str = "float32") -> torch.Tensor:
    """Class scores (N×positions×classes, or N×columns×(classes+1) for CTC) for uint8 N×H×W images, on the CPU.

    ``precision`` "bfloat16": under autocast, twice as fast where the hardware has it (self-training reads its
    whole pool every round); the figures and predictions read in float32.
    """
    device = device or next(model.parameters()).device
    step = read_chunk(device, batch_size)
    model.eval()
    with reader_autocast(device, precision):
        return torch.cat([model(to_batch(images[start:start + step], device)).float().cpu()
                          for start in range(0, len(images), step)])


def read_images(model: Reader, coder: LabelCoder, images: np.ndarray, batch_size: int = 256,
                device: torch.device | None = None, precision: str = "float32") -> tuple[list[str], list[float]]:
    """Predicted text and confidence for uint8 N×H×W images (``precision``: as ``read_logits``)."""
    return coder.decode(read_logits(model, images, batch_size, device, precision))


def equal_slices(images: np.ndarray, count: int) -> np.ndarray:
    """Cut N×H×W captchas into ``count`` equal-width slices each: (N·count)×H×(W//count), captcha-major.

    The "letters trick" baseline reads each slice with a single-glyph reader.
    """
    width = images.shape[2] // count
    slices = [images[:, :, index * width:(index + 1) * width] for index in range(count)]
    return np.stack(slices, axis=1).reshape(-1, images.shape[1], width)


def read_letters(model: Reader, coder: LabelCoder, images: np.ndarray, slots: int,
                 batch_size: int = 256) -> tuple[list[str], list[float]]:
    """The letters baseline: a single-glyph reader reads each of ``slots`` equal-width slices of every captcha;
    a captcha's confidence is the product of its slices'."""
    glyphs, confidences = read_images(model, coder, equal_slices(images, slots), batch_size)
    texts = ["".join(glyphs[index:index + slots]) for index in range(0, len(glyphs), slots)]
    return texts, [float(np.prod(confidences[index:index + slots])) for index in range(0, len(glyphs), slots)]

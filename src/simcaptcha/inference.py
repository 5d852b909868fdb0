"""A safetensors reader made ready to read with torch: batch norms folded, on the GPU or the CPU's cores, and
exported as an ONNX graph. ``predict`` imports this module only for such a reader: an ONNX reader needs no torch."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from . import bundled
from .errors import SimcaptchaError
from .machine import reading_threads
from .modelfile import load_reader
from .models import Reader
from .onnxfile import ONNX_SUFFIX, write_onnx
from .readerspec import ReaderSpec
from .reading import pick_device, read_logits


def inference_reader(model: Reader) -> Reader:
    """A copy of ``model`` for reading only: batch norms folded into the convolutions before them, eval mode.

    Same outputs up to float rounding, and on the CPU about twice as fast (an eval batch norm in channels_last
    is a separate pass over the largest activations).
    """
    model = copy.deepcopy(model).eval()
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module._modules.items())
        for (conv_key, conv), (norm_key, norm) in zip(children, children[1:]):
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d) and norm.track_running_stats:
                module._modules[conv_key] = fuse_conv_bn_eval(conv, norm)
                module._modules[norm_key] = nn.Identity()
    return model


class TorchReader:
    """A reader file's network, folded, on this process's device, called as ``onnxfile.OnnxReader`` is: the
    reader's uint8 N×H×W input (text 255) in, float32 class scores out."""

    def __init__(self, model: Reader):
        self.device = pick_device()
        if self.device.type == "cpu":
            torch.set_num_threads(reading_threads())
        self.model = inference_reader(model).to(self.device, memory_format=torch.channels_last)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return read_logits(self.model, images, len(images), self.device).numpy()


def load_torch_reader(path: Path) -> tuple[TorchReader, ReaderSpec, np.ndarray | None]:
    """The reader of a safetensors reader file ready to read, its spec and background (or None). On the CPU it
    sets torch's thread count to ``reading_threads()``."""
    model, spec, background = load_reader(path)
    return TorchReader(model), spec, background


def export_onnx(model_path: str | Path, onnx_path: str | Path) -> None:
    """``simcaptcha export``: the reader file as an ONNX graph of the reader as ``TorchReader`` runs it."""
    if Path(onnx_path).suffix.lower() != ONNX_SUFFIX:
        raise SimcaptchaError(f"{onnx_path}: an ONNX file's name must end in {ONNX_SUFFIX} (predict tells it by that)")
    model, spec, background = load_reader(bundled.model_path(model_path))
    write_onnx(onnx_path, inference_reader(model), spec, background)

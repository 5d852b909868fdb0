"""The networks: a captcha reader, and SimGAN's refiner and local patch discriminator.

All take float32 N×1×H×W images in [0, 1] (text bright) and are fully convolutional where the paper is, so
any site's image size works. They are sized for 2 CPU cores; widths and depths are params.
"""

from __future__ import annotations

import torch
from torch import nn


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


def feature_size(height: int, width: int, blocks: int, head: str) -> tuple[int, int]:
    """The reader's feature map height and width, by arithmetic rather than a probe forward: a probe would move
    the batch norms' running statistics, and on the meta device (modelfile's shape check) it pulls in torch's
    compiler for its decompositions, seconds at every start. Each block's pool halves both sides, rounding up;
    CTC's last keeps the width."""
    for index in range(blocks):
        height = -(-height // 2)
        width = width if head == "ctc" and index == blocks - 1 else -(-width // 2)
    return height, width


class Reader(nn.Module):
    """A small CNN that reads a whole captcha.

    head "positions": one classifier per character position over the flattened feature map (fixed length).
    head "ctc": per-column class scores (blank = index 0) for CTC, so the length may vary.
    """

    def __init__(self, height: int, width: int, classes: int, length: int, head: str = "positions",
                 channels: tuple[int, ...] = (32, 64, 96, 128), dropout: float = 0.2):
        super().__init__()
        self.head_kind, self.length, self.classes = head, length, classes
        layers: list[nn.Module] = []
        in_channels = 1
        for index, out_channels in enumerate(channels):
            layers.append(conv_bn_relu(in_channels, out_channels))
            # CTC keeps horizontal resolution in the last block: it needs columns to align characters to.
            last = index == len(channels) - 1
            layers.append(nn.MaxPool2d((2, 1) if head == "ctc" and last else 2, ceil_mode=True))
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        c, h, w = channels[-1], *feature_size(height, width, len(channels), head)
        self.dropout = nn.Dropout(dropout)
        if head == "positions":
            self.head = nn.Linear(c * h * w, length * classes)
        else:
            self.head = nn.Conv1d(c * h, classes + 1, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """positions: N×length×classes logits; ctc: N×columns×(classes+1) logits."""
        features = self.features(images)
        if self.head_kind == "positions":
            logits = self.head(self.dropout(features.flatten(1)))
            return logits.view(-1, self.length, self.classes)
        columns = features.flatten(1, 2)  # N×(C·H)×W: one feature vector per column
        return self.head(self.dropout(columns)).transpose(1, 2)


class ResnetBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


class Refiner(nn.Module):
    """SimGAN refiner: full-resolution ResNet blocks, no pooling, so every pixel keeps its place (and label).

    The output is the input's logit plus a learned correction, squashed back to [0, 1]: at initialisation the
    refiner is close to the identity, which the self-regularisation term then keeps it near.
    """

    def __init__(self, channels: int = 16, blocks: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(inplace=True))
        self.blocks = nn.Sequential(*[ResnetBlock(channels) for _ in range(blocks)])
        self.out = nn.Conv2d(channels, 1, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logit = torch.logit(images.clamp(0.02, 0.98))
        return torch.sigmoid(logit + self.out(self.blocks(self.stem(images))))


class PatchDiscriminator(nn.Module):
    """SimGAN's local discriminator: one real/refined logit per receptive-field patch, not per image.

    Judging patches keeps the refiner from inventing global structure and gives many samples per image.
    """

    def __init__(self, channels: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, channels, 3, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(channels, channels * 2, 3, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True),
            nn.MaxPool2d(3, stride=1, padding=1),
            nn.Conv2d(channels * 2, channels, 3, padding=1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(channels, 1, 1),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """N×1×h×w logits, positive = looks real."""
        return self.net(images)

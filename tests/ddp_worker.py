"""Trains a tiny reader and refiner in every process of a torchrun run; test_distributed.py launches it.

Each process writes the sum of its final weights and its logs, so the test can check that DDP kept the
processes' models identical and that only the first process showed validation figures.
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch

from simcaptcha import distributed
from simcaptcha.config import ClassifierConfig, GanConfig
from simcaptcha.machine import process_rank
from simcaptcha.models import PatchDiscriminator, Reader, Refiner
from simcaptcha.reader_training import train_reader
from simcaptcha.reading import LabelCoder, pick_device
from simcaptcha.simgan import train_gan

out = Path(sys.argv[1])
device = pick_device()
rng = np.random.default_rng(0)
images = (rng.random((64, 20, 40)) > 0.7).astype(np.uint8) * 255
labels = ["".join(rng.choice(list("ab"), 2)) for _ in range(64)]
coder = LabelCoder("ab", 2, "positions")
torch.manual_seed(0)
reader = Reader(20, 40, 2, 2, channels=(4, 8))
reader_log = train_reader(reader, coder, images, labels, ClassifierConfig(epochs=2, batch_size=16, channels=[4, 8],
                                                                       precision="float32"),
                          None, out / "reader.pt", device)
refiner = Refiner(4, 1)
gan_log = train_gan(refiner, PatchDiscriminator(4), images, labels, images, reader, coder,
                    GanConfig(steps=4, pretrain_refiner_steps=2, pretrain_discriminator_steps=2, batch_size=8,
                              history_size=16, refiner_channels=4, refiner_blocks=1, discriminator_channels=4,
                              checkpoint_every=2), out / "gan.pt", device)
weights = torch.cat([p.detach().flatten() for p in [*reader.parameters(), *refiner.parameters()]])
(out / f"rank{process_rank()}.json").write_text(json.dumps(
    {"weights": weights.double().sum().item(), "reader_log": reader_log, "gan_log": gan_log}))
distributed.leave()

"""Benchmark: training images/s of reader and refiner sizes on this machine (choose architectures by it).

Usage: python benchmarks/model_speed.py  -> prints one line per model, writes metrics/bench-models.json
Each model trains on random 100x50 batches of 64 (Adam, channels_last) for a few timed steps after warm-up; the
readers also under bfloat16 autocast (classifier.precision), which CPUs with AMX run about twice as fast.
"""

import time

import torch

from simcaptcha.models import PatchDiscriminator, Reader, Refiner
from simcaptcha.pipeline import METRICS
from simcaptcha.store import write_json
from simcaptcha.reading import pick_device, reader_autocast


def images_per_second(model: torch.nn.Module, batch: torch.Tensor, steps: int = 8, warmup: int = 3,
                      precision: str = "float32") -> float:
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters())
    for step in range(warmup + steps):
        if step == warmup:
            start = time.perf_counter()
        optimizer.zero_grad()
        with reader_autocast(batch.device, precision):
            output = model(batch)
        output.float().mean().backward()
        optimizer.step()
    return steps * len(batch) / (time.perf_counter() - start)


def main() -> None:
    pick_device()
    batch = torch.rand(64, 1, 50, 100).contiguous(memory_format=torch.channels_last)
    models = {
        "reader 16-32-64-96 (default)": Reader(50, 100, 36, 4, "positions", (16, 32, 64, 96)),
        "reader 32-64-96-128": Reader(50, 100, 36, 4, "positions", (32, 64, 96, 128)),
        "reader 32-64-128-192": Reader(50, 100, 36, 4, "positions", (32, 64, 128, 192)),
        "refiner 16x3 (default)": Refiner(16, 3),
        "refiner 32x3": Refiner(32, 3),
        "refiner 64x4 (paper)": Refiner(64, 4),
        "discriminator 32 (default)": PatchDiscriminator(32),
    }
    figures = {}
    for name, model in models.items():
        figures[name] = round(images_per_second(model, batch, steps=2 if "paper" in name else 8))
        print(f"{name}: {figures[name]:,} training images/s")
        if name.startswith("reader"):
            figures[f"{name} bfloat16"] = round(images_per_second(model, batch, precision="bfloat16"))
            print(f"{name} bfloat16: {figures[f'{name} bfloat16']:,} training images/s")
    write_json(METRICS / "bench-models.json", figures)


if __name__ == "__main__":
    main()

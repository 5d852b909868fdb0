"""SimGAN's history of refined images (Shrivastava et al. 2017, section 2.3), as CycleGAN's image pool."""

from __future__ import annotations

import torch


class ImageHistory:
    """SimGAN's buffer of past refined images: half of every fake batch the discriminator sees comes from it.

    It fills until ``capacity`` and then replaces random entries, so the discriminator keeps judging what the
    refiner produced earlier and the refiner cannot win by cycling back to old artefacts.
    """

    def __init__(self, capacity: int, generator: torch.Generator):
        self.capacity, self.generator = capacity, generator
        self.images: torch.Tensor | None = None
        self.size = 0

    def push(self, batch: torch.Tensor) -> None:
        if self.capacity == 0:
            return
        batch = batch.detach()
        if self.images is None:
            self.images = torch.empty((self.capacity, *batch.shape[1:]), dtype=batch.dtype, device=batch.device)
        fill = min(self.capacity - self.size, len(batch))
        self.images[self.size:self.size + fill] = batch[:fill]
        self.size += fill
        rest = batch[fill:][-self.size:]  # more new images than slots: the newest win
        if len(rest):
            slots = torch.randperm(self.size, generator=self.generator)[:len(rest)].to(batch.device)
            self.images[slots] = rest

    def sample(self, count: int) -> torch.Tensor:
        rows = torch.randint(self.size, (count,), generator=self.generator).to(self.images.device)
        return self.images[rows]

    def state_dict(self) -> dict:
        return {"images": self.images if self.images is not None else torch.empty(0), "size": self.size}

    def load_state_dict(self, state: dict) -> None:
        self.size = int(state["size"])
        self.images = state["images"] if self.size else None

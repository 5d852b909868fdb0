"""Training a captcha reader, readable top to bottom: batches, on-the-fly augmentation, one-cycle AdamW.

Validation uses a held-out share of the synthetic images only; real labelled captchas never judge. Each epoch
checkpoints, and a killed stage resumes from its last epoch.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from . import distributed
from .augment import augment_batch
from .checkpoints import fingerprint, resume, save_checkpoint, snapshot
from .config import AugmentConfig, ClassifierConfig, Config
from .errors import SimcaptchaError
from .machine import is_main_process, process_count, process_rank
from .metrics import accuracy_figures
from .models import Reader
from .progress import progress
from .reading import LabelCoder, read_images, reader_autocast, to_batch
from .store import ImageSet


def check_labels(labelled: ImageSet, params: Config) -> None:
    """Every real label must be one a reader of render.charset and render.length can give; checked before any
    training, since evaluate would otherwise count such a captcha as misread without a word."""
    render, source = params.render, params.fetch.labelled
    origin = source.labels_csv if source.labels == "csv" else "its file name"
    for name, label in zip(labelled.names, labelled.labels):
        outside = "".join(sorted(set(label) - set(render.charset)))
        if outside:
            problem = f"{outside!r} outside render.charset"
        elif not render.length[0] <= len(label) <= render.length[1]:
            problem = f"{len(label)} characters, outside render.length {render.length}"
        else:
            continue
        raise SimcaptchaError(f"fetch.labelled: captcha {name!r} has the label {label!r} (from {origin}) with "
                              f"{problem}")


def real_labelled(labelled: ImageSet, count: int, seed: int) -> tuple[np.ndarray, list[str], list[str]]:
    """The first ``count`` real labelled captchas of a seeded shuffle (classifier.real_labels); evaluate skips
    them by name."""
    if count > len(labelled):
        raise SimcaptchaError(f"params: classifier.real_labels = {count}, but only {len(labelled)} are labelled")
    rows = np.random.default_rng(seed).permutation(len(labelled))[:count]
    return labelled.images[rows], [labelled.labels[row] for row in rows], [labelled.names[row] for row in rows]


def train_reader(model: Reader, coder: LabelCoder, images: np.ndarray, labels: list[str],
                 config: ClassifierConfig, augment: AugmentConfig | None, checkpoint: Path,
                 device: torch.device, synthetic_count: int | None = None,
                 mask: np.ndarray | None = None) -> list[dict]:
    """Train ``model`` in place; validate on a held-out share of the synthetic training images.

    The first ``synthetic_count`` images are synthetic (default: all); only those are held out, so real
    labelled captchas added after them always train and never judge. ``mask``: the site's fixed noise, kept in
    place by the on-the-fly augmentation. Returns one log row per epoch:
    the training loss, and character and whole-captcha accuracy on the held-out images.
    """
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    synthetic_count = len(images) if synthetic_count is None else synthetic_count
    order = torch.randperm(synthetic_count, generator=generator).numpy()
    held_out = order[: int(round(synthetic_count * config.validation_share))]
    train = np.concatenate([order[len(held_out):], np.arange(synthetic_count, len(images))]).astype(np.int64)
    if len(train) == 0:
        raise SimcaptchaError("no images left to train the reader on (refine.drop_flipped may have dropped them all)")
    processes = process_count()
    if config.batch_size < processes:
        raise SimcaptchaError(f"params: classifier.batch_size = {config.batch_size} gives no image to some of the "
                              f"{processes} processes")
    # Several processes drop an epoch's last short batch: each of them needs a share of every batch.
    steps_per_epoch = -(-len(train) // config.batch_size) if processes == 1 else max(1, len(train) // config.batch_size)
    model.to(device, memory_format=torch.channels_last)
    trainee = distributed.wrap(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.learning_rate,
                                                   total_steps=config.epochs * steps_per_epoch)
    augment_generator = torch.Generator(device=device).manual_seed(config.seed + 1 + process_rank())
    checkpoint = distributed.rank_path(checkpoint)
    fixed = None if mask is None else torch.from_numpy(mask.astype(np.float32)).to(device)
    run = fingerprint(asdict(config), asdict(augment) if augment else None, images[:: max(1, len(images) // 64)],
                      labels, coder.charset, coder.length, coder.head)
    parts = {"model": model, "optimizer": optimizer, "schedule": schedule, "generator": generator,
             "augment_generator": augment_generator}
    log, first_epoch = resume(checkpoint, run, parts, "epoch")
    for epoch in range(first_epoch, config.epochs):
        model.train()
        permutation = train[torch.randperm(len(train), generator=generator).numpy()]
        total_loss = 0.0
        bar = progress(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch")
        for step in bar:
            rows = distributed.rank_slice(permutation[step * config.batch_size:(step + 1) * config.batch_size])
            batch = to_batch(images[rows], device)
            if augment is not None:
                batch = augment_batch(batch, augment, augment_generator, fixed)
                batch = batch.contiguous(memory_format=torch.channels_last)
            codes, lengths = coder.encode([labels[row] for row in rows], device)
            with reader_autocast(device, config.precision):
                logits = trainee(batch)
            loss = coder.loss(logits, codes, lengths)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.item()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        figures = {"epoch": epoch + 1, "train_loss": round(total_loss / steps_per_epoch, 5)}
        if len(held_out) and is_main_process():
            predicted, _ = read_images(model, coder, images[held_out], device=device)
            truth = [labels[row] for row in held_out]
            measured = accuracy_figures(predicted, truth)
            figures.update(val_char_accuracy=measured["char_accuracy"],
                           val_captcha_accuracy=measured["captcha_accuracy"])
        log.append(figures)
        save_checkpoint(checkpoint, {"run": run, "epoch": epoch + 1, "log": log, **snapshot(parts)})
    return log

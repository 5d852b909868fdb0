"""SimGAN (Shrivastava et al. 2017): a refiner that makes synthetic captchas look real while keeping their labels.

The refiner is trained against a local (patch) discriminator that also sees a history of earlier refined images;
a self-regularisation term keeps it close to its input and a frozen synthetic reader keeps the label readable.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import distributed
from .checkpoints import fingerprint, resume, save_checkpoint, snapshot
from .config import GanConfig
from .errors import SimcaptchaError
from .image_history import ImageHistory
from .imaging import contact_sheet
from .machine import process_count, process_rank
from .models import PatchDiscriminator, Reader, Refiner
from .progress import progress
from .reading import LabelCoder, reader_autocast, resolve_precision, to_batch


def _adversarial(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """Mean binary cross-entropy over every patch logit of the local discriminator."""
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits, target)


def _optimizer(parameters, kind: str, learning_rate: float) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(parameters, lr=learning_rate)
    return torch.optim.Adam(parameters, lr=learning_rate, betas=(0.5, 0.999))


def train_gan(refiner: Refiner, discriminator: PatchDiscriminator, synthetic: np.ndarray, labels: list[str],
              real: np.ndarray, reader: Reader | None, coder: LabelCoder, config: GanConfig, checkpoint: Path,
              device: torch.device, reader_precision: str = "float32") -> list[dict]:
    """Train the refiner to fool the patch discriminator while staying close to its input and to its label.

    Refiner loss: adversarial + self_regularization * mean|R(x) - x| (per-pixel mean)
                  + consistency * CE(reader(R(x)), label of x), the reader frozen and trained on synthetic images.
    Discriminator loss: real patches -> real; refined patches (half fresh, half from the history) -> refined.
    Returns a log row per step (both losses, each term, and D's accuracy on real and on refined patches).

    A refiner whose mean |R(x) - x| stays above gan.collapse_change for gan.collapse_steps steps in a row has
    collapsed: it rewrites the images (all ink, say) instead of refining them (Kaggle's CTC run: 0.002 to 0.17 in
    one step, and there it stayed while the reader's loss on its images went from 0.03 to 8.6). A shorter spike
    passes (one HackMIT run came back from 0.35). Training stops there, that row's phase says "collapsed", and
    the refiner and discriminator go back to the last checkpoint's from before the run of steps began
    (``restored_step``). No checkpoint is written during such a run of steps, so a killed run resumes from
    before it and counts it again, as the uninterrupted run did. ``reader_precision`` "bfloat16": the reader's
    pass in the consistency term under autocast, as it trained (``classifier.precision``).
    """
    generator = torch.Generator().manual_seed(config.seed + process_rank())  # each process its own images
    torch.manual_seed(config.seed)
    refiner.to(device, memory_format=torch.channels_last).train()
    discriminator.to(device, memory_format=torch.channels_last).train()
    trained_refiner, trained_discriminator = distributed.wrap(refiner), distributed.wrap(discriminator)
    processes = process_count()
    batch_size = config.batch_size // processes  # this process's share of every batch
    if batch_size < 2:
        raise SimcaptchaError(f"params: gan.batch_size = {config.batch_size} is too small for {processes} processes "
                              "(each needs 2 images: half fresh, half from the history)")
    if reader is not None:
        reader.to(device, memory_format=torch.channels_last).eval().requires_grad_(False)
    refiner_optimizer = _optimizer(refiner.parameters(), config.optimizer, config.refiner_learning_rate)
    discriminator_optimizer = _optimizer(discriminator.parameters(), config.optimizer,
                                         config.discriminator_learning_rate)
    history = ImageHistory(config.history_size // processes, generator)
    half = batch_size // 2

    def synthetic_batch() -> tuple[torch.Tensor, list[str]]:
        rows = torch.randint(len(synthetic), (batch_size,), generator=generator).numpy()
        return to_batch(synthetic[rows], device), [labels[row] for row in rows]

    def real_batch() -> torch.Tensor:
        return to_batch(real[torch.randint(len(real), (batch_size,), generator=generator).numpy()], device)

    def refiner_step(adversarial_weight: float) -> dict:
        images, batch_labels = synthetic_batch()
        refined = trained_refiner(images)
        regularization = (refined - images).abs().mean()
        loss = config.self_regularization * regularization
        terms = {"refiner_regularization": regularization.item()}
        if adversarial_weight:
            adversarial = _adversarial(trained_discriminator(refined), real=True)
            loss = loss + adversarial
            terms["refiner_adversarial"] = adversarial.item()
        if reader is not None and config.consistency:
            with reader_autocast(device, reader_precision):
                scores = reader(refined)
            consistency = coder.loss(scores, *coder.encode(batch_labels, device))
            loss = loss + config.consistency * consistency
            terms["refiner_consistency"] = consistency.item()
        refiner_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        refiner_optimizer.step()
        return terms

    def discriminator_step() -> dict:
        with torch.no_grad():
            refined = refiner(synthetic_batch()[0])
        fake = torch.cat([refined[:half], history.sample(half)]) if history.size >= half else refined
        history.push(refined[:half])
        real_images = real_batch()
        logits = trained_discriminator(torch.cat([real_images, fake]))  # one pass: DDP reduces once per backward
        real_logits, fake_logits = logits[:len(real_images)], logits[len(real_images):]
        loss = _adversarial(real_logits, real=True) + _adversarial(fake_logits, real=False)
        discriminator_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        discriminator_optimizer.step()
        return {"discriminator_loss": loss.item(),
                "d_accuracy_real": (real_logits > 0).float().mean().item(),
                "d_accuracy_refined": (fake_logits < 0).float().mean().item()}

    reader_weights = [value.cpu().numpy() for value in reader.state_dict().values()] if reader is not None else []
    run = fingerprint(asdict(config), resolve_precision(reader_precision, device), synthetic[:: max(1, len(synthetic) // 64)],
                      real[:: max(1, len(real) // 64)], labels, *reader_weights)
    parts = {"refiner": refiner, "discriminator": discriminator, "refiner_optimizer": refiner_optimizer,
             "discriminator_optimizer": discriminator_optimizer, "history": history, "generator": generator}
    checkpoint = distributed.rank_path(checkpoint)
    log, first_step = resume(checkpoint, run, parts, "step")
    pretraining = config.pretrain_refiner_steps + config.pretrain_discriminator_steps
    total = pretraining + config.steps
    kept_step, kept = first_step, _copy_state(refiner, discriminator)  # what a collapse goes back to
    over = 0  # steps in a row above collapse_change
    for step in progress(range(first_step, total), initial=first_step, total=total, desc="train-gan", unit="step"):
        row: dict = {"step": step + 1}
        if step < config.pretrain_refiner_steps:
            row.update(phase="pretrain-refiner", **refiner_step(adversarial_weight=0.0))
        elif step < pretraining:
            row.update(phase="pretrain-discriminator", **discriminator_step())
        else:
            row["phase"] = "adversarial"
            for _ in range(config.refiner_updates):
                row.update(refiner_step(adversarial_weight=1.0))
            for _ in range(config.discriminator_updates):
                row.update(discriminator_step())
        row["history_size"] = history.size
        over = over + 1 if config.collapse_change and distributed.any_rank(
            row.get("refiner_regularization", 0.0) > config.collapse_change) else 0
        collapsed = over >= config.collapse_steps
        if collapsed:
            row.update(phase="collapsed", restored_step=kept_step)
        log.append(row)
        if collapsed:
            refiner.load_state_dict(kept[0])
            discriminator.load_state_dict(kept[1])
            break
        if (step + 1) % config.checkpoint_every == 0 and not over:  # never a refiner in the middle of a jump: a
            kept_step, kept = step + 1, _copy_state(refiner, discriminator)  # resumed run counts its steps from 0
            if step + 1 < total:
                save_checkpoint(checkpoint, {"run": run, "step": step + 1, "log": log, **snapshot(parts)})
    return log


def training_summary(log: list[dict]) -> dict:
    """train-gan's figures: where the refiner collapsed (None: never), and the last 50 steps' mean discriminator
    accuracies, pixel change and label consistency (a discriminator near 1.0 on both means the refiner lost)."""
    collapsed = [row for row in log if row["phase"] == "collapsed"]
    summary = {"collapsed_at_step": collapsed[0]["step"] if collapsed else None,
               "restored_step": collapsed[0]["restored_step"] if collapsed else None}
    last = [row for row in log[-50:] if "d_accuracy_real" in row and row["phase"] != "collapsed"]
    for key in ("d_accuracy_real", "d_accuracy_refined", "refiner_regularization", "refiner_consistency"):
        values = [row[key] for row in last if key in row]
        if values:
            summary[f"final_{key}"] = round(float(np.mean(values)), 4)
    summary["history_size"] = log[-1]["history_size"] if log else 0
    return summary


def _copy_state(*modules: torch.nn.Module) -> list[dict]:
    return [{key: value.detach().clone() for key, value in module.state_dict().items()} for module in modules]


@torch.no_grad()
def refine_images(refiner: Refiner, images: np.ndarray, batch_size: int, device: torch.device) -> np.ndarray:
    """Pass uint8 N×H×W images through the refiner; uint8 out, same order."""
    refiner.to(device, memory_format=torch.channels_last).eval()
    parts = [refiner(to_batch(images[start:start + batch_size], device)).squeeze(1).mul(255).round().byte().cpu()
             for start in progress(range(0, len(images), batch_size), desc="refine", unit="batch")]
    return torch.cat(parts).numpy() if parts else images.copy()


@torch.no_grad()
def patch_accuracy(discriminator: PatchDiscriminator, images: np.ndarray, real: bool, device: torch.device,
                   batch_size: int = 256) -> float:
    """Share of the discriminator's patch verdicts that are right for images that are all real or all not."""
    discriminator.to(device, memory_format=torch.channels_last).eval()
    right = total = 0
    for start in range(0, len(images), batch_size):
        logits = discriminator(to_batch(images[start:start + batch_size], device))
        right += int(((logits > 0) if real else (logits <= 0)).sum())
        total += logits.numel()
    return right / max(total, 1)


@torch.no_grad()
def sample_sheet(refiner: Refiner, real: np.ndarray, synthetic: np.ndarray, device: torch.device,
                 columns: int = 8) -> np.ndarray:
    """A contact sheet to judge the refiner by eye: real captchas, synthetic ones, and those synthetic ones refined."""
    samples = synthetic[:columns]
    refined = refiner.eval()(to_batch(samples, device)).squeeze(1).mul(255).round().byte().cpu().numpy()
    rows = list(real[:columns]) + list(samples) + list(refined)
    captions = ["real"] * columns + ["synthetic"] * columns + ["refined"] * columns
    return contact_sheet(rows, captions, columns=columns)

"""Training loops, readable top to bottom: the captcha reader, and SimGAN's refiner against its discriminator.

Both run on the GPU when there is one, else on the CPU in channels_last layout (faster convolutions there).
Both checkpoint as they go and resume from the checkpoint when a killed stage is run again with the same
inputs, so a long run is never lost; checkpoints are loaded with ``weights_only=True`` (no unpickling).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from . import distributed
from .augment import augment_batch
from .config import AugmentConfig, ClassifierConfig, Config, GanConfig, SelfTrainConfig
from .errors import SimcaptchaError
from .machine import available_cores, is_main_process, process_count, process_rank
from .models import PatchDiscriminator, Reader, Refiner
from .progress import progress
from .store import ImageSet, atomic_path

CPU_READ_CHUNK = 32  # images per forward pass on a CPU: larger chunks fall out of cache (the wide reader in
#                      bfloat16 reads 2,684 img/s in chunks of 32, 972 in chunks of 256; float32 762 and 588)

def pick_device() -> torch.device:
    """The GPU when there is one, else the CPU with this process's share of its cores; under torchrun it also
    joins the process group (one process per GPU or per share of the cores)."""
    torch.set_num_threads(max(1, available_cores() // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    return distributed.join()


def reader_autocast(device: torch.device, precision: str) -> torch.autocast:
    """The reader's passes under bfloat16 autocast when ``classifier.precision`` says so (float32: a no-op)."""
    return torch.autocast(device.type, torch.bfloat16, enabled=precision == "bfloat16")


def to_batch(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 N×H×W (text 255) -> float N×1×H×W in [0, 1], channels_last."""
    batch = torch.from_numpy(np.ascontiguousarray(images)).to(device).float().div_(255.0).unsqueeze(1)
    return batch.contiguous(memory_format=torch.channels_last)


# ---------------------------------------------------------------- labels
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
        return F.ctc_loss(log_probs, codes, columns, lengths, blank=0, zero_infinity=True)

    def decode(self, logits: torch.Tensor) -> tuple[list[str], list[float]]:
        probabilities = logits.float().softmax(-1)
        best, classes = probabilities.max(-1)
        confidence = best.log().sum(-1).exp().tolist()
        if self.head == "positions":
            return ["".join(self.charset[c] for c in row) for row in classes.tolist()], confidence
        texts = []
        for row in classes.tolist():  # greedy CTC: merge repeats, drop blanks
            chars = [c for position, c in enumerate(row) if c != 0 and (position == 0 or c != row[position - 1])]
            texts.append("".join(self.charset[c - 1] for c in chars))
        return texts, confidence


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


def balancing_offsets(logits: torch.Tensor, blank: bool, iterations: int = 100) -> torch.Tensor:
    """Per-class log-score offsets that raise the characters the pool's readings under-read.

    A reader trained on fonts favours the characters whose fonts look most like the site's and under-reads the
    others (HackMIT: 'e' read as 'o', '4' as 'w'). Each character's target is its own soft share of the
    readings, raised to an equal share where it is below, the whole renormalised; added to the scores, the
    offsets move the least sure readings of the over-read characters to their runner-up, the under-read one
    (class-balanced self-training, Zou et al. 2018). Over-read characters give up only in proportion to that:
    a site may draw some characters more often (Kaggle's 'n', 1.9 times), and holding every character to an
    equal share relabelled that surplus as its runner-up. ``blank``: class 0 is CTC's blank, left alone.
    """
    first = 1 if blank else 0
    offsets = torch.zeros(logits.shape[-1])
    shares = logits.softmax(-1)[..., first:].sum((0, 1))
    target = torch.clamp(shares / shares.sum(), min=1.0 / (logits.shape[-1] - first))
    target = (target / target.sum()).log()
    for _ in range(iterations):  # damped fixed point on the soft class shares
        mass = (logits + offsets).softmax(-1)[..., first:].sum((0, 1))
        offsets[first:] += 0.5 * (target - (mass / mass.sum()).log())
    return offsets


# ---------------------------------------------------------------- checkpoints
def fingerprint(*parts: object) -> str:
    """A hash of everything a run depends on: a checkpoint is resumed only by the same run."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.tobytes() if isinstance(part, np.ndarray) else json.dumps(part, sort_keys=True,
                                                                                       default=str).encode())
    return digest.hexdigest()


def save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def snapshot(parts: dict) -> dict:
    """The state of every module, optimizer, schedule, generator and buffer in ``parts``, plus torch's RNG."""
    state = {key: part.get_state() if isinstance(part, torch.Generator) else part.state_dict()
             for key, part in parts.items()}
    return {**state, "torch_rng": torch.get_rng_state()}


def restore(state: dict, parts: dict) -> None:
    """Put a ``snapshot`` back into the same parts."""
    for key, part in parts.items():
        if isinstance(part, torch.Generator):
            part.set_state(state[key])
        else:
            part.load_state_dict(state[key])
    torch.set_rng_state(state["torch_rng"])


def load_checkpoint(path: Path, run: str) -> dict | None:
    if not path.exists():
        return None
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception:  # a checkpoint from another version or a torn file: start over rather than fail
        return None
    return state if isinstance(state, dict) and state.get("run") == run else None


def resume(checkpoint: Path, run: str, parts: dict, counter: str) -> tuple[list[dict], int]:
    """The log so far and the ``counter`` (epoch or step) to go on from, with ``parts`` restored from a
    checkpoint of the same run; an empty log and 0 when there is none."""
    state = load_checkpoint(checkpoint, run)
    distributed.check_same_counter(state[counter] if state else 0, counter)
    if state is None:
        return [], 0
    restore(state, parts)
    return state["log"], state[counter]


# ---------------------------------------------------------------- reader
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
            figures.update(validation_figures(predicted, truth))
        log.append(figures)
        save_checkpoint(checkpoint, {"run": run, "epoch": epoch + 1, "log": log, **snapshot(parts)})
    return log


def validation_figures(predicted: list[str], truth: list[str]) -> dict:
    chars = sum(len(label) for label in truth)
    right = sum(p == t for guess, label in zip(predicted, truth) for p, t in zip(guess, label))
    return {"val_char_accuracy": round(right / max(chars, 1), 5),
            "val_captcha_accuracy": round(float(np.mean([p == t for p, t in zip(predicted, truth)])), 5)}


# ---------------------------------------------------------------- self-training
def self_train(model: Reader, coder: LabelCoder, synthetic: np.ndarray, synthetic_labels: list[str],
               pool: np.ndarray, config: SelfTrainConfig, reader_config: ClassifierConfig,
               augment: AugmentConfig | None, checkpoints: Path, device: torch.device,
               mask: np.ndarray | None = None, lengths: tuple[int, int] | None = None,
               after_round: Callable[[Reader], dict] | None = None) -> list[dict]:
    """Teach ``model`` the real images without a single label: pseudo-labelling in rounds (noisy student).

    Each round reads the unlabelled pool with the current model, keeps its most confident share (growing from
    keep[0] to keep[1]) with the model's readings as labels, and trains on those beside the synthetic set, the
    pseudo-labelled ones repeated where they are less than ``config.real_share`` of the round (``round_rows``;
    augmented on the fly, so the student sees harder images than the teacher did). Synthetic images keep the
    labels anchored; the held-out synthetic share is still the only validation. The first
    ``config.balance_rounds`` rounds' readings have their under-read characters raised toward an equal share
    (``balancing_offsets``): round 1's for the font-trained start reader's bias; later ones where a reader drifts,
    learning its own confusions until one character is read for another (HackMIT's ``l`` as ``i``). Each log row
    says which character the round's reader reads least and at what share of an equal one, its own readings
    before any balance: no label is needed to see such a drift. A killed run resumes: every
    round's last checkpoint stays in ``checkpoints`` and restores that round's weights. ``lengths``: the site's
    [min, max] characters per captcha (default 1 to the reader's); a CTC reading of another length is no label.
    ``after_round``: figures added to each round's log row, read from the round's reader (the stage's labelled
    figures: how the reader moves, never fed back).
    """
    model.to(device, memory_format=torch.channels_last)
    log: list[dict] = []
    previous: dict[int, str] = {}
    for round_index in range(config.rounds):
        low, high = config.keep
        share = low + (high - low) * round_index / max(config.rounds - 1, 1)
        logits = read_logits(model, pool, device=device, precision=reader_config.precision)
        least_read, least_share = least_read_character(coder.decode(logits)[0], coder.charset)
        offsets = balancing_offsets(logits, coder.head == "ctc") if round_index < config.balance_rounds else None
        texts, confidences = coder.decode(logits if offsets is None else logits + offsets)
        valid = of_site_length(texts, lengths, coder.length)
        order = [row for row in np.argsort(-np.asarray(confidences), kind="stable") if valid[row]]
        kept = np.sort(np.asarray(order[:int(round(share * len(pool)))], dtype=np.int64))
        changed = [previous[row] != texts[row] for row in kept if row in previous]
        synthetic_rows, real_rows = round_rows(len(synthetic), kept, config.real_share,
                                               np.random.default_rng(reader_config.seed + round_index),
                                               config.synthetic_share, config.max_repeats)
        images = np.concatenate([synthetic[synthetic_rows], pool[real_rows]])
        labels = [synthetic_labels[row] for row in synthetic_rows] + [texts[row] for row in real_rows]
        round_config = replace(reader_config, epochs=config.epochs, learning_rate=config.learning_rate,
                               seed=reader_config.seed + round_index + 1)
        history = train_reader(model, coder, images, labels, round_config, augment,
                               checkpoints / f"round-{round_index + 1}.pt", device, len(synthetic_rows), mask)
        log.append({"round": round_index + 1, "pseudo_labels": len(kept), "kept_share": round(share, 4),
                    "lowest_kept_confidence": round(min((confidences[row] for row in kept), default=0.0), 5),
                    "relabelled_share": round(float(np.mean(changed)), 5) if changed else 0.0,
                    "class_offset_range": 0.0 if offsets is None else round(float(np.ptp(offsets.numpy())), 4),
                    "least_read_char": least_read, "least_read_share": least_share,
                    **{key: value for key, value in history[-1].items() if key != "epoch"},
                    **(after_round(model) if after_round else {})})
        previous = {row: texts[row] for row in kept}
    return log


def least_read_character(texts: list[str], charset: str) -> tuple[str, float]:
    """The character ``texts`` hold least often and its count over an equal share's (1.0: as often as any)."""
    counts = Counter("".join(texts))
    total = sum(counts[char] for char in charset)
    char = min(charset, key=lambda c: counts[c])  # the first of equals: charset order
    return char, round(counts[char] * len(charset) / max(total, 1), 4)


def of_site_length(texts: list[str], lengths: tuple[int, int] | None, longest: int) -> np.ndarray:
    """Which readings are as long as the site's captchas ([min, max]; None: 1 to ``longest``, the reader's): a
    CTC reader may read too few or too many characters, and such a reading is no label."""
    shortest, longest = lengths or (1, longest)
    return np.asarray([shortest <= len(text) <= longest for text in texts], dtype=bool)


def round_rows(synthetic_count: int, kept: np.ndarray, real_share: float, rng: np.random.Generator,
               synthetic_share: float = 1.0, max_repeats: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One self-training round's images: ``synthetic_share`` of the synthetic set (drawn at random) and the kept
    pool images, at least ``real_share`` of them real, each pool image at most ``max_repeats`` times.

    A small pool (Kaggle's 1,040 beside 20,000 synthetic) would otherwise be a few percent of what the reader
    sees and barely move it. Its images are then repeated (each repeat augmented differently) in place of
    randomly dropped synthetic ones, so the round keeps its size and time; but a reader that sees its own
    readings of the same few hundred images dozens of times learns their errors too. Returns sorted synthetic
    rows and pool rows (repeats included).
    """
    drawn = int(round(synthetic_share * synthetic_count))
    if not len(kept):
        return np.sort(rng.choice(synthetic_count, drawn, replace=False)).astype(np.int64), np.empty(0, np.int64)
    size = drawn + len(kept)
    real_count = max(len(kept), int(round(real_share * size)))  # real_share <= 1: never more than the round
    if max_repeats is not None:
        real_count = min(real_count, max_repeats * len(kept))
    repeats, remainder = divmod(real_count, len(kept))
    real_rows = np.sort(np.concatenate([np.tile(kept, repeats), rng.choice(kept, remainder, replace=False)]))
    synthetic_rows = np.sort(rng.choice(synthetic_count, size - real_count, replace=False))
    return synthetic_rows, real_rows.astype(np.int64)


def train_student(student: Reader, teacher: Reader, coder: LabelCoder, synthetic: np.ndarray,
                  synthetic_labels: list[str], pool: np.ndarray, config: SelfTrainConfig,
                  reader_config: ClassifierConfig, augment: AugmentConfig | None, checkpoint: Path,
                  device: torch.device, mask: np.ndarray | None = None,
                  lengths: tuple[int, int] | None = None) -> list[dict]:
    """Noisy student: a fresh ``student`` (wider than the teacher) learns the teacher's readings of the whole pool.

    The self-trained reader has trained on its own readings round after round and keeps their errors; a new
    reader with more capacity, trained from scratch on those readings beside a ``student_synthetic_share`` of the
    synthetic set, under augmentation and dropout, generalises past some of them (Xie et al. 2020; HackMIT's
    95.3 % per character became 96.1 % with 4 epochs). The mix is drawn as a self-training round draws it
    (``round_rows``).
    Trains ``student`` in place; returns its log, one row per epoch.
    """
    texts, _ = read_images(teacher, coder, pool, device=device)
    kept = np.flatnonzero(of_site_length(texts, lengths, coder.length))
    synthetic_rows, real_rows = round_rows(len(synthetic), kept, config.real_share,
                                           np.random.default_rng(reader_config.seed + config.rounds + 1),
                                           config.student_synthetic_share, config.max_repeats)
    images = np.concatenate([synthetic[synthetic_rows], pool[real_rows]])
    labels = [synthetic_labels[row] for row in synthetic_rows] + [texts[row] for row in real_rows]
    student_config = replace(reader_config, channels=list(config.student_channels), epochs=config.student_epochs)
    return train_reader(student, coder, images, labels, student_config, augment, checkpoint, device,
                        len(synthetic_rows), mask)


# ---------------------------------------------------------------- SimGAN
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
    run = fingerprint(asdict(config), reader_precision, synthetic[:: max(1, len(synthetic) // 64)],
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

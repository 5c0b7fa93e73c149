"""Training an image classifier (the demo network) on batches the caller provides.

The caller owns data loading: it passes *batch sources*, either a sized re-iterable of
``(images, labels)`` batches (a list, :class:`TensorBatches`) or a callable ``source(epoch)``
returning one for that epoch. Images are ``uint8 [B, 3, H, W]`` (0..255), labels ``int64 [B]``.
This module normalises, augments, optimises and reports; it picks no device and writes no files.

Choices (mine, each a parameter where it matters):

* Optimiser: Adam (``betas=(0.9, 0.999)``), learning rate ``lr`` decayed per batch along a cosine
  to ``0.01 * lr`` over the run; no batch norm in the demo network, and Adam trains it from
  scratch without the careful learning-rate tuning SGD would need. ``weight_decay`` is L2 in Adam
  (default 0).
* Augmentation (``augment=True``): per image, a horizontal flip with probability 0.5 and a
  translation by up to ``max_shift`` pixels per axis (default ``round(H / 16)``: 7 px at 112,
  3 px at 48) with replicate padding, drawn from a ``torch.Generator`` seeded by ``seed``.
* Determinism: the generator above, plus the global RNG (dropout) seeded from ``seed`` inside
  ``torch.random.fork_rng`` so the caller's RNG state is restored afterwards, and
  ``torch.use_deterministic_algorithms(True, warn_only=True)`` for the duration of the call (the
  previous setting is restored). On CPU, same seed + same data + same thread count gives
  bit-identical weights; CUDA runs are only as deterministic as cuDNN allows (``warn_only``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .networks import normalize_images

__all__ = [
    "Batch",
    "BatchSource",
    "EpochStats",
    "TensorBatches",
    "TrainingError",
    "TrainingReport",
    "augment_images",
    "evaluate_classifier",
    "train_classifier",
]

Batch = tuple[Tensor, Tensor]
BatchSource = Iterable[Batch] | Callable[[int], Iterable[Batch]]
ProgressCallback = Callable[[int, int], None]


class TrainingError(Exception):
    """Training cannot go on (bad batches, loss not finite); the message is for people."""


@dataclass(frozen=True)
class EpochStats:
    """One epoch. Losses are mean cross-entropy per image; ``val_*`` are ``None`` without
    validation batches; ``train_accuracy`` is measured on the augmented batches in train mode."""

    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float | None
    val_accuracy: float | None
    seconds: float
    lr: float


@dataclass
class TrainingReport:
    """What :func:`train_classifier` did. ``final_val_accuracy`` is the last epoch's."""

    epochs: list[EpochStats] = field(default_factory=list)
    seed: int = 0
    device: str = "cpu"
    optimizer: str = "adam"
    lr: float = 0.0
    augment: bool = True
    num_train_images: int = 0
    num_val_images: int = 0
    total_seconds: float = 0.0

    @property
    def final_val_accuracy(self) -> float | None:
        return self.epochs[-1].val_accuracy if self.epochs else None

    @property
    def final_val_loss(self) -> float | None:
        return self.epochs[-1].val_loss if self.epochs else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict (epochs as a list of dicts, plus the final figures)."""
        data = asdict(self)
        data["final_val_accuracy"] = self.final_val_accuracy
        data["final_val_loss"] = self.final_val_loss
        return data


class TensorBatches:
    """A batch source over in-memory tensors: ``source(epoch)`` yields ``(images, labels)``.

    Args:
        images: ``uint8 [N, 3, H, W]``; labels: ``int64 [N]`` (any device; batches are slices).
        batch_size: images per batch; the last batch may be smaller.
        shuffle: reorder per epoch with a generator seeded by ``(seed, epoch)``.
    """

    def __init__(
        self, images: Tensor, labels: Tensor, batch_size: int, *, shuffle: bool = False, seed: int = 0
    ) -> None:
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.seed = int(batch_size), shuffle, int(seed)

    def __len__(self) -> int:
        return math.ceil(self.images.shape[0] / self.batch_size)

    @property
    def num_images(self) -> int:
        return int(self.images.shape[0])

    def __call__(self, epoch: int) -> Iterator[Batch]:
        n = self.images.shape[0]
        if self.shuffle:
            g = torch.Generator(device="cpu")
            g.manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(n, generator=g).to(self.images.device)
        else:
            order = torch.arange(n, device=self.images.device)
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size]
            yield self.images[idx], self.labels[idx]


def _epoch_batches(source: BatchSource | None, epoch: int, name: str) -> tuple[Iterable[Batch], int]:
    """The batches of one epoch and how many there are."""
    if source is None:
        return (), 0
    if callable(source):
        batches = source(epoch)
    else:
        if iter(source) is source:
            raise TrainingError(
                f"{name} is a one-shot iterator; pass a list, a TensorBatches or a callable "
                "epoch -> batches so it can be read once per epoch"
            )
        batches = source
    for candidate in (batches, source):
        if isinstance(candidate, Sized):
            return batches, len(candidate)
    raise TrainingError(
        f"{name} must have a len() (number of batches) so progress and the learning-rate "
        "schedule know the total; wrap a generator in a list or use TensorBatches"
    )


def augment_images(images: Tensor, generator: torch.Generator, *, flip: bool = True, max_shift: int = 0) -> Tensor:
    """Random horizontal flips and translations, per image.

    Args:
        images: ``float [B, C, H, W]`` (already normalised), any device.
        generator: CPU ``torch.Generator``; draws ``B`` flips then ``B x 2`` shifts.
        max_shift: largest shift in pixels per axis; borders are filled by replicate padding.

    Returns:
        ``float [B, C, H, W]`` on ``images.device``.
    """
    b, _c, h, w = images.shape
    out = images
    if flip:
        flips = (torch.rand(b, generator=generator) < 0.5).to(images.device)
        out = torch.where(flips.view(b, 1, 1, 1), out.flip(-1), out)
    if max_shift > 0:
        s = int(max_shift)
        shifts = torch.randint(0, 2 * s + 1, (b, 2), generator=generator).to(images.device)
        padded = F.pad(out, (s, s, s, s), mode="replicate")
        rows = shifts[:, 0:1] + torch.arange(h, device=images.device)  # [B, H]
        cols = shifts[:, 1:2] + torch.arange(w, device=images.device)  # [B, W]
        bi = torch.arange(b, device=images.device).view(b, 1, 1)
        out = padded[bi, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()
    return out


def _check_batch(images: Tensor, labels: Tensor, num_classes: int | None) -> None:
    if images.ndim != 4 or images.dtype != torch.uint8:
        raise TrainingError(f"images must be uint8 [B, C, H, W], got {images.dtype} {tuple(images.shape)}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise TrainingError(f"labels must be [B] matching {images.shape[0]} images, got {tuple(labels.shape)}")
    if num_classes is not None and labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise TrainingError(f"labels must lie in 0..{num_classes - 1}, got {int(labels.min())}..{int(labels.max())}")


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module,
    batches: Iterable[Batch],
    *,
    device: torch.device | str,
    mean: Sequence[float],
    std: Sequence[float],
    on_batch: Callable[[], None] | None = None,
) -> tuple[float, float, int]:
    """Mean cross-entropy, accuracy and image count over ``batches``.

    The model must be on ``device``; it is put in eval mode. Images ``uint8 [B, 3, H, W]``,
    labels ``int64 [B]``. ``on_batch()`` is called after each batch. Returns
    ``(nan, nan, 0)`` when there are no images.
    """
    model.eval()
    num_classes = _num_classes(model)
    total_loss, correct, count = 0.0, 0, 0
    for images, labels in batches:
        _check_batch(images, labels, num_classes)
        x = normalize_images(images.to(device), mean, std)
        y = labels.to(device=device, dtype=torch.int64)
        logits = model(x)
        total_loss += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
        count += int(y.numel())
        if on_batch is not None:
            on_batch()
    if count == 0:
        return math.nan, math.nan, 0
    return total_loss / count, correct / count, count


def _num_classes(model: nn.Module) -> int | None:
    value = getattr(model, "num_classes", None)
    return int(value) if isinstance(value, int) else None


def train_classifier(
    model: nn.Module,
    train_batches: BatchSource,
    val_batches: BatchSource | None,
    *,
    epochs: int,
    lr: float,
    seed: int,
    device: torch.device | str,
    mean: Sequence[float],
    std: Sequence[float],
    progress: ProgressCallback | None = None,
    augment: bool = True,
    max_shift: int | None = None,
    weight_decay: float = 0.0,
) -> TrainingReport:
    """Train ``model`` for image classification with cross-entropy; see the module docstring.

    The model is moved to ``device`` and trained in place; it is left in eval mode.

    Args:
        train_batches, val_batches: batch sources (module docstring) with a ``len()``; images
            ``uint8 [B, 3, H, W]``, labels ``int64 [B]``; ``val_batches`` may be ``None``.
        epochs: passes over ``train_batches``; lr: peak learning rate (Adam; 1e-3 suits DemoNet).
        mean, std: per-channel normalisation on the ``[0, 1]`` scale.
        progress: called as ``progress(done, total)`` after every batch, train and validation,
            ``total = epochs * (len(train) + len(val))``.
        max_shift: translation range for augmentation (default ``round(H / 16)``).

    Returns:
        :class:`TrainingReport`.

    Raises:
        TrainingError: malformed batches, no batches, or a loss that is not finite.
    """
    if epochs < 1:
        raise TrainingError("epochs must be at least 1")
    device = torch.device(device)
    model.to(device)
    num_classes = _num_classes(model)
    first_train, n_train = _epoch_batches(train_batches, 0, "train_batches")
    first_val, n_val = _epoch_batches(val_batches, 0, "val_batches")
    if n_train == 0:
        raise TrainingError("train_batches is empty")
    total_steps = epochs * n_train
    total = epochs * (n_train + n_val)
    report = TrainingReport(seed=int(seed), device=str(device), optimizer="adam", lr=float(lr), augment=augment)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)

    def cosine(step: int) -> float:  # factor on lr: 1 at the start, 0.01 at the end
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)
    generator = torch.Generator(device="cpu")
    generator.manual_seed(int(seed))
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    warn_only_before = torch.is_deterministic_algorithms_warn_only_enabled()
    done = 0
    started = time.perf_counter()
    try:
        torch.use_deterministic_algorithms(True, warn_only=True)
        with torch.random.fork_rng(devices=fork_devices, device_type=device.type if fork_devices else "cuda"):
            torch.manual_seed(int(seed))
            for epoch in range(epochs):
                t0 = time.perf_counter()
                if epoch == 0:
                    train_source, val_source = first_train, first_val
                else:
                    train_source = _epoch_batches(train_batches, epoch, "train_batches")[0]
                    val_source = _epoch_batches(val_batches, epoch, "val_batches")[0]
                model.train()
                loss_sum, correct, count = 0.0, 0, 0
                for step, (images, labels) in enumerate(train_source):
                    _check_batch(images, labels, num_classes)
                    x = normalize_images(images.to(device), mean, std)
                    if augment:
                        shift = max_shift if max_shift is not None else round(x.shape[2] / 16)
                        x = augment_images(x, generator, flip=True, max_shift=shift)
                    y = labels.to(device=device, dtype=torch.int64)
                    logits = model(x)
                    loss = F.cross_entropy(logits, y)
                    if not torch.isfinite(loss.detach()):
                        raise TrainingError(
                            f"the loss became {loss.detach().item()} at epoch {epoch + 1}, batch {step + 1}; "
                            "try a lower learning rate"
                        )
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    schedule.step()
                    loss_sum += float(loss.detach()) * y.numel()
                    correct += int((logits.detach().argmax(1) == y).sum())
                    count += int(y.numel())
                    done += 1
                    if progress is not None:
                        progress(done, total)
                val_loss = val_acc = None
                if val_batches is not None:

                    def on_val_batch() -> None:
                        nonlocal done
                        done += 1
                        if progress is not None:
                            progress(done, total)

                    vl, va, vn = evaluate_classifier(
                        model, val_source, device=device, mean=mean, std=std, on_batch=on_val_batch
                    )
                    val_loss, val_acc = (vl, va) if vn else (None, None)
                    report.num_val_images = vn
                report.num_train_images = count
                report.epochs.append(
                    EpochStats(
                        epoch=epoch + 1,
                        train_loss=loss_sum / max(count, 1),
                        train_accuracy=correct / max(count, 1),
                        val_loss=val_loss,
                        val_accuracy=val_acc,
                        seconds=time.perf_counter() - t0,
                        lr=float(optimizer.param_groups[0]["lr"]),
                    )
                )
    finally:
        torch.use_deterministic_algorithms(deterministic_before, warn_only=warn_only_before)
        model.eval()
    report.total_seconds = time.perf_counter() - started
    return report

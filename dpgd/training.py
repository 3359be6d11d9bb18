"""The one classifier trainer: every network dpgd trains outside DP-SGD goes through here.

Evaluation networks, the pool report's network, the expert's pre-training, the k-means
feature network and the pool-trained extractors all train with :func:`train_classifier`;
:func:`test_accuracy` measures them on the test split. The networks trained on a
generated pool share one recipe, :data:`POOL_RECIPE`, applied by :func:`train_on_pool`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from dpgd.allocator import rows_per_chunk
from dpgd.augment import DSA
from dpgd.errors import ConfigError
from dpgd.progress import progress_bar


@dataclass(frozen=True)
class PoolRecipe:
    """SGD settings for training a network on a generated pool (no augmentation)."""

    lr: float
    momentum: float
    weight_decay: float
    batch_size: int
    lr_drop_at_half: bool


# The evaluation protocol's SGD settings of the literature (DC/DM/NDPDC: lr 0.01, momentum
# 0.9, weight decay 5e-4, lr/10 at half-time), without DSA: pool networks serve as
# measurements, feature spaces and starting points, so they follow the protocol the
# distilled set is judged by rather than a tuned recipe of their own. Stages whose config
# exposes a learning rate or batch size override only that field.
POOL_RECIPE = PoolRecipe(lr=0.01, momentum=0.9, weight_decay=5e-4, batch_size=256, lr_drop_at_half=True)


def _check_labels(images: torch.Tensor, labels: torch.Tensor) -> None:
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty (N, C, H, W) tensor, got shape {tuple(images.shape)}")
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
    if labels.dtype != torch.int64 and not (labels.is_floating_point() and labels.dim() == 2):
        raise ValueError("labels must be int64 class indices or float (N, num_classes) soft labels")


def train_classifier(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    batch_size: int,
    lr_drop_at_half: bool,
    dsa: DSA | None,
    generator: torch.Generator,
    device: torch.device,
    progress: bool = False,
    desc: str = "",
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> nn.Module:
    """Train ``model`` in place with SGD and cross-entropy; returns it.

    ``images``/``labels`` are moved to ``device`` once and batched by index (no
    DataLoader: distilled sets and pools fit in memory). ``labels`` are int64 class
    indices or float soft labels (N, K). Shuffling and DSA draw from ``generator`` (a CPU
    generator keeps the order identical across devices); one DSA transform per batch.
    ``on_epoch(epoch, {"loss": last batch's loss})`` after each epoch: one host sync an epoch,
    only when given. Pass it only for public or DP data (distilled sets, pools).
    """
    _check_labels(images, labels)
    if epochs < 0 or batch_size < 1:
        raise ConfigError(f"epochs={epochs} and batch_size={batch_size} must be >= 0 and >= 1.")
    model.to(device).train()
    images = images.detach().to(device)
    labels = labels.detach().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    count = images.shape[0]
    # Chunking a step is exact only without batch statistics (dpgd's networks use group or
    # instance norm); a network with BatchNorm trains on whole batches.
    batch_norm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    rows = batch_size if batch_norm else rows_per_chunk(images[0].numel())
    bar = progress_bar(range(epochs), desc=desc or "train", disable=not progress, leave=False, dynamic_ncols=True)
    for epoch in bar:
        if lr_drop_at_half and epoch == epochs // 2:
            for group in optimizer.param_groups:
                group["lr"] = lr * 0.1
        order = torch.randperm(count, generator=generator, device=generator.device).to(device)
        for start in range(0, count, batch_size):
            index = order[start : start + batch_size]
            batch = images[index]
            if dsa is not None:
                batch = dsa(batch, generator)
            optimizer.zero_grad(set_to_none=True)
            loss = _backward_in_chunks(model, batch, labels[index], rows)
            optimizer.step()
        if progress or on_epoch is not None:
            loss_value = float(loss.item())
            bar.set_postfix(loss=f"{loss_value:.3f}", refresh=False)
            if on_epoch is not None:
                on_epoch(epoch, {"loss": loss_value})
    model.eval()
    return model


def _backward_in_chunks(model: nn.Module, batch: torch.Tensor, labels: torch.Tensor, rows: int) -> torch.Tensor:
    """Accumulate the gradient of the batch's mean cross-entropy chunk by chunk (chunks of
    ``rows`` records: :func:`dpgd.allocator.rows_per_chunk`); returns the loss (detached
    when chunked). The networks have no batch statistics, so this is the whole batch's
    gradient up to summation order, without its feature maps above the mmap threshold."""
    if len(batch) <= rows:
        loss = F.cross_entropy(model(batch), labels)
        loss.backward()
        return loss
    total = batch.new_zeros(())
    for part, part_labels in zip(batch.split(rows), labels.split(rows)):
        loss = F.cross_entropy(model(part), part_labels, reduction="sum") / len(batch)
        loss.backward()
        total += loss.detach()
    return total


def train_on_pool(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int,
    generator: torch.Generator,
    device: torch.device,
    recipe: PoolRecipe = POOL_RECIPE,
    progress: bool = False,
    desc: str = "",
) -> nn.Module:
    """:func:`train_classifier` under ``recipe`` (default :data:`POOL_RECIPE`), no DSA."""
    return train_classifier(
        model, images, labels, epochs=epochs, lr=recipe.lr, momentum=recipe.momentum,
        weight_decay=recipe.weight_decay, batch_size=recipe.batch_size, lr_drop_at_half=recipe.lr_drop_at_half,
        dsa=None, generator=generator, device=device, progress=progress, desc=desc,
    )


@torch.no_grad()
def correct_predictions(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> int:
    """How many of the int64-labelled ``images`` ``model`` classifies correctly.

    Batches move to the model's device one at a time, so the images may stay on the CPU.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=device)
    # Each record's prediction is its own: chunks below the mmap threshold change nothing.
    batch_size = min(batch_size, rows_per_chunk(images[0].numel())) if images.shape[0] else batch_size
    for start in range(0, images.shape[0], batch_size):
        batch = images[start : start + batch_size].to(device)
        target = labels[start : start + batch_size].to(device)
        correct += (model(batch).argmax(dim=1) == target).sum()
    model.train(was_training)
    return int(correct.item())


def test_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> float:
    """Accuracy in percent (0-100) of ``model`` on int64-labelled ``images``."""
    return 100.0 * correct_predictions(model, images, labels, batch_size) / max(images.shape[0], 1)


def class_hits(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
               batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Correct predictions of ``model`` and images, per class (int64, length ``num_classes``):
    which classes a distilled set teaches, e.g. those its public knowledge lacks."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    labels = labels.cpu()
    hits = torch.zeros(num_classes, dtype=torch.int64)
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            target = labels[start : start + batch_size]
            right = model(images[start : start + batch_size].to(device)).argmax(dim=1).cpu() == target
            hits += torch.bincount(target[right], minlength=num_classes)
    model.train(was_training)
    return hits, torch.bincount(labels, minlength=num_classes)


test_accuracy.__test__ = False  # a library function whose name pytest would otherwise collect

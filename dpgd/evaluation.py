"""Evaluation of a distilled set: train fresh networks on it, test them on the real test set.

The protocol is the literature's (DC/DM/NDPDC): SGD with momentum and weight decay, lr/10
at half-time, DSA on every batch, mean and std over several fresh networks. The test set
is touched once per run, after training: nothing is selected on it.

``train_classifier`` is the shared training loop; later stages reuse it to train feature
extractors and experts on generated pools.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from dpgd.augment import DSA
from dpgd.config import EvaluationConfig, ModelConfig
from dpgd.data.bundle import ImageDataset
from dpgd.errors import ConfigError
from dpgd.models import seeded_model
from dpgd.seeding import derive_seed, stage_generator


@dataclass
class EvalResult:
    """Test accuracies (percent, 0-100) of the fresh networks, one per run.

    ``std`` is the population standard deviation (``ddof=0``, i.e. ``np.std``), as the
    DC/DM/NDPDC code reports it; it is 0 for a single run.
    """

    accuracies: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies) if self.accuracies else float("nan")

    @property
    def std(self) -> float:
        return statistics.pstdev(self.accuracies) if self.accuracies else float("nan")

    def to_dict(self) -> dict[str, object]:
        return {"accuracies": list(self.accuracies), "mean": self.mean, "std": self.std, "seconds": self.seconds}


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
) -> nn.Module:
    """Train ``model`` in place with SGD and cross-entropy; returns it.

    ``images``/``labels`` are moved to ``device`` once and batched by index (no
    DataLoader: distilled sets and pools fit in memory). ``labels`` are int64 class
    indices or float soft labels (N, K). Shuffling and DSA draw from ``generator`` (a CPU
    generator keeps the order identical across devices); one DSA transform per batch.
    """
    _check_labels(images, labels)
    if epochs < 0 or batch_size < 1:
        raise ConfigError(f"epochs={epochs} and batch_size={batch_size} must be >= 0 and >= 1.")
    model.to(device).train()
    images = images.detach().to(device)
    labels = labels.detach().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    count = images.shape[0]
    bar = tqdm(range(epochs), desc=desc or "train", disable=not progress, leave=False, dynamic_ncols=True)
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
            loss = F.cross_entropy(model(batch), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if progress:
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    model.eval()
    return model


@torch.no_grad()
def test_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> float:
    """Accuracy in percent (0-100) of ``model`` on int64-labelled ``images``.

    Batches move to the model's device one at a time, so the test set may stay on the CPU.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, images.shape[0], batch_size):
        batch = images[start : start + batch_size].to(device)
        target = labels[start : start + batch_size].to(device)
        correct += int((model(batch).argmax(dim=1) == target).sum().item())
    model.train(was_training)
    return 100.0 * correct / max(images.shape[0], 1)


test_accuracy.__test__ = False  # a library function whose name pytest would otherwise collect


def evaluate_distilled(
    images: torch.Tensor,
    labels: torch.Tensor,
    dataset: ImageDataset,
    model_cfg: ModelConfig,
    eval_cfg: EvaluationConfig,
    device: torch.device,
    seed: int,
    progress: bool = True,
) -> EvalResult:
    """Train ``eval_cfg.runs`` fresh networks on (images, labels) and test each once.

    Run ``r`` draws its initial weights and its batch order/augmentation from seeds derived
    from (seed, "evaluation", r), so results are reproducible and independent of other
    stages' randomness.
    """
    if eval_cfg.runs < 1:
        raise ConfigError(f"evaluation.runs={eval_cfg.runs} must be at least 1.")
    dsa = DSA(eval_cfg.dsa_strategy) if eval_cfg.dsa else None
    result = EvalResult()
    started = time.perf_counter()
    for run in range(eval_cfg.runs):
        model = seeded_model(
            model_cfg,
            dataset.channels,
            dataset.num_classes,
            dataset.image_size,
            derive_seed(seed, "evaluation", run, "init"),
        )
        train_classifier(
            model,
            images,
            labels,
            epochs=eval_cfg.epochs,
            lr=eval_cfg.lr,
            momentum=eval_cfg.momentum,
            weight_decay=eval_cfg.weight_decay,
            batch_size=eval_cfg.batch_size,
            lr_drop_at_half=eval_cfg.lr_drop_at_half,
            dsa=dsa,
            generator=stage_generator(seed, "evaluation", run, "train"),
            device=device,
            progress=progress,
            desc=f"eval {run + 1}/{eval_cfg.runs}",
        )
        accuracy = test_accuracy(model, dataset.test_images, dataset.test_labels, eval_cfg.test_batch_size)
        result.accuracies.append(accuracy)
        if progress:
            tqdm.write(f"evaluation run {run + 1}/{eval_cfg.runs}: test accuracy {accuracy:.2f}%")
    result.seconds = time.perf_counter() - started
    return result

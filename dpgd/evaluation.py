"""Evaluation of a distilled set: train fresh networks on it, test them on the real test set.

The protocol is the literature's (DC/DM/NDPDC): SGD with momentum and weight decay, lr/10
at half-time, DSA on every batch, mean and std over several fresh networks. The test set
is touched once per run, after training: nothing is selected on it.

The training loop itself is :func:`dpgd.training.train_classifier`, shared with the
stages that train networks on generated pools.
"""

from __future__ import annotations

import statistics
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from dpgd.augment import DSA
from dpgd.config import EvaluationConfig, ModelConfig
from dpgd.data.bundle import ImageDataset
from dpgd.errors import ConfigError
from dpgd.models import seeded_model
from dpgd.seeding import derive_seed, stage_generator
from dpgd.tracking import Curve
from dpgd.training import class_hits, train_classifier

log = logging.getLogger("dpgd")


@dataclass
class EvalResult:
    """Test accuracies (percent, 0-100) of the fresh networks, one per run.

    ``std`` is the population standard deviation (``ddof=0``, i.e. ``np.std``), as the
    DC/DM/NDPDC code reports it; it is 0 for a single run.
    """

    accuracies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    # Per run, the accuracy (percent) on each class's test images.
    class_accuracies: list[list[float]] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies) if self.accuracies else float("nan")

    @property
    def std(self) -> float:
        return statistics.pstdev(self.accuracies) if self.accuracies else float("nan")

    @property
    def class_means(self) -> list[float]:
        """Each class's test accuracy, averaged over the runs (empty without per-class results)."""
        return [statistics.fmean(column) for column in zip(*self.class_accuracies)]

    def to_dict(self) -> dict[str, object]:
        return {"accuracies": list(self.accuracies), "mean": self.mean, "std": self.std, "seconds": self.seconds,
                "class_accuracies": [list(row) for row in self.class_accuracies]}


def train_fresh_network(
    images: torch.Tensor,
    labels: torch.Tensor,
    dataset: ImageDataset,
    model_cfg: ModelConfig,
    eval_cfg: EvaluationConfig,
    *,
    epochs: int,
    init_seed: int,
    generator: torch.Generator,
    device: torch.device,
    progress: bool = False,
    desc: str = "",
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> nn.Module:
    """A network with initial weights from ``init_seed``, trained on (images, labels) under
    the evaluation protocol (``eval_cfg``'s optimiser and DSA) for ``epochs``: what judges a
    distilled set, here and in the DP selection (:mod:`dpgd.selection`)."""
    model = seeded_model(model_cfg, dataset.channels, dataset.num_classes, dataset.image_size, init_seed)
    return train_classifier(
        model, images, labels, epochs=epochs, lr=eval_cfg.lr, momentum=eval_cfg.momentum,
        weight_decay=eval_cfg.weight_decay, batch_size=eval_cfg.batch_size, lr_drop_at_half=eval_cfg.lr_drop_at_half,
        dsa=DSA(eval_cfg.dsa_strategy) if eval_cfg.dsa else None, generator=generator, device=device,
        progress=progress, desc=desc, on_epoch=on_epoch,
    )


def evaluate_distilled(
    images: torch.Tensor,
    labels: torch.Tensor,
    dataset: ImageDataset,
    model_cfg: ModelConfig,
    eval_cfg: EvaluationConfig,
    device: torch.device,
    seed: int,
    progress: bool = True,
    curve: Curve | None = None,
) -> EvalResult:
    """Train ``eval_cfg.runs`` fresh networks on (images, labels) and test each once.

    Run ``r`` draws its initial weights and its batch order/augmentation from seeds derived
    from (seed, "evaluation", r), so results are reproducible and independent of other
    stages' randomness. ``curve`` gets each network's training loss per epoch (the
    distilled set is a DP release: post-processing), keyed ``train_loss_model<r>``.
    """
    if eval_cfg.runs < 1:
        raise ConfigError(f"evaluation.runs={eval_cfg.runs} must be at least 1.")
    result = EvalResult()
    started = time.perf_counter()
    for run in range(eval_cfg.runs):
        model = train_fresh_network(
            images, labels, dataset, model_cfg, eval_cfg, epochs=eval_cfg.epochs,
            init_seed=derive_seed(seed, "evaluation", run, "init"),
            generator=stage_generator(seed, "evaluation", run, "train"), device=device, progress=progress,
            desc=f"eval {run + 1}/{eval_cfg.runs}",
            on_epoch=None if curve is None else (
                lambda epoch, metrics, r=run: curve(epoch, {f"train_loss_model{r}": metrics["loss"]})),
        )
        hits, sizes = class_hits(model, dataset.test_images, dataset.test_labels, dataset.num_classes,
                                 eval_cfg.test_batch_size)
        result.accuracies.append(100.0 * int(hits.sum()) / max(int(sizes.sum()), 1))
        result.class_accuracies.append([100.0 * int(h) / int(n) if n > 0 else float("nan") for h, n in zip(hits, sizes)])
        if progress:
            log.info("evaluation run %d/%d: test accuracy %.2f %%", run + 1, eval_cfg.runs, result.accuracies[-1])
    result.seconds = time.perf_counter() - started
    return result

"""DP selection of the released set among points of the matching trajectory.

Why: noisy matching refines the pool's k-means start, and whether that helps depends on
the private data, not on any public quantity: on digits (a good pool) matching lost 5.6
points at epsilon 1, on cifar10-mini (a weak pool) it gained 6, at the same predicted
signal-to-noise (README). So the run asks the data, with DP, which point to release.

The mechanism (ledger component ``selection``): candidates S_1..S_K are the matching
trajectory at evenly spaced iterations (the start and the end included), all DP outputs.
A fresh network f_k is trained on each (public work: the public seed, the same initial
weights and batch order for every candidate, so they differ only in the set). The vector
of correct-prediction counts c_k = #{(x, y) in the private train split: f_k(x) = y} is
released once with Gaussian noise. Adding or removing one record changes every c_k by at
most 1, so the vector's L2 sensitivity is sqrt(K); the noise std per count is
sigma * sqrt(K), sigma the planned multiplier (one record, sample rate 1). Keeping the
argmax, and publishing the noisy counts divided by the released total, is post-processing.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch

from dpgd.config import EvaluationConfig, MatcherConfig, ModelConfig, SelectionConfig
from dpgd.counts import ClassCounts
from dpgd.data import ImageDataset
from dpgd.distilled import DistilledSet
from dpgd.errors import ConfigError
from dpgd.evaluation import train_fresh_network
from dpgd.privacy.components import PrivacyNeed, ReleaseLog
from dpgd.seeding import derive_seed, stage_generator
from dpgd.training import correct_predictions

log = logging.getLogger("dpgd")

COMPONENT = "selection"
NAMES = ("dp_accuracy", "none")


def runs(cfg: SelectionConfig, matcher: MatcherConfig) -> bool:
    """Whether the selection runs: configured, and a matcher makes a trajectory to select on."""
    if cfg.name not in NAMES:
        raise ConfigError(f"selection={cfg.name} is unknown; choose one of {', '.join(NAMES)}.")
    return cfg.name == "dp_accuracy" and matcher.name != "none" and matcher.iterations > 0


def privacy_request(cfg: SelectionConfig, matcher: MatcherConfig) -> PrivacyNeed | None:
    """One Gaussian release of the K correct-prediction counts (None when it does not run)."""
    if not runs(cfg, matcher):
        return None
    return PrivacyNeed(
        COMPONENT, 1.0, 1,
        f"one record changes each of the {cfg.candidates} correct-prediction counts by at most 1: "
        f"L2 sensitivity sqrt({cfg.candidates}), noise std sigma*sqrt({cfg.candidates}) per count",
    )


def candidate_iterations(iterations: int, candidates: int) -> list[int]:
    """Matching iterations done at each candidate, evenly spaced: 0 (the start) .. ``iterations``."""
    if candidates < 2:
        raise ConfigError(f"selection.candidates={candidates} must be at least 2 (the start and the end).")
    return sorted({round(i * iterations / (candidates - 1)) for i in range(candidates)})


@dataclass(frozen=True)
class Selection:
    """What the selection released: noisy train accuracy (percent of the released record
    count) per candidate, and the chosen one. Public: computed from DP outputs only."""

    iterations: list[int]
    noisy_train_acc: list[float]
    chosen_iteration: int
    noise_std: float  # per count (0 in a non-private run)

    def to_dict(self) -> dict[str, Any]:
        return {"iterations": list(self.iterations), "noisy_train_acc": list(self.noisy_train_acc),
                "chosen_iteration": self.chosen_iteration, "count_noise_std": self.noise_std}


def release_counts(correct: torch.Tensor, noise_multiplier: float | None, generator: torch.Generator,
                   releases: ReleaseLog | None = None) -> float:
    """The Gaussian release of the K correct-prediction counts, in place: noise std
    ``noise_multiplier * sqrt(K)`` on each (L2 sensitivity sqrt(K)); returns that std
    (0 for ``None``, a non-private run, where the counts stay exact)."""
    if noise_multiplier is None:
        return 0.0
    noise_std = float(noise_multiplier) * math.sqrt(correct.numel())
    correct.add_(torch.randn(correct.shape, generator=generator, dtype=correct.dtype), alpha=noise_std)
    if releases is not None:
        releases.record(noise_multiplier)
    return noise_std


def select(
    candidates: dict[int, DistilledSet],
    dataset: ImageDataset,
    cfg: SelectionConfig,
    model_cfg: ModelConfig,
    eval_cfg: EvaluationConfig,
    *,
    noise_multiplier: float | None,
    counts: ClassCounts,
    seed: int,
    device: torch.device,
    noise_generator: torch.Generator,
    releases: ReleaseLog | None = None,
    progress: bool = True,
) -> tuple[DistilledSet, Selection]:
    """Release the noisy correct-prediction counts of ``candidates`` (matching iteration ->
    set) and return the best set. ``noise_multiplier`` None: a non-private run (exact
    counts). The noise is drawn once, from ``noise_generator`` (the run's secret stream),
    and added in place: the exact counts do not leave this function."""
    iterations = sorted(candidates)
    correct = torch.zeros(len(iterations), dtype=torch.float64)
    for k, iteration in enumerate(iterations):
        images, labels = candidates[iteration].expanded()
        model = train_fresh_network(
            images, labels, dataset, model_cfg, eval_cfg, epochs=cfg.epochs,
            init_seed=derive_seed(seed, "selection", "init"), generator=stage_generator(seed, "selection", "train"),
            device=device, progress=progress, desc=f"select {k + 1}/{len(iterations)}",
        )
        correct[k] = correct_predictions(model, dataset.train_images, dataset.train_labels, eval_cfg.test_batch_size)
    noise_std = release_counts(correct, noise_multiplier, noise_generator, releases)
    noisy_acc = [round(100.0 * float(c) / counts.total, 2) for c in correct]
    best = int(torch.argmax(correct))
    chosen = iterations[best]
    log.info("selection: noisy train accuracy %s at matching iterations %s (count noise std %.3g) -> iteration %d",
             noisy_acc, iterations, noise_std, chosen)
    return candidates[chosen], Selection(iterations, noisy_acc, chosen, noise_std)

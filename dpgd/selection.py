"""DP selection of the released set among points of the matching trajectory.

Why: noisy matching refines the pool's k-means start, and whether that helps depends on
the private data, not on any public quantity: on digits (a good pool) matching lost 5.6
points at epsilon 1, on cifar10-mini (a weak pool) it gained 6, at the same predicted
signal-to-noise (docs/results.md). So the run asks the data, with DP, which point to release.

The mechanism (ledger component ``selection``): candidates S_0..S_{K-1} are the matching
trajectory at evenly spaced iterations (S_0 the start, the end included), all DP outputs.
A fresh network f_k is trained on each (public work: the public seed, the same initial
weights and batch order for every candidate, so they differ only in the set). With
c_k = #{(x, y) in the private train split: f_k(x) = y}, the vector of gains over the
start, g_k = c_k - c_0 (k = 1..K-1), is released once with Gaussian noise. One record adds
a_k - a_0 to each g_k, where a_k in {0, 1} says whether f_k classifies it: every entry moves
by at most 1, so the L2 sensitivity is sqrt(K-1) and the noise std per gain is
sigma * sqrt(K-1), sigma the planned multiplier (one record, sample rate 1). Keeping the
best of {0, g_1, ..., g_{K-1}}, and publishing the noisy gains divided by the released
total, is post-processing. For the default K = 2 this is one noisy difference with noise
std sigma: half the noise on the decision of releasing the two counts (std sigma*sqrt(2)
each, sigma*2 on their difference) at the same budget, because a record that both networks
classify alike moves nothing.
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
from dpgd.matching.release import planned_iterations
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
    return cfg.name == "dp_accuracy" and matcher.name != "none" and planned_iterations(matcher) > 0


def privacy_request(cfg: SelectionConfig, matcher: MatcherConfig) -> PrivacyNeed | None:
    """One Gaussian release of the K-1 gains over the start (None when it does not run)."""
    if not runs(cfg, matcher):
        return None
    # the deduplicated trajectory points: a short matching run can have fewer than asked
    gains = len(candidate_iterations(planned_iterations(matcher), cfg.candidates)) - 1
    return PrivacyNeed(
        COMPONENT, 1.0, 1,
        f"one record changes each of the {gains} gains over the start (correct-prediction count minus "
        f"the start's) by at most 1: L2 sensitivity sqrt({gains}), noise std sigma*sqrt({gains}) per gain",
    )


def candidate_iterations(iterations: int, candidates: int) -> list[int]:
    """Matching iterations done at each candidate, evenly spaced: 0 (the start) .. ``iterations``."""
    if candidates < 2:
        raise ConfigError(f"selection.candidates={candidates} must be at least 2 (the start and the end).")
    return sorted({round(i * iterations / (candidates - 1)) for i in range(candidates)})


@dataclass(frozen=True)
class Selection:
    """What the selection released: per candidate, the noisy gain in train accuracy over the
    start (percentage points of the released record count; 0 for the start itself), and
    the chosen one. Public: computed from DP outputs only."""

    iterations: list[int]
    noisy_gain: list[float]
    chosen_iteration: int
    noise_std: float  # per gain, in records (0 in a non-private run)

    def to_dict(self) -> dict[str, Any]:
        return {"iterations": list(self.iterations), "noisy_gain": list(self.noisy_gain),
                "chosen_iteration": self.chosen_iteration, "gain_noise_std": self.noise_std}


def release_gains(correct: torch.Tensor, noise_multiplier: float | None, generator: torch.Generator,
                  releases: ReleaseLog | None = None) -> tuple[torch.Tensor, float]:
    """The Gaussian release of the gains over the start, ``correct[1:] - correct[0]``: noise
    std ``noise_multiplier * sqrt(K-1)`` on each (L2 sensitivity sqrt(K-1)). Returns the
    gains with a leading 0 for the start, and that std (0 for ``None``: a non-private run,
    where the gains stay exact). ``correct`` is overwritten, so the exact counts do not
    outlive the call."""
    gains = correct[1:] - correct[0]
    correct.zero_()
    noise_std = 0.0
    if noise_multiplier is not None:
        noise_std = float(noise_multiplier) * math.sqrt(gains.numel())
        gains.add_(torch.randn(gains.shape, generator=generator, dtype=gains.dtype), alpha=noise_std)
        if releases is not None:
            releases.record(noise_multiplier)
    return torch.cat([gains.new_zeros(1), gains]), noise_std


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
    """Release the noisy gains in train-split correct predictions of ``candidates``
    (matching iteration -> set; the first is the start) over the start, and return the
    best set. ``noise_multiplier`` None: a non-private run (exact gains). The noise is drawn
    once, from ``noise_generator`` (the run's secret stream): the exact counts do not leave
    this function."""
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
    gains, noise_std = release_gains(correct, noise_multiplier, noise_generator, releases)
    noisy_gain = [round(100.0 * float(g) / counts.total, 2) for g in gains]
    best = int(torch.argmax(gains))  # ties (a non-private run) keep the earliest: the start
    chosen = iterations[best]
    log.info("selection: noisy train-accuracy gain over the start %s points at matching iterations %s "
             "(noise std %.3g records) -> iteration %d", noisy_gain, iterations, noise_std, chosen)
    return candidates[chosen], Selection(iterations, noisy_gain, chosen, noise_std)

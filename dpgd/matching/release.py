"""What matching reads of the private train set: batches, and the one DP release per iteration.

:func:`release_noisy_class_sums` is the Gaussian mechanism; only its noisy output leaves
it. The batch samplers decide which records it sees (Poisson for DP, a fixed number per
class for the non-private DM), and :func:`noise_schedule_fn` which sigma each iteration
uses. Kept apart from the loop so the privacy-relevant code can be read on its own.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator, Sequence, Union

import torch

from dpgd.errors import ConfigError
from dpgd.privacy.components import PrivacyNeed
from dpgd.privacy.schedules import relative_pieces

COMPONENT = "matcher"
SENSITIVITY_TEXT = "L2 clip C of each real embedding: one record moves one class sum by at most C"


def privacy_request(matcher_cfg: Any) -> PrivacyNeed | None:
    """What ``dp_feature`` will release: one subsampled Gaussian per iteration; None otherwise."""
    if matcher_cfg.name != "dp_feature":
        return None
    steps = matcher_cfg.iterations
    return PrivacyNeed(COMPONENT, matcher_cfg.sample_rate, steps, SENSITIVITY_TEXT,
                       relative_pieces(matcher_cfg.noise_schedule, steps))


def clip_rows(embeddings: torch.Tensor, clip_norm: float) -> torch.Tensor:
    """Scale each row to L2 norm at most ``clip_norm`` (differentiable)."""
    norms = embeddings.norm(dim=1, keepdim=True)
    return embeddings * torch.clamp(clip_norm / (norms + 1e-12), max=1.0)


def release_noisy_class_sums(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    clip_norm: float,
    noise_multiplier: float,
    noise_generator: torch.Generator,
) -> torch.Tensor:
    """The Gaussian mechanism on per-class sums of clipped embeddings.

    Returns ``(num_classes, d)`` noisy sums. Sensitivity under add/remove of one record is
    ``clip_norm`` (one record changes one row by a vector of norm <= C), so the noise std is
    ``noise_multiplier * clip_norm``. Noise is drawn once per call, from the caller's
    generator, and added in place so no clean copy survives.
    """
    clipped = clip_rows(embeddings, clip_norm)
    sums = torch.zeros(num_classes, embeddings.shape[1], dtype=embeddings.dtype, device=embeddings.device)
    sums.index_add_(0, labels, clipped)
    del clipped
    noise = torch.randn(sums.shape, generator=noise_generator, device=noise_generator.device, dtype=sums.dtype)
    sums.add_(noise.to(sums.device), alpha=noise_multiplier * clip_norm)
    return sums


def class_means(embeddings: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    sums = torch.zeros(num_classes, embeddings.shape[1], dtype=embeddings.dtype, device=embeddings.device)
    sums.index_add_(0, labels, embeddings)
    counts = torch.bincount(labels, minlength=num_classes).clamp(min=1).to(embeddings.dtype)
    return sums / counts[:, None]


NoiseSpec = Union[float, Sequence[float], Callable[[int], float], None]


def noise_schedule_fn(noise_multiplier: NoiseSpec, iterations: int) -> Callable[[int], float] | None:
    """Per-iteration sigma from a float (constant), a per-iteration list, or a callable."""
    if noise_multiplier is None:
        return None
    if callable(noise_multiplier):
        return noise_multiplier
    if isinstance(noise_multiplier, (int, float)):
        # 0 (exactly, constant) is the non-private run of the same mechanism (epsilon=inf:
        # clipping kept, no noise, nothing recorded); a private plan never produces it, and
        # the ledger check would catch a release without its declared noise.
        if noise_multiplier < 0 or not math.isfinite(noise_multiplier):
            raise ConfigError("matcher=dp_feature needs a positive noise multiplier from the budget plan.")
        value = float(noise_multiplier)
        return lambda iteration: value
    values = [float(v) for v in noise_multiplier]
    if len(values) != iterations:
        raise ConfigError(
            f"the noise schedule has {len(values)} entries but matcher.iterations={iterations}; "
            "the ledger would not match what runs"
        )
    if any(not (v > 0) for v in values):
        raise ConfigError("matcher=dp_feature needs positive noise multipliers at every iteration.")
    return values.__getitem__


def poisson_batches(
    labels: torch.Tensor, sample_rate: float, generator: torch.Generator
) -> Iterator[torch.Tensor]:
    """Indices of a Poisson sample of the train set: each record joins with prob. q."""
    while True:
        mask = torch.rand(labels.shape[0], generator=generator) < sample_rate
        yield torch.nonzero(mask).flatten()


def fixed_per_class_batches(
    labels: torch.Tensor, num_classes: int, per_class: int, generator: torch.Generator
) -> Iterator[torch.Tensor]:
    """DM's batches: ``per_class`` random records of every class (without replacement)."""
    by_class = [torch.nonzero(labels == c).flatten() for c in range(num_classes)]
    while True:
        picks = [idx[torch.randperm(len(idx), generator=generator)[:per_class]] for idx in by_class]
        yield torch.cat(picks)

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


RELEASES = ("per_iteration", "once")
EMBEDDINGS = ("flat", "pooled")
ONCE_SENSITIVITY_TEXT = ("L2 clip C of each real embedding, averaged over the fixed augmentations: one record "
                         "moves one class sum by at most C")


def privacy_request(matcher_cfg: Any, extractors: int) -> PrivacyNeed | None:
    """What ``dp_feature`` will release; None otherwise. ``per_iteration``: one subsampled
    Gaussian per iteration at the matcher's sample rate. ``once``: one Gaussian over the
    whole train set (sample rate 1) per extractor (``extractors`` of them)."""
    if matcher_cfg.name != "dp_feature":
        return None
    if matcher_cfg.release not in RELEASES:
        raise ConfigError(f"matcher.release={matcher_cfg.release} is unknown; choose {' or '.join(RELEASES)}.")
    if matcher_cfg.release == "once":
        if matcher_cfg.noise_schedule.kind != "constant":
            raise ConfigError("matcher.release=once releases each target once: use matcher.noise_schedule.kind="
                              "constant (a schedule spreads noise over iterations that release nothing).")
        if matcher_cfg.augmentations < 1:
            raise ConfigError(f"matcher.augmentations={matcher_cfg.augmentations} must be at least 1.")
        return PrivacyNeed(COMPONENT, 1.0, int(extractors), ONCE_SENSITIVITY_TEXT)
    steps = planned_iterations(matcher_cfg)
    return PrivacyNeed(COMPONENT, matcher_cfg.sample_rate, steps, SENSITIVITY_TEXT,
                       relative_pieces(matcher_cfg.noise_schedule, steps))


def planned_iterations(matcher_cfg: Any) -> int:
    """The iterations a plan made before the count release assumes: the configured
    number, or ``min_iterations`` when the information rule chooses it after the release
    (:func:`dpgd.budget.with_iterations`; the run then re-plans)."""
    return matcher_cfg.min_iterations if matcher_cfg.iterations is None else int(matcher_cfg.iterations)


def clipped_view_mean(views: list[torch.Tensor], clip_norm: float) -> torch.Tensor:
    """Each row clipped to ``clip_norm`` in every view, then averaged over the views: one
    record's contribution to a once-released class sum (norm <= C)."""
    return torch.stack([clip_rows(view, clip_norm) for view in views]).mean(0)


def release_class_sums_once(
    views: Callable[[torch.Tensor], list[torch.Tensor]],
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    clip_norm: float,
    noise_multiplier: float,
    noise_generator: torch.Generator,
    device: torch.device,
    batch_size: int = 500,
) -> torch.Tensor:
    """The Gaussian mechanism on per-class sums over the whole train set (sample rate 1).

    ``views(batch)`` returns the batch's embeddings under each fixed augmentation; every
    one is clipped to ``clip_norm`` and a record contributes their mean (norm <= C, so the
    sensitivity under add/remove of one record is C, as in :func:`release_noisy_class_sums`).
    Noise N(0, (sigma*C)^2) is drawn once, after the sums, and added in place.
    """
    sums: torch.Tensor | None = None
    for start in range(0, len(labels), batch_size):
        batch = images[start:start + batch_size].to(device)
        record = clipped_view_mean(views(batch), clip_norm)
        if sums is None:
            sums = torch.zeros(num_classes, record.shape[1], dtype=record.dtype, device=device)
        sums.index_add_(0, labels[start:start + batch_size].to(device), record)
        del record
    if sums is None:
        raise ConfigError("matcher.release=once found no train records.")
    noise = torch.randn(sums.shape, generator=noise_generator, device=noise_generator.device, dtype=sums.dtype)
    sums.add_(noise.to(sums.device), alpha=noise_multiplier * clip_norm)
    return sums


def shrink_towards(target: torch.Tensor, prior: torch.Tensor, noise_std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive-part James-Stein shrinkage of each released class mean towards ``prior``.

    ``target`` (K, d) = signal + Gaussian noise of per-coordinate std ``noise_std`` (K,);
    ``prior`` (K, d) is public (the synthetic initialisation's class means). The estimate
    ``prior + max(0, 1 - (d-2) std^2 / |target - prior|^2) (target - prior)`` has lower
    expected squared error than ``target`` for d >= 3, whatever the signal: at a low
    signal-to-noise ratio it keeps the initialisation, at a high one it follows the
    release. Post-processing of the release. Returns the estimate and the weights (K,).
    """
    difference = target - prior
    d = target.shape[1]
    weights = (1 - (d - 2) * noise_std.pow(2) / difference.pow(2).sum(1).clamp(min=1e-30)).clamp(min=0)
    return prior + weights[:, None] * difference, weights


def signal_to_noise(target: torch.Tensor, noise_multiplier: float, clip_norm: float,
                    expected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Signal-to-noise of released class means (post-processing of the release).

    A class mean target ``t = (s + n) / m`` (``m`` the expected records of the class) has
    noise of expected norm ``sigma C sqrt(d) / m`` and a signal of norm at most C. Returns
    the bound ``C / noise`` and the estimate ``sqrt(max(|t|^2 - noise^2, 0)) / noise``,
    both averaged over classes (0-dim tensors).
    """
    noise_norm = noise_multiplier * clip_norm * math.sqrt(target.shape[1]) / expected.clamp(min=1e-12)
    if noise_multiplier <= 0:
        inf = torch.tensor(float("inf"), device=target.device)
        return inf, inf
    signal = (target.pow(2).sum(1) - noise_norm.pow(2)).clamp(min=0).sqrt()
    return (clip_norm / noise_norm).mean(), (signal / noise_norm).mean()


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

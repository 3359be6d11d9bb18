"""Feature matching (the ``matcher`` group): DP feature matching (NDPDC) and DM.

One iteration of ``dp_feature`` is one Poisson-subsampled Gaussian mechanism over the whole
train set: every record joins the batch with probability q, each real embedding is clipped
to L2 norm C, embeddings are summed per class (classes are disjoint, so one record touches
one sum), and N(0, (sigma*C)^2 I) is added to every class sum once. Only the noisy sums
leave :func:`release_noisy_class_sums`; the clean sums are overwritten in place and never
stored. The noisy sum is divided by the expected batch size q*N_c, with N_c the run's
released (noisy) class count (:mod:`dpgd.counts`). Poisson masks and noise come from the
run's secret :class:`~dpgd.privacy.randomness.NoiseSource`; DSA parameters and the
extractors from the public seed.

``dm`` is the same loop with a fixed number of real images per class, no clipping and no
noise: the non-private upper bound.

Synthetic embeddings go through the same clipping as the real ones, so both sides of the
matching loss live in the same space (a deterministic map, no privacy cost).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol, Sequence, Union

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from dpgd.augment import DSA
from dpgd.config import MatcherConfig, ModelConfig
from dpgd.counts import ClassCounts
from dpgd.data import ImageDataset
from dpgd.errors import ConfigError
from dpgd.evaluation import train_classifier
from dpgd.initialisation import expand_multi_formation
from dpgd.models import seeded_model
from dpgd.seeding import derive_seed, stage_generator

class ExtractorSource(Protocol):
    """Hands out the network to match through at each iteration."""

    def __call__(self, iteration: int) -> nn.Module: ...


@dataclass
class RandomExtractors:
    """A fresh randomly initialised network every iteration (NDPDC, DM)."""

    model_cfg: ModelConfig
    channels: int
    num_classes: int
    image_size: tuple[int, int]
    generator: torch.Generator
    device: torch.device

    def __call__(self, iteration: int) -> nn.Module:
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        net = seeded_model(self.model_cfg, self.channels, self.num_classes, self.image_size, seed)
        net.to(self.device)
        for parameter in net.parameters():
            parameter.requires_grad_(False)
        return net


class PoolTrainedExtractors:
    """Networks trained on the DP-generated pool (DP-GenG): free by post-processing.

    ``num_extractors`` networks with different seeds, each snapshotted at
    ``checkpoints`` evenly spaced epochs, so matching draws from early (generic) and late
    (class-specific) features. Each iteration picks one at random from the run's generator.
    """

    def __init__(
        self,
        model_cfg: ModelConfig,
        pool_images: torch.Tensor,
        pool_labels: torch.Tensor,
        dataset: ImageDataset,
        num_extractors: int,
        epochs: int,
        checkpoints: int,
        seed: int,
        generator: torch.Generator,
        device: torch.device,
        progress: bool = True,
    ) -> None:
        if num_extractors < 1 or checkpoints < 1 or epochs < checkpoints:
            raise ConfigError(
                "matcher.extractors=pool_trained needs num_extractors >= 1, extractor_checkpoints >= 1 and "
                f"extractor_epochs >= extractor_checkpoints (got {num_extractors}, {checkpoints}, {epochs})."
            )
        self.generator = generator
        self.networks: list[nn.Module] = []
        bar = tqdm(total=num_extractors * epochs, desc="extractors (pool)", disable=not progress, leave=False)
        for k in range(num_extractors):
            net = seeded_model(model_cfg, dataset.channels, dataset.num_classes, dataset.image_size,
                               derive_seed(seed, "extractors", k, "init"))
            train_gen = stage_generator(seed, "extractors", k, "train")
            chunk = epochs // checkpoints
            for c in range(checkpoints):
                span = chunk if c < checkpoints - 1 else epochs - chunk * (checkpoints - 1)
                train_classifier(
                    net, pool_images, pool_labels, epochs=span, lr=0.01, momentum=0.9, weight_decay=5e-4,
                    batch_size=256, lr_drop_at_half=False, dsa=None, generator=train_gen, device=device,
                )
                bar.update(span)
                snapshot = copy.deepcopy(net).to(device).eval()
                for parameter in snapshot.parameters():
                    parameter.requires_grad_(False)
                self.networks.append(snapshot)
        bar.close()

    def __call__(self, iteration: int) -> nn.Module:
        return self.networks[int(torch.randint(len(self.networks), (1,), generator=self.generator))]


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
        if noise_multiplier <= 0:
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


@dataclass
class MatchingStats:
    iterations: int
    final_loss: float
    seconds: float
    images_per_second: float


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


def match(
    images: torch.Tensor,
    labels: torch.Tensor,
    dataset: ImageDataset,
    matcher_cfg: MatcherConfig,
    extractors: ExtractorSource,
    noise_multiplier: NoiseSpec,
    generator: torch.Generator,
    noise_generator: torch.Generator,
    device: torch.device,
    on_iteration: Callable[[int, dict[str, float]], None] | None = None,
    progress: bool = True,
    factor: int = 1,
    extra_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    *,
    sampling_generator: torch.Generator | None = None,
    counts: ClassCounts | None = None,
) -> tuple[torch.Tensor, MatchingStats]:
    """Optimise the synthetic ``images`` (normalised, labels ``labels``) by feature matching.

    ``noise_multiplier`` comes from the run's noise plan for ``dp_feature`` (a float for
    constant noise, or one sigma per iteration as a list or a callable ``iteration ->
    sigma``) and must be ``None`` for ``dm``. ``dp_feature`` also needs ``sampling_generator``
    (the Poisson masks) and ``noise_generator``, both from the run's secret noise source, and
    ``counts`` (the released class counts); ``generator`` draws only public randomness (DSA,
    DM's batches). The sigma of each iteration is reported to
    ``on_iteration`` under ``"sigma"``. With multi-formation ``factor`` > 1 the stored images are unpacked
    (differentiably) before embedding. ``extra_loss(images, labels)`` (the expert
    alignment) is added to the matching loss; it must use no private data. Returns the
    optimised stored images (detached, on CPU) and statistics.
    """
    name = matcher_cfg.name
    if name == "dp_feature":
        if noise_multiplier is None:
            raise ConfigError("matcher=dp_feature needs a positive noise multiplier from the budget plan.")
        if sampling_generator is None or counts is None:
            raise ConfigError("matcher=dp_feature needs the run's secret sampling generator and released counts.")
        sigma_at = noise_schedule_fn(noise_multiplier, matcher_cfg.iterations)
        batches = poisson_batches(dataset.train_labels, matcher_cfg.sample_rate, sampling_generator)
        expected = matcher_cfg.sample_rate * counts.values.to(device=device, dtype=torch.float32)
    elif name == "dm":
        if noise_multiplier is not None:
            raise ConfigError("matcher=dm is non-private and takes no noise; use matcher=dp_feature.")
        batches = fixed_per_class_batches(dataset.train_labels, dataset.num_classes, matcher_cfg.batch_real, generator)
    else:
        raise ConfigError(f"matcher={name} is unknown; choose dp_feature, dm or none.")

    num_classes = dataset.num_classes
    train_images = dataset.train_images.to(device)
    train_labels = dataset.train_labels.to(device)
    syn = images.detach().clone().to(device).requires_grad_(True)
    syn_labels = labels.to(device)
    optimiser = torch.optim.SGD([syn], lr=matcher_cfg.lr_images, momentum=matcher_cfg.momentum)
    dsa = DSA(matcher_cfg.dsa_strategy) if matcher_cfg.dsa else None

    start = time.perf_counter()
    real_seen = 0
    loss_value = float("nan")
    bar = tqdm(range(matcher_cfg.iterations), desc=f"match ({name})", disable=not progress, leave=False)
    for iteration in bar:
        net = extractors(iteration)
        index = next(batches).to(device)
        real = train_images[index]
        real_labels = train_labels[index]
        real_seen += len(index)
        params = dsa.sample(generator, device) if dsa is not None else None
        with torch.no_grad():
            real_in = dsa.apply(real, params) if dsa is not None else real
            real_emb = net.embed(real_in) if len(index) else torch.zeros(0, net.feature_dim, device=device)
            if name == "dp_feature":
                sigma = float(sigma_at(iteration))
                if not (sigma > 0):
                    raise ConfigError(f"noise multiplier {sigma!r} at iteration {iteration}: must be > 0.")
                noisy_sums = release_noisy_class_sums(
                    real_emb, real_labels, num_classes, matcher_cfg.clip_norm, sigma, noise_generator
                )
                target = noisy_sums / expected[:, None].clamp(min=1e-12)
            else:
                target = class_means(real_emb, real_labels, num_classes)
            del real_emb, real_in, real

        syn_full, syn_full_labels = expand_multi_formation(syn, syn_labels, factor)
        syn_in = dsa.apply(syn_full, params) if dsa is not None else syn_full
        syn_emb = net.embed(syn_in)
        if name == "dp_feature":
            syn_emb = clip_rows(syn_emb, matcher_cfg.clip_norm)
        loss = ((class_means(syn_emb, syn_full_labels, num_classes) - target) ** 2).sum()
        metrics = {"match_loss": float(loss.detach())}
        if name == "dp_feature":
            metrics["sigma"] = sigma
        if extra_loss is not None:
            aligned = extra_loss(syn_full, syn_full_labels)
            metrics["align_loss"] = float(aligned.detach())
            loss = loss + aligned
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        loss_value = float(loss.detach())
        if on_iteration is not None:
            # Only values computed from DP outputs: never the (private) Poisson batch size.
            on_iteration(iteration, {"loss": loss_value, **metrics})
    seconds = time.perf_counter() - start
    stats = MatchingStats(
        iterations=matcher_cfg.iterations,
        final_loss=loss_value,
        seconds=seconds,
        images_per_second=(real_seen + matcher_cfg.iterations * len(syn) * factor**2) / max(seconds, 1e-9),
    )
    return syn.detach().cpu(), stats

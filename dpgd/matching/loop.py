"""The matching loop: optimise the synthetic images towards per-class feature targets.

The loop is the same for both matchers; what differs is where the class target comes
from, so that is a small strategy chosen once before the loop: :class:`DpTarget` (the DP
release of :mod:`dpgd.matching.release`) or :class:`DmTarget` (exact means, non-private).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Collection, Protocol

import torch

from dpgd.allocator import rows_per_chunk
from dpgd.augment import DSA
from dpgd.config import MatcherConfig
from dpgd.counts import ClassCounts
from dpgd.data import ImageDataset
from dpgd.distilled import expand_multi_formation
from dpgd.errors import ConfigError
from dpgd.matching.extractors import ExtractorSource, PoolTrainedExtractors
from dpgd.matching.release import (
    COMPONENT,
    NoiseSpec,
    class_means,
    clip_rows,
    clipped_view_mean,
    fixed_per_class_batches,
    noise_schedule_fn,
    poisson_batches,
    release_class_sums_once,
    release_noisy_class_sums,
    shrink_towards,
    signal_to_noise,
)
from dpgd.privacy.components import ReleaseLog
from dpgd.progress import progress_bar


@dataclass
class MatchingStats:
    iterations: int
    seconds: float
    images_per_second: float
    # dp_feature: signal-to-noise of the released class-mean targets (averaged over classes
    # and releases; computed from the noisy releases and counts only, so public): the bound
    # C / expected noise norm, and the estimate of the signal norm over it.
    snr_bound: float | None = None
    snr: float | None = None
    # release=once with shrinkage: the mean James-Stein weight (0 = keep the start, 1 = follow the release)
    shrinkage_weight: float | None = None


@dataclass
class LoopCheckpoint:
    """Matching's resumable state (see :mod:`dpgd.checkpoints`).

    Every ``every`` iterations the loop hands ``save`` its state: the next iteration, the
    images, the optimiser, the releases drawn so far and the state of each generator in
    ``generators`` (every stream the loop and its target draw from: augmentation, batches,
    extractor picks, noise). Given ``saved``, the loop restores all of it and continues
    from that iteration, drawing what the uninterrupted loop would have drawn.
    """

    every: int
    generators: dict[str, torch.Generator]
    save: Callable[[dict[str, Any]], None]
    saved: dict[str, Any] | None = None


class ClassTarget(Protocol):
    """Where each iteration's real batch and per-class target come from.

    ``next_batch`` is called first (indices into the train set), then ``class_target``
    on that batch's embeddings, so the random draws keep their order. Synthetic embeddings
    are clipped to ``synthetic_clip_norm`` (None: not clipped), so both sides of the loss
    live in the same space.
    """

    synthetic_clip_norm: float | None

    def next_batch(self) -> torch.Tensor: ...

    def class_target(
        self, iteration: int, embeddings: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]: ...


class DpTarget:
    """``dp_feature``: noisy class sums of a Poisson batch over the expected class sizes.

    The sampling masks and the noise come from the run's secret generators; the expected
    batch size of class c is q * N_c with N_c the released (noisy) class count.
    """

    def __init__(
        self,
        matcher_cfg: MatcherConfig,
        dataset: ImageDataset,
        noise_multiplier: NoiseSpec,
        noise_generator: torch.Generator,
        sampling_generator: torch.Generator | None,
        counts: ClassCounts | None,
        device: torch.device,
        releases: ReleaseLog | None = None,
    ) -> None:
        if noise_multiplier is None:
            raise ConfigError("matcher=dp_feature needs a positive noise multiplier from the budget plan.")
        if sampling_generator is None or counts is None:
            raise ConfigError("matcher=dp_feature needs the run's secret sampling generator and released counts.")
        self.num_classes = dataset.num_classes
        self.clip_norm = matcher_cfg.clip_norm
        self.synthetic_clip_norm = matcher_cfg.clip_norm
        self.noise_generator = noise_generator
        self.releases = releases if releases is not None else ReleaseLog(COMPONENT)
        self.sigma_at = noise_schedule_fn(noise_multiplier, matcher_cfg.iterations)
        self.batches = poisson_batches(dataset.train_labels, matcher_cfg.sample_rate, sampling_generator)
        self.expected = matcher_cfg.sample_rate * counts.values.to(device=device, dtype=torch.float32)

    def next_batch(self) -> torch.Tensor:
        return next(self.batches)

    def class_target(
        self, iteration: int, embeddings: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        sigma = float(self.sigma_at(iteration))
        if not (sigma >= 0):
            raise ConfigError(f"noise multiplier {sigma!r} at iteration {iteration}: must be > 0.")
        noisy_sums = release_noisy_class_sums(
            embeddings, labels, self.num_classes, self.clip_norm, sigma, self.noise_generator
        )
        if sigma > 0:  # sigma 0: the non-private run of the same mechanism releases nothing DP
            self.releases.record(sigma)
        target = noisy_sums / self.expected[:, None].clamp(min=1e-12)
        if sigma == 0:  # the non-private run: no noise, no signal-to-noise to report
            return target, {"sigma": sigma}
        snr_bound, snr = signal_to_noise(target, sigma, self.clip_norm, self.expected)
        return target, {"sigma": sigma, "snr_bound": snr_bound, "snr": snr}


def embed_real(embed: Callable[[Any, torch.Tensor], torch.Tensor], net: Any, real: torch.Tensor) -> torch.Tensor:
    """``embed(net, real)`` of the no-grad real batch, in chunks whose feature maps stay
    below the allocator's mmap threshold (:func:`dpgd.allocator.rows_per_chunk`): each
    record's embedding is its own, so no value changes, but a 500-image CIFAR batch no
    longer page-faults fresh mappings per layer (~40 % of a DP-GenG matching iteration)."""
    rows = rows_per_chunk(real[0].numel())
    if len(real) <= rows:
        return embed(net, real)
    return torch.cat([embed(net, part) for part in real.split(rows)])


def embedding_fn(matcher_cfg: MatcherConfig) -> Callable[[Any, torch.Tensor], torch.Tensor]:
    """How matching embeds images: the flat final feature map or its position average."""
    if matcher_cfg.embedding == "pooled":
        return lambda net, x: net.embed_pooled(x)
    return lambda net, x: net.embed(x)


class FixedDpTarget:
    """``dp_feature`` with ``release=once``: each extractor's class means, released once.

    For every pool-trained extractor, the class sums of the clipped embeddings of all train
    records (each averaged over ``augmentations`` fixed DSA transforms from the public
    seed) get one Gaussian release at sample rate 1, divided by the released class counts.
    The loop then only optimises the synthetic images towards these fixed targets: every
    iteration is post-processing (no private read, no budget).
    """

    synthetic_clip_norm: float | None

    def __init__(
        self,
        matcher_cfg: MatcherConfig,
        dataset: ImageDataset,
        extractors: PoolTrainedExtractors,
        noise_multiplier: NoiseSpec,
        noise_generator: torch.Generator,
        counts: ClassCounts | None,
        dsa: DSA | None,
        augment_generator: torch.Generator,
        device: torch.device,
        releases: ReleaseLog | None = None,
        progress: bool = True,
        prior: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        if counts is None:
            raise ConfigError("matcher=dp_feature needs the run's released counts.")
        networks = extractors.networks
        sigma_at = noise_schedule_fn(noise_multiplier, len(networks))
        if sigma_at is None:
            raise ConfigError("matcher=dp_feature needs a positive noise multiplier from the budget plan.")
        self.synthetic_clip_norm = matcher_cfg.clip_norm
        self.releases = releases if releases is not None else ReleaseLog(COMPONENT)
        self.dsa = dsa
        self.params = ([dsa.sample(augment_generator, device) for _ in range(matcher_cfg.augmentations)]
                       if dsa is not None else [None])
        embed = embedding_fn(matcher_cfg)
        expected = counts.values.to(device=device, dtype=torch.float32)
        self.targets: list[torch.Tensor] = []
        bounds, estimates, shrink = [], [], []
        bar = progress_bar(networks, desc="match: release targets", disable=not progress, leave=False)
        for index, net in enumerate(bar):
            sigma = float(sigma_at(index))

            def views(batch: torch.Tensor, net: Any = net) -> list[torch.Tensor]:
                return [embed(net, self.dsa.apply(batch, p) if self.dsa is not None else batch)
                        for p in self.params]

            with torch.no_grad():
                sums = release_class_sums_once(views, dataset.train_images, dataset.train_labels,
                                               dataset.num_classes, matcher_cfg.clip_norm, sigma, noise_generator,
                                               device)
            target = sums / expected[:, None].clamp(min=1e-12)
            if sigma > 0:  # sigma 0 (epsilon=inf): nothing DP released, no SNR, nothing to shrink
                self.releases.record(sigma)
                bound, estimate = signal_to_noise(target, sigma, matcher_cfg.clip_norm, expected)
                bounds.append(float(bound))
                estimates.append(float(estimate))
                if prior is not None and matcher_cfg.shrinkage:
                    with torch.no_grad():
                        images, labels = prior
                        syn = clipped_view_mean(views(images.to(device)), matcher_cfg.clip_norm)
                        start = class_means(syn, labels.to(device), dataset.num_classes)
                    noise_std = sigma * matcher_cfg.clip_norm / expected.clamp(min=1e-12)
                    target, weights = shrink_towards(target, start, noise_std)
                    shrink.append(float(weights.mean()))
            self.targets.append(target)
        # What MatchingStats reports (averages over the released targets).
        self.summary = {"snr_bound": sum(bounds) / len(bounds) if bounds else None,
                        "snr": sum(estimates) / len(estimates) if estimates else None,
                        "shrinkage_weight": sum(shrink) / len(shrink) if shrink else None}


class DmTarget:
    """``dm``: exact class means of ``batch_real`` random records per class (non-private)."""

    synthetic_clip_norm = None

    def __init__(
        self, matcher_cfg: MatcherConfig, dataset: ImageDataset, noise_multiplier: NoiseSpec,
        generator: torch.Generator,
    ) -> None:
        if noise_multiplier is not None:
            raise ConfigError("matcher=dm is non-private and takes no noise; use matcher=dp_feature.")
        self.num_classes = dataset.num_classes
        self.batches = fixed_per_class_batches(
            dataset.train_labels, dataset.num_classes, matcher_cfg.batch_real, generator
        )

    def next_batch(self) -> torch.Tensor:
        return next(self.batches)

    def class_target(
        self, iteration: int, embeddings: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        return class_means(embeddings, labels, self.num_classes), {}


def matching_loss(syn_emb: torch.Tensor, labels: torch.Tensor, class_target: torch.Tensor, num_classes: int,
                  clip_norm: float | None) -> torch.Tensor:
    """Squared distance between the synthetic class means and the class targets, in units
    where one step size means the same for every matcher, clip norm and IPC.

    Clipping (``dp_feature``) puts both sides on the ball of radius C while the extractor's
    own features have norm rho (~10-30 for a random ConvNet): it divides the residual AND
    the Jacobian of each synthetic embedding by rho / C, so the image gradient of a loss on
    clipped means is (C / rho)^2 of the same loss on raw features (DM's): ~1/600 on CIFAR,
    and the images do not move. The clipped loss is therefore multiplied by (rho / C)^2,
    rho the mean norm of the synthetic embeddings (public: synthetic images through a
    public or pool-trained network; detached). Its gradient on each embedding is then the
    raw-feature gradient without its radial part.

    Each image's gradient is (1/n) of its class mean's under a mean loss (n images per
    class), so the loss is also multiplied by n: an image moves as fast at IPC 50 as at 1.
    """
    images_per_class = labels.numel() / num_classes
    if clip_norm is None:
        return images_per_class * ((class_means(syn_emb, labels, num_classes) - class_target) ** 2).sum()
    scale = (syn_emb.detach().norm(dim=1).mean() / clip_norm) ** 2
    clipped = clip_rows(syn_emb, clip_norm)
    return images_per_class * scale * ((class_means(clipped, labels, num_classes) - class_target) ** 2).sum()


def match(
    images: torch.Tensor,
    labels: torch.Tensor,
    dataset: ImageDataset,
    matcher_cfg: MatcherConfig,
    *,
    extractors: ExtractorSource,
    noise_multiplier: NoiseSpec,
    generator: torch.Generator,
    noise_generator: torch.Generator,
    device: torch.device,
    on_iteration: Callable[[int, dict[str, float | torch.Tensor]], None] | None = None,
    progress: bool = True,
    factor: int = 1,
    extra_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    sampling_generator: torch.Generator | None = None,
    counts: ClassCounts | None = None,
    releases: ReleaseLog | None = None,
    checkpoint: LoopCheckpoint | None = None,
    snapshot_at: Collection[int] = (),
    on_snapshot: Callable[[int, torch.Tensor], None] | None = None,
) -> tuple[torch.Tensor, MatchingStats]:
    """Optimise the synthetic ``images`` (normalised, labels ``labels``) by feature matching.

    ``noise_multiplier`` comes from the run's noise plan for ``dp_feature`` (a float for
    constant noise, or one sigma per iteration as a list or a callable ``iteration ->
    sigma``) and must be ``None`` for ``dm``. ``dp_feature`` also needs ``sampling_generator``
    (the Poisson masks) and ``noise_generator``, both from the run's secret noise source, and
    ``counts`` (the released class counts); ``generator`` draws only public randomness (DSA,
    DM's batches). Each release is recorded in ``releases`` (checked by the caller against
    the declared records). The sigma of each iteration is reported to ``on_iteration``
    under ``"sigma"``, the losses as 0-dim tensors (``float()`` only what is logged). With
    multi-formation ``factor`` > 1 the stored images are unpacked (differentiably) before
    embedding. ``extra_loss(images, labels)`` (the expert
    alignment) is added to the matching loss; it must use no private data. ``checkpoint``
    saves the loop's state periodically and resumes from a saved one. After each iteration
    count in ``snapshot_at`` (iterations done), ``on_snapshot(done, images)`` gets a CPU copy
    of the stored images (the DP selection's candidates). Returns the optimised stored
    images (detached, on CPU) and statistics.
    """
    name = matcher_cfg.name
    target: ClassTarget
    fixed: FixedDpTarget | None = None
    dsa = DSA(matcher_cfg.dsa_strategy) if matcher_cfg.dsa else None
    if name == "dp_feature" and matcher_cfg.release == "once":
        if not isinstance(extractors, PoolTrainedExtractors):
            raise ConfigError("matcher.release=once needs matcher.extractors=pool_trained (fixed networks).")
        start = expand_multi_formation(images.detach(), labels, factor)
        fixed = FixedDpTarget(matcher_cfg, dataset, extractors, noise_multiplier, noise_generator, counts,
                              dsa, generator, device, releases, progress, prior=start)
    elif name == "dp_feature":
        target = DpTarget(matcher_cfg, dataset, noise_multiplier, noise_generator, sampling_generator, counts, device,
                          releases)
    elif name == "dm":
        target = DmTarget(matcher_cfg, dataset, noise_multiplier, generator)
    else:
        raise ConfigError(f"matcher={name} is unknown; choose dp_feature, dm or none.")

    num_classes = dataset.num_classes
    embed = embedding_fn(matcher_cfg)
    if fixed is None:
        train_images = dataset.train_images.to(device)
        train_labels = dataset.train_labels.to(device)
    syn = images.detach().clone().to(device).requires_grad_(True)
    syn_labels = labels.to(device)
    optimiser = torch.optim.SGD([syn], lr=matcher_cfg.lr_images, momentum=matcher_cfg.momentum)

    releases = fixed.releases if fixed is not None else getattr(target, "releases", releases)
    first_iteration = 0
    real_seen = 0
    if checkpoint is not None and checkpoint.saved is not None:
        first_iteration, real_seen = _restore(checkpoint, syn, optimiser, releases)

    real_seen_before = real_seen
    # Sums over every iteration of the run (a resumed loop starts from the saved sums).
    snr_sums: dict[str, torch.Tensor | float] = {"snr_bound": 0.0, "snr": 0.0, "releases": 0.0}
    if checkpoint is not None and checkpoint.saved is not None:
        snr_sums.update(checkpoint.saved.get("snr_sums", {}))
    _synchronize(device)  # time the loop alone on CUDA (one sync before and after, none inside)
    start = time.perf_counter()
    bar = progress_bar(range(first_iteration, matcher_cfg.iterations), desc=f"match ({name})",
                       disable=not progress, leave=False)
    for iteration in bar:
        target_metrics: dict[str, Any] = {}
        syn_full, syn_full_labels = expand_multi_formation(syn, syn_labels, factor)
        if fixed is not None:  # post-processing of the released targets: no private read
            pick = extractors.pick(iteration)  # type: ignore[attr-defined]
            net = extractors.networks[pick]  # type: ignore[attr-defined]
            class_target, target_metrics = fixed.targets[pick], {}
            params = fixed.params[int(torch.randint(len(fixed.params), (1,), generator=generator))]
            clip_norm: float | None = fixed.synthetic_clip_norm
        else:
            net = extractors(iteration)
            index = target.next_batch().to(device)
            real = train_images[index]
            real_labels = train_labels[index]
            real_seen += len(index)
            params = dsa.sample(generator, device) if dsa is not None else None
            with torch.no_grad():
                real_in = dsa.apply(real, params) if dsa is not None else real
                if len(index):
                    real_emb = embed_real(embed, net, real_in)
                else:
                    dim = net.pooled_dim if matcher_cfg.embedding == "pooled" else net.feature_dim
                    real_emb = torch.zeros(0, dim, device=device)
                class_target, target_metrics = target.class_target(iteration, real_emb, real_labels)
                del real_emb, real_in, real
            clip_norm = target.synthetic_clip_norm
        syn_in = dsa.apply(syn_full, params) if params is not None else syn_full
        loss = matching_loss(embed(net, syn_in), syn_full_labels, class_target, num_classes, clip_norm)
        if "snr_bound" in target_metrics:  # a noisy release: a step as large as its signal-to-noise allows
            snr_squared = target_metrics["snr_bound"] ** 2
            target_metrics["step_factor"] = snr_squared / (snr_squared + matcher_cfg.half_step_snr**2)
            loss = loss * target_metrics["step_factor"]
        # Losses stay 0-dim device tensors: converting them here would make every iteration
        # wait for the device (a host sync); the consumer converts the ones it logs.
        if "snr" in target_metrics:
            snr_sums = {"snr_bound": snr_sums["snr_bound"] + target_metrics["snr_bound"],
                        "snr": snr_sums["snr"] + target_metrics["snr"], "releases": snr_sums["releases"] + 1}
        metrics: dict[str, float | torch.Tensor] = {"match_loss": loss.detach(), **target_metrics}
        if extra_loss is not None:
            aligned = extra_loss(syn_full, syn_full_labels)
            metrics["align_loss"] = aligned.detach()
            loss = loss + aligned
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if on_iteration is not None:
            # Only values computed from DP outputs: never the (private) Poisson batch size.
            on_iteration(iteration, {"loss": loss.detach(), **metrics})
        done = iteration + 1
        if on_snapshot is not None and done in snapshot_at:
            on_snapshot(done, syn.detach().cpu().clone())
        if checkpoint is not None and done % checkpoint.every == 0 and done < matcher_cfg.iterations:
            checkpoint.save({
                "iteration": done,
                "images": syn.detach().cpu(),
                "optimiser": optimiser.state_dict(),
                "generators": {key: g.get_state() for key, g in checkpoint.generators.items()},
                "releases": [] if releases is None else list(releases.sigmas),
                "real_seen": real_seen,
                "snr_sums": {key: float(value) for key, value in snr_sums.items()},
            })
    _synchronize(device)
    seconds = time.perf_counter() - start
    snr: dict[str, float | None] = {"snr_bound": None, "snr": None}
    if fixed is not None:
        snr = dict(fixed.summary)
    elif snr_sums["releases"]:
        snr = {key: float(snr_sums[key]) / float(snr_sums["releases"]) for key in snr}
    stats = MatchingStats(
        **snr,
        iterations=matcher_cfg.iterations,
        seconds=seconds,
        # this process's share of the work (a resumed loop ran only the rest)
        images_per_second=((real_seen - real_seen_before)
                           + (matcher_cfg.iterations - first_iteration) * len(syn) * factor**2) / max(seconds, 1e-9),
    )
    return syn.detach().cpu(), stats


def _restore(checkpoint: LoopCheckpoint, syn: torch.Tensor, optimiser: torch.optim.Optimizer,
             releases: ReleaseLog | None) -> tuple[int, int]:
    """Put the loop back in a saved state; returns (next iteration, real records seen)."""
    saved = checkpoint.saved
    assert saved is not None
    if set(saved["generators"]) != set(checkpoint.generators):
        raise RuntimeError(f"matching checkpoint holds generators {sorted(saved['generators'])}, "
                           f"the loop draws from {sorted(checkpoint.generators)}")
    with torch.no_grad():
        syn.copy_(saved["images"].to(syn.device))
    optimiser.load_state_dict(saved["optimiser"])
    for key, generator in checkpoint.generators.items():
        generator.set_state(saved["generators"][key])
    if releases is not None:
        releases.sigmas[:] = [float(s) for s in saved["releases"]]
    return int(saved["iteration"]), int(saved["real_seen"])


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)

"""DP-MERF (Harder et al., AISTATS 2021): one noisy label-conditional mean embedding, then
a generator fitted to it by post-processing.

Features. ``phi(x) = sqrt(1/F) [cos(W x), sin(W x)]`` with ``F = num_features / 2``
frequencies, ``x`` the flattened normalised image and the rows of ``W`` drawn from
``N(0, I / l^2)``, ``l = bandwidth * sqrt(pixels)``. Then ``E[phi(x).phi(y)] =
exp(-||x - y||^2 / (2 l^2))`` (Rahimi & Recht) and, for every x,
``||phi(x)||^2 = (1/F) sum_j (cos^2 + sin^2) = 1``: the norm is exactly 1, no clipping.
``W`` is drawn from the public run seed alone, never from data.

Release. ``M = sum_i phi(x_i) onehot(y_i)^T`` (D x K): column c sums phi over class c.
Adding or removing one record (x, y) changes column y by +-phi(x) and nothing else, so
``||M - M'||_F = ||phi(x)||_2 = 1``: L2 sensitivity 1. We release ``M + N(0, sigma^2 I)``,
sigma = noise_multiplier x 1, ONCE: ``SubsampledGaussian(sample_rate=1, steps=1)``.

Counts. The target of class c is the noisy column divided by the run's released class
count (the noisy histogram of :mod:`dpgd.counts`, released once for every stage). The
alternative, appending ``onehot(y)`` to every record's feature to release noisy counts in
the same vector, would make one record's contribution ``[phi(x); e_y]`` of norm sqrt(2):
sensitivity sqrt(2), i.e. 2x the noise variance of the main release.

Randomness. The noise comes from the run's secret :class:`NoiseSource`; the frequencies
``W``, the generator's initial weights and latents from the public seed (the guarantee
holds for any fixed ``W``).

Everything after the release (fitting the generator, sampling) reads only the noisy matrix
and public constants: post-processing, no further privacy cost. The clean sums are
overwritten by the noisy ones in place and never leave :func:`release_embedding`.
"""

from __future__ import annotations

import math
import time

import torch

from dpgd.counts import ClassCounts
from dpgd.data import ImageDataset
from dpgd.errors import ConfigError
from dpgd.generators.base import GENERATOR_COMPONENT, Pool, PoolGenerator, check_multiplier, from_tanh_space
from dpgd.generators.networks import ConditionalDecoder
from dpgd.models import seeded_cpu_rng
from dpgd.privacy.components import PrivacyNeed, ReleaseLog
from dpgd.privacy.randomness import NoiseSource
from dpgd.progress import progress_bar
from dpgd.seeding import derive_seed, stage_generator

SENSITIVITY = 1.0
SENSITIVITY_TEXT = (
    "one record adds +-phi(x) to one class column of the D x K random-feature sum; "
    "||phi(x)||_2 = 1, so L2 sensitivity 1"
)
# Records embedded per matrix product when summing features (memory, not results).
EMBED_BATCH = 1024


class RandomFourierFeatures:
    """``phi(x)`` of flattened images; unit norm for every input (see module docstring)."""

    def __init__(
        self, in_dim: int, num_features: int, length_scale: float, generator: torch.Generator, device: torch.device
    ) -> None:
        if num_features < 2 or num_features % 2:
            raise ConfigError(
                f"generator.dp_merf.num_features={num_features} must be an even number >= 2 (cos and sin pairs)."
            )
        if not (length_scale > 0 and math.isfinite(length_scale)):
            raise ConfigError(f"generator.dp_merf.bandwidth must be positive, got length scale {length_scale}.")
        self.frequencies = (torch.randn(in_dim, num_features // 2, generator=generator) / length_scale).to(device)
        self.scale = 1.0 / math.sqrt(num_features // 2)

    @property
    def dim(self) -> int:
        return 2 * int(self.frequencies.shape[1])

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        projection = images.flatten(1) @ self.frequencies
        return torch.cat([torch.cos(projection), torch.sin(projection)], dim=1) * self.scale


@torch.no_grad()
def class_feature_sums(
    features: RandomFourierFeatures, images: torch.Tensor, labels: torch.Tensor, num_classes: int, device: torch.device
) -> torch.Tensor:
    """The clean D x K matrix ``sum_i phi(x_i) onehot(y_i)^T`` (private: release it noisy only)."""
    sums = torch.zeros(features.dim, num_classes, device=device)
    for start in range(0, images.shape[0], EMBED_BATCH):
        batch = images[start : start + EMBED_BATCH].to(device)
        onehot = torch.nn.functional.one_hot(labels[start : start + EMBED_BATCH].to(device), num_classes).float()
        sums += features(batch).T @ onehot
    return sums


def release_embedding(sums: torch.Tensor, noise_multiplier: float, generator: torch.Generator) -> torch.Tensor:
    """The Gaussian release: ``sums + N(0, (noise_multiplier * 1)^2)`` per entry, in place.

    Noise is drawn on the CPU from ``generator`` (the same noise on any device). A
    multiplier of 0 stands for a non-private run and adds nothing.
    """
    if noise_multiplier > 0:
        noise = torch.randn(sums.shape, generator=generator) * (noise_multiplier * SENSITIVITY)
        sums.add_(noise.to(sums.device))
    return sums


class DpMerf(PoolGenerator):
    """DP-MERF normalised by the run's noisy class counts; a conditional conv decoder as the generator."""

    name = "dp_merf"

    def privacy_request(self) -> PrivacyNeed:
        return PrivacyNeed(GENERATOR_COMPONENT, sample_rate=1.0, steps=1, sensitivity=SENSITIVITY_TEXT)

    def fit_and_sample(
        self, dataset: ImageDataset, noise_multiplier: float | None, seed: int, device: torch.device,
        *, noise: NoiseSource, counts: ClassCounts, releases: ReleaseLog | None = None,
    ) -> Pool:
        opts = self.cfg.dp_merf
        sigma = check_multiplier(self.name, noise_multiplier)
        for key in ("steps", "batch_per_class", "latent_dim", "width"):
            if int(getattr(opts, key)) < 1:
                raise ConfigError(f"generator.dp_merf.{key} must be at least 1.")
        started = time.perf_counter()
        num_classes = dataset.num_classes
        pixels = dataset.channels * dataset.image_size[0] * dataset.image_size[1]
        features = RandomFourierFeatures(
            pixels,
            opts.num_features,
            opts.bandwidth * math.sqrt(pixels),
            stage_generator(seed, "generator", "dp_merf", "frequencies"),
            device,
        )

        # --- the one DP release -----------------------------------------------------
        sums = class_feature_sums(features, dataset.train_images, dataset.train_labels, num_classes, device)
        noisy = release_embedding(sums, sigma, noise.generator("generator", "dp_merf", "noise"))
        if sigma > 0:
            (releases or ReleaseLog(GENERATOR_COMPONENT)).record(sigma)
        del sums  # the same tensor, now noisy: nothing clean remains
        # Divided by the run's released (noisy) class counts: post-processing.
        targets = (noisy / counts.values.to(device)[None, :]).T.contiguous()  # (K, D)
        release_seconds = time.perf_counter() - started

        # --- post-processing: fit a generator to the released embedding ----------------
        with seeded_cpu_rng(derive_seed(seed, "generator", "dp_merf", "init")):
            decoder = ConditionalDecoder(
                opts.latent_dim, num_classes, dataset.channels, dataset.image_size, opts.width
            )
        decoder.to(device).train()
        optimizer = torch.optim.Adam(decoder.parameters(), lr=opts.lr)
        latent = stage_generator(seed, "generator", "dp_merf", "latent")
        per_class = opts.batch_per_class
        labels = torch.arange(num_classes, device=device).repeat_interleave(per_class)
        bar = progress_bar(range(opts.steps), desc="dp_merf fit", disable=not self.progress, leave=False,
                   dynamic_ncols=True)
        loss_value = float("nan")
        for step in bar:
            z = torch.randn(labels.shape[0], opts.latent_dim, generator=latent).to(device)
            fake = from_tanh_space(decoder(z, labels), dataset.mean, dataset.std)
            fake_means = features(fake).view(num_classes, per_class, -1).mean(dim=1)
            loss = (fake_means - targets).square().sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step % 50 == 0 or step == opts.steps - 1:
                loss_value = float(loss.item())
                bar.set_postfix(loss=f"{loss_value:.4f}")
                if self.curve is not None:
                    self.curve(step, {"fit_loss": loss_value})
        fit_seconds = time.perf_counter() - started

        images, pool_labels = sample_decoder(
            decoder, opts.latent_dim, num_classes, self.pool_per_class, dataset, device,
            stage_generator(seed, "generator", "dp_merf", "sample"),
        )
        return Pool(
            images, pool_labels, self.mechanisms(noise_multiplier), synthetic=True,
            info={
                "release_seconds": round(release_seconds, 3),
                "fit_seconds": round(fit_seconds, 3),
                "sample_seconds": round(time.perf_counter() - started - fit_seconds, 3),
                "final_loss": loss_value,
                "num_features": features.dim,
                "non_private": noise_multiplier is None,
            },
        )


@torch.no_grad()
def sample_decoder(
    decoder: torch.nn.Module,
    latent_dim: int,
    num_classes: int,
    per_class: int,
    dataset: ImageDataset,
    device: torch.device,
    generator: torch.Generator,
    batch: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` decoder samples per class, normalised like the data, on the CPU."""
    decoder.eval()
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    chunks = []
    for start in range(0, labels.shape[0], batch):
        part = labels[start : start + batch]
        z = torch.randn(part.shape[0], latent_dim, generator=generator)
        chunks.append(from_tanh_space(decoder(z.to(device), part.to(device)), dataset.mean, dataset.std).cpu())
    return torch.cat(chunks), labels

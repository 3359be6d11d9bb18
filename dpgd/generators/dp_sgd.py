"""A conditional VAE trained with DP-SGD (opacus), sampled for the pool.

Why a VAE and not a GAN: DP-SGD noise and clipping destabilise the adversarial game (the
discriminator, which sees private data, gets the noisy updates; the generator chases a
noisy target), and DP-GANs need careful tuning to train at all at small budgets. A VAE
has one stable likelihood objective, so it degrades gracefully as noise grows: samples
get blurrier, not garbage. Both encoder and decoder see private data and are trained
privately; only the decoder is used afterwards (post-processing).

Mechanism. Each step draws a Poisson sample (every record independently with probability
q = ``sample_rate``), computes per-sample gradients (opacus ``GradSampleModule``), clips
each to L2 norm C = ``clip_norm``, sums, and adds ``N(0, (sigma C)^2 I)``
(opacus ``DPOptimizer``, noise drawn from a generator the run controls). Adding or
removing one record changes the clipped sum by at most C: sensitivity C. ``steps``
such steps: ``SubsampledGaussian(sample_rate=q, steps=steps)``. The sum is divided by
the expected batch size qN (opacus's convention; N is treated as public).
The model has GroupNorm only (no BatchNorm, which would mix records within a batch).
"""

from __future__ import annotations

import math
import time
import warnings

import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from torch import nn

from dpgd.counts import ClassCounts
from dpgd.data import ImageDataset
from dpgd.errors import ConfigError
from dpgd.generators.base import GENERATOR_COMPONENT, Pool, PoolGenerator, check_multiplier, to_tanh_space
from dpgd.generators.dp_merf import sample_decoder
from dpgd.generators.networks import ConditionalDecoder, ConditionalEncoder
from dpgd.models import seeded_cpu_rng
from dpgd.privacy.components import PrivacyNeed, ReleaseLog
from dpgd.privacy.randomness import NoiseSource
from dpgd.progress import progress_bar
from dpgd.seeding import derive_seed, stage_generator

SENSITIVITY_TEXT = "L2 clip C of each record's per-sample gradient (DP-SGD): one record moves the clipped sum by <= C"


class ConditionalVAE(nn.Module):
    """q(z | x, y) and p(x | z, y); ``eps`` is passed in so all randomness is the caller's."""

    def __init__(
        self, latent_dim: int, num_classes: int, channels: int, image_size: tuple[int, int], width: int
    ) -> None:
        super().__init__()
        self.encoder = ConditionalEncoder(latent_dim, num_classes, channels, image_size, width)
        self.decoder = ConditionalDecoder(latent_dim, num_classes, channels, image_size, width)

    def forward(
        self, x: torch.Tensor, labels: torch.Tensor, eps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean, log_var = self.encoder(x, labels)
        z = mean + eps * torch.exp(0.5 * log_var)
        return self.decoder(z, labels), mean, log_var


def per_sample_loss(
    recon: torch.Tensor, target: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor, obs_var: float
) -> torch.Tensor:
    """Negative ELBO per record (up to a constant): Gaussian likelihood in [-1, 1] + KL."""
    recon_term = (recon - target).square().flatten(1).sum(dim=1) / (2.0 * obs_var)
    kl = -0.5 * (1.0 + log_var - mean.square() - log_var.exp()).sum(dim=1)
    return recon_term + kl


def dp_sgd_steps(opts) -> int:
    """Steps from the settings: ``steps`` when set, else ceil(epochs / sample_rate)."""
    q = opts.sample_rate
    if not 0 < q <= 1:
        raise ConfigError(f"generator.dp_sgd.sample_rate={q} must be in (0, 1].")
    if opts.steps is not None:
        steps = opts.steps
    else:
        if opts.epochs <= 0:
            raise ConfigError(f"generator.dp_sgd.epochs={opts.epochs} must be positive.")
        steps = int(math.ceil(opts.epochs / q - 1e-9))
    if steps < 1:
        raise ConfigError(f"generator.dp_sgd.steps={steps} must be at least 1.")
    return steps


class DpSgdVae(PoolGenerator):
    """Conditional VAE + DP-SGD; the pool is decoder samples from the prior."""

    name = "dp_sgd"

    def privacy_request(self) -> PrivacyNeed:
        opts = self.cfg.dp_sgd
        return PrivacyNeed(GENERATOR_COMPONENT, sample_rate=opts.sample_rate, steps=dp_sgd_steps(opts),
                           sensitivity=SENSITIVITY_TEXT)

    def fit_and_sample(
        self, dataset: ImageDataset, noise_multiplier: float | None, seed: int, device: torch.device,
        *, noise: NoiseSource, counts: ClassCounts, releases: ReleaseLog | None = None,
    ) -> Pool:
        opts = self.cfg.dp_sgd
        sigma = check_multiplier(self.name, noise_multiplier)
        need = self.privacy_request()
        clip = opts.clip_norm
        if not (clip > 0 and math.isfinite(clip)):
            raise ConfigError(f"generator.dp_sgd.clip_norm={clip} must be positive.")
        latent_dim = opts.latent_dim
        started = time.perf_counter()
        with seeded_cpu_rng(derive_seed(seed, "generator", "dp_sgd", "init")):
            vae = ConditionalVAE(latent_dim, dataset.num_classes, dataset.channels, dataset.image_size, opts.width)
        model = GradSampleModule(vae.to(device), batch_first=True, loss_reduction="mean")
        # The expected batch q*N normalises the noisy gradient sum: N is the released (noisy) total.
        expected_batch = max(1, int(round(need.sample_rate * counts.total)))
        optimizer = DPOptimizer(
            torch.optim.Adam(model.parameters(), lr=opts.lr),
            noise_multiplier=sigma,
            max_grad_norm=clip,
            expected_batch_size=expected_batch,
            loss_reduction="mean",
            generator=noise.generator("generator", "dp_sgd", "noise", device=device),
        )
        # opacus calls the step hook right after add_noise: one record per noisy step.
        log = releases or ReleaseLog(GENERATOR_COMPONENT)
        optimizer.attach_step_hook(lambda opt: log.record(opt.noise_multiplier) if opt.noise_multiplier > 0 else None)
        images = to_tanh_space(dataset.train_images, dataset.mean, dataset.std).to(device)
        labels = dataset.train_labels.to(device)
        sampling = noise.generator("generator", "dp_sgd", "sampling")  # secret Poisson masks
        latent = stage_generator(seed, "generator", "dp_sgd", "latent")
        model.train()
        bar = progress_bar(range(need.steps), desc="dp_sgd fit", disable=not self.progress, leave=False, dynamic_ncols=True)
        empty_batches = 0
        for step in bar:
            # Poisson sampling: each record joins independently (the accountant's assumption).
            index = torch.nonzero(torch.rand(dataset.num_train, generator=sampling) < need.sample_rate).flatten()
            optimizer.zero_grad(set_to_none=True)
            if index.numel() == 0:
                # An empty Poisson batch still takes a (pure-noise) step, as opacus does.
                empty_batches += 1
                for parameter in model.parameters():
                    parameter.grad_sample = parameter.new_zeros((0, *parameter.shape))
            else:
                index = index.to(device)
                eps = torch.randn(index.numel(), latent_dim, generator=latent).to(device)
                recon, mean, log_var = model(images[index], labels[index], eps)
                loss = per_sample_loss(recon, images[index], mean, log_var, opts.obs_var).mean()
                with warnings.catch_warnings():
                    # opacus's hooks fire on outputs because the (private) inputs need no grad: expected.
                    warnings.filterwarnings("ignore", message="Full backward hook is firing")
                    loss.backward()
            optimizer.step()
        fit_seconds = time.perf_counter() - started
        optimizer.zero_grad(set_to_none=True)
        model.cleanup()  # remove opacus's hooks and per-sample buffers before sampling
        decoder = vae.decoder
        pool_images, pool_labels = sample_decoder(
            decoder, latent_dim, dataset.num_classes, self.pool_per_class, dataset, device,
            stage_generator(seed, "generator", "dp_sgd", "sample"),
        )
        return Pool(
            pool_images, pool_labels, self.mechanisms(noise_multiplier), synthetic=True,
            info={
                "fit_seconds": round(fit_seconds, 3),
                "sample_seconds": round(time.perf_counter() - started - fit_seconds, 3),
                "steps": need.steps,
                "non_private": noise_multiplier is None,
            },
        )

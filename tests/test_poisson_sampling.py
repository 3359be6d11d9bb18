"""Poisson sampling, as the accountant assumes it: every record joins each batch on its own
with probability q, so a class of N_c records contributes Binomial(N_c, q) records.

Goodness of fit with fixed seeds (:mod:`binomial_fit`: mean and dispersion, level 1e-4),
per class and for the whole batch: a correct sampler passes, while q = 1, a halved q or
fixed-size batches fail by tens of standard errors. Masks must come from the
run's noise source: two sources give two mask sequences, one source the same one.
"""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from binomial_fit import assert_binomial
from dpgd.config import DpSgdConfig, ExpertConfig, GeneratorConfig, ModelConfig
from dpgd.generators import build_generator
from dpgd.generators import dp_sgd
from dpgd.matching.release import poisson_batches
from dpgd.privacy.randomness import NoiseSource

pytestmark = [pytest.mark.privacy, pytest.mark.usefixtures("one_torch_thread")]
CPU = torch.device("cpu")


def class_sizes(labels: torch.Tensor, classes: int) -> torch.Tensor:
    return torch.bincount(labels, minlength=classes)


def test_poisson_batches_follow_binomial_class_sizes():
    labels = torch.arange(10).repeat_interleave(torch.arange(100, 300, 20))  # classes of 100..280 records
    batches = poisson_batches(labels, 0.05, torch.Generator().manual_seed(0))
    drawn = [next(batches) for _ in range(400)]
    per_class = torch.stack([class_sizes(labels[index], 10) for index in drawn])
    # The whole batch first: fixed-size batches have no dispersion there (per class, some).
    assert_binomial(per_class.sum(1, keepdim=True), torch.tensor([len(labels)]), 0.05)
    assert_binomial(per_class, class_sizes(labels, 10), 0.05)
    assert all(len(index.unique()) == len(index) for index in drawn)  # a record joins at most once


@pytest.fixture
def vae_batches(monkeypatch):
    """The labels and a fingerprint of the images of every batch the VAE trains on."""
    seen: list[tuple[torch.Tensor, float]] = []
    real_forward = dp_sgd.ConditionalVAE.forward

    def forward(self, x, labels, eps):
        seen.append((labels.detach().cpu(), float(x.detach().double().sum())))
        return real_forward(self, x, labels, eps)

    monkeypatch.setattr(dp_sgd.ConditionalVAE, "forward", forward)
    return seen


def fit_vae(digits, counts, noise: NoiseSource, steps: int, sample_rate: float) -> None:
    cfg = OmegaConf.structured(GeneratorConfig(name="dp_sgd", pool_per_class=1,
                                               dp_sgd=DpSgdConfig(steps=steps, sample_rate=sample_rate, width=4,
                                                                  latent_dim=2)))
    build_generator(cfg, progress=False).fit_and_sample(digits, 1.0, 0, CPU, noise=noise, counts=counts)


def test_dp_sgd_vae_batches_follow_binomial(digits, dp_inputs, vae_batches):
    fit_vae(digits, dp_inputs["counts"], NoiseSource.from_public_seed(0), steps=120, sample_rate=0.02)
    assert len(vae_batches) == 120  # P(an empty batch) = 0.98^N: none
    per_class = torch.stack([class_sizes(labels, digits.num_classes) for labels, _ in vae_batches])
    assert_binomial(per_class.sum(1, keepdim=True), torch.tensor([digits.num_train]), 0.02)
    assert_binomial(per_class, digits.class_counts(), 0.02)


def test_dp_sgd_vae_masks_come_from_the_noise_source(digits, dp_inputs, vae_batches):
    for seed in (1, 1, 2):
        fit_vae(digits, dp_inputs["counts"], NoiseSource.from_public_seed(seed), steps=4, sample_rate=0.02)
    first, again, other = (vae_batches[k:k + 4] for k in (0, 4, 8))
    assert [s for _, s in first] == [s for _, s in again]
    assert [s for _, s in first] != [s for _, s in other]


def test_expert_batches_follow_binomial(digits, dp_inputs):
    from dpgd.expert import train_expert
    from dpgd.models import seeded_model

    start = seeded_model(ModelConfig(width=4), digits.channels, digits.num_classes, digits.image_size, 0)
    seen: list[torch.Tensor] = []
    # Forward pre-hooks survive train_expert's deep copy; the hook only reads the batch.
    start.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].shape[0]))
    cfg = OmegaConf.structured(ExpertConfig(name="dp_sgd", steps=150, sample_rate=0.02, finetune="head"))
    train_expert(cfg, start, digits, 1.0, CPU, progress=False, **dp_inputs)
    assert len(seen) == 150
    assert_binomial(torch.tensor(seen)[:, None], torch.tensor([digits.num_train]), 0.02)

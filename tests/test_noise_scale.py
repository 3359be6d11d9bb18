"""Each DP mechanism adds noise of std sigma x its sensitivity, with the sensitivity written
here as a number (never read from the module under test), and its outputs depend on the
noisy release and the released counts, not on clean statistics.

Noise is measured on what the mechanism really added (released minus the clean statistic
the test computes itself, or opacus's ``p.grad - p.summed_grad``), with fixed seeds. The
tolerances are 5 standard errors of a sample standard deviation (se = std / sqrt(2 n)), so
a correct mechanism never fails and noise x0.9 already does.
"""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf
from opacus.optimizers import DPOptimizer

from dpgd import selection
from dpgd.config import DpMerfConfig, DpSgdConfig, ExpertConfig, GeneratorConfig, ModelConfig
from dpgd.counts import ClassCounts, release_class_counts
from dpgd.expert import release_feature_sums
from dpgd.generators import build_generator
from dpgd.generators.dp_merf import release_embedding
from dpgd.generators.pe import release_histogram
from dpgd.matching.release import release_class_sums_once, release_noisy_class_sums
from dpgd.privacy.randomness import NoiseSource

pytestmark = [pytest.mark.privacy, pytest.mark.usefixtures("one_torch_thread")]
CPU = torch.device("cpu")


def assert_noise_std(noise: torch.Tensor, std: float) -> None:
    """Zero-mean noise of standard deviation ``std`` (5 standard errors either way)."""
    noise = noise.double().flatten()
    n = noise.numel()
    assert abs(float(noise.mean())) < 5 * std / math.sqrt(n), f"noise mean {float(noise.mean()):.4g}"
    measured = float(noise.std())
    assert abs(measured / std - 1) < 5 / math.sqrt(2 * n), f"noise std {measured:.4g}, expected {std:.4g}"


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def clipped_sums(embeddings: torch.Tensor, labels: torch.Tensor, classes: int, clip: float) -> torch.Tensor:
    """Per-class sums of rows scaled to norm <= clip, computed here (not with clip_rows)."""
    scale = (clip / embeddings.norm(dim=1)).clamp(max=1.0)
    sums = torch.zeros(classes, embeddings.shape[1])
    for row, label, factor in zip(embeddings, labels, scale):
        sums[label] += row * factor
    return sums


# --- the releases, one call each ----------------------------------------------------------


def test_count_noise_std_is_sigma_times_one():
    labels = torch.arange(4).repeat_interleave(torch.tensor([300, 400, 500, 600]))  # far from the clamp at 1
    generator = seeded()
    noisy = torch.stack([release_class_counts(labels, 4, 7.0, generator).values for _ in range(3000)])
    assert_noise_std(noisy - torch.tensor([300.0, 400.0, 500.0, 600.0]), 7.0 * 1.0)


def test_dp_merf_noise_std_is_sigma_times_one():
    sums = torch.zeros(2000, 10)
    released = release_embedding(sums, 2.5, seeded())
    assert released.data_ptr() == sums.data_ptr()  # in place: no clean copy survives
    assert_noise_std(released, 2.5 * 1.0)


def test_pe_vote_noise_std_is_sigma_times_one():
    votes = torch.randint(0, 30, (20_000,), generator=seeded(1)).float()
    assert_noise_std(release_histogram(votes, 3.0, seeded()) - votes, 3.0 * 1.0)


def test_lda_feature_sum_noise_std_is_sigma_times_one():
    embedded = torch.nn.functional.normalize(torch.randn(400, 32, generator=seeded(1)), dim=1) * 0.7
    labels = torch.arange(400) % 10
    clean = torch.zeros(10, 32).index_add_(0, labels, embedded)
    generator = seeded()
    noise = torch.stack([release_feature_sums(embedded, labels, 10, 3.0, generator) - clean for _ in range(40)])
    assert_noise_std(noise, 3.0 * 1.0)


def test_one_record_moves_an_lda_class_sum_by_at_most_one():
    """The lda release's sensitivity: a record of norm 50 moves its class sum by exactly 1,
    one of norm 0.3 by 0.3, and no other class sum."""
    embedded = torch.randn(50, 16, generator=seeded(1)) * 0.1
    labels = torch.arange(50) % 5
    without = release_feature_sums(embedded, labels, 5, 0.0, seeded())
    for norm in (50.0, 0.3):
        record = torch.randn(1, 16, generator=seeded(2))
        record = record / record.norm() * norm
        with_record = release_feature_sums(torch.cat([embedded, record]), torch.cat([labels, torch.tensor([3])]),
                                           5, 0.0, seeded())
        moved = (with_record - without).norm(dim=1)
        assert float(moved[3]) == pytest.approx(min(norm, 1.0), rel=1e-5)
        assert float(moved.sum() - moved[3]) < 1e-5


def test_matcher_noise_std_is_sigma_times_clip():
    embeddings = torch.randn(300, 64, generator=seeded(1)) * torch.linspace(0.01, 0.3, 300)[:, None]
    labels = torch.arange(300) % 10
    clean = clipped_sums(embeddings, labels, 10, 0.8)
    generator = seeded()
    noise = torch.stack([release_noisy_class_sums(embeddings, labels, 10, 0.8, 3.0, generator) - clean
                         for _ in range(40)])
    assert_noise_std(noise, 3.0 * 0.8)


def test_matcher_once_noise_std_is_sigma_times_clip():
    images = torch.randn(300, 1, 8, 8, generator=seeded(1)) * 0.2
    labels = torch.arange(300) % 10
    clean = clipped_sums(images.flatten(1), labels, 10, 0.8)
    generator = seeded()
    noise = torch.stack([
        release_class_sums_once(lambda batch: [batch.flatten(1)], images, labels, 10, 0.8, 3.0, generator, CPU,
                                batch_size=128) - clean
        for _ in range(40)])
    assert_noise_std(noise, 3.0 * 0.8)


def test_one_record_moves_a_matcher_class_sum_by_at_most_c():
    """The sensitivity the noise is scaled to: a record of norm 50 moves its class sum by
    exactly C = 0.8, one of norm 0.3 by 0.3 (no noise: multiplier 0)."""
    embeddings = torch.randn(50, 16, generator=seeded(1))
    labels = torch.arange(50) % 5
    without = release_noisy_class_sums(embeddings, labels, 5, 0.8, 0.0, seeded())
    for norm in (50.0, 0.3):
        record = torch.randn(1, 16, generator=seeded(2))
        record = record / record.norm() * norm
        with_record = release_noisy_class_sums(torch.cat([embeddings, record]), torch.cat([labels, torch.tensor([3])]),
                                               5, 0.8, 0.0, seeded())
        moved = (with_record - without).norm(dim=1)
        assert float(moved[3]) == pytest.approx(min(norm, 0.8), rel=1e-5)
        assert float(moved.sum() - moved[3]) < 1e-5


def test_selection_noise_std_is_sigma_times_sqrt_k_minus_1():
    """Five candidates: four gains, L2 sensitivity sqrt(4) = 2."""
    generator = seeded()
    draws = []
    for _ in range(3000):
        gains, std = selection.release_gains(torch.tensor([10.0, 20.0, 30.0, 40.0, 50.0], dtype=torch.float64),
                                             4.0, generator)
        draws.append(gains[1:] - torch.tensor([10.0, 20.0, 30.0, 40.0], dtype=torch.float64))
    assert std == 4.0 * 2.0
    assert_noise_std(torch.stack(draws), 4.0 * 2.0)


# --- DP-SGD: the noise opacus adds, and the expected batch it divides by --------------------


@pytest.fixture
def added_noise(monkeypatch):
    """Every DPOptimizer.add_noise call's noise (p.grad - p.summed_grad), and the expected
    batch of every scale_grad call: the real opacus methods run, these only read."""
    seen: dict[str, list] = {"noise": [], "expected_batch": []}
    real_add, real_scale = DPOptimizer.add_noise, DPOptimizer.scale_grad

    def add_noise(self):
        real_add(self)
        seen["noise"] += [(p.grad - p.summed_grad.view_as(p)).detach().flatten() for p in self.params]

    def scale_grad(self):
        seen["expected_batch"].append(self.expected_batch_size)
        real_scale(self)

    monkeypatch.setattr(DPOptimizer, "add_noise", add_noise)
    monkeypatch.setattr(DPOptimizer, "scale_grad", scale_grad)
    return seen


def vae(steps: int = 3, sample_rate: float = 0.05, clip_norm: float = 0.7):
    cfg = OmegaConf.structured(GeneratorConfig(
        name="dp_sgd", pool_per_class=2, dp_sgd=DpSgdConfig(steps=steps, sample_rate=sample_rate, clip_norm=clip_norm)))
    return build_generator(cfg, progress=False)


def expert(start_seed: int = 0, steps: int = 3, sample_rate: float = 0.05, clip_norm: float = 0.3):
    from dpgd.expert import train_expert
    from dpgd.models import seeded_model

    cfg = OmegaConf.structured(ExpertConfig(name="dp_sgd", steps=steps, sample_rate=sample_rate,
                                            clip_norm=clip_norm, finetune="all"))

    def run(dataset, sigma, counts, noise):
        start = seeded_model(ModelConfig(width=8), dataset.channels, dataset.num_classes, dataset.image_size,
                             start_seed)
        return train_expert(cfg, start, dataset, sigma, CPU, progress=False, noise=noise, counts=counts)

    return run


def test_dp_sgd_vae_noise_std_is_sigma_times_clip(digits, dp_inputs, added_noise):
    vae().fit_and_sample(digits, 1.5, 0, CPU, **dp_inputs)
    assert len(added_noise["expected_batch"]) == 3
    assert_noise_std(torch.cat(added_noise["noise"]), 1.5 * 0.7)


def test_expert_noise_std_is_sigma_times_clip(digits, dp_inputs, added_noise):
    expert()(digits, 2.0, dp_inputs["counts"], dp_inputs["noise"])
    assert len(added_noise["expected_batch"]) == 3
    assert_noise_std(torch.cat(added_noise["noise"]), 2.0 * 0.3)


def test_dp_sgd_expected_batches_use_the_released_total(digits, added_noise):
    """opacus divides the noisy sum by the expected batch q N: N must be the released total
    (here 5,000, far from digits' exact N), never the exact one."""
    counts = ClassCounts(torch.full((10,), 500.0), noisy=True, noise_std=20.0)
    noise = NoiseSource.from_public_seed(0)
    vae(steps=1, sample_rate=0.05).fit_and_sample(digits, 1.0, 0, CPU, noise=noise, counts=counts)
    expert(steps=1, sample_rate=0.02)(digits, 1.0, counts, noise)
    assert added_noise["expected_batch"] == [round(0.05 * 5000), round(0.02 * 5000)]
    assert digits.num_train != 5000


# --- DP-MERF: the decoder is fitted to the noisy release, over the released counts ------------


def dp_merf_pool(digits, noise: NoiseSource, counts: ClassCounts) -> torch.Tensor:
    cfg = OmegaConf.structured(GeneratorConfig(name="dp_merf", pool_per_class=5,
                                               dp_merf=DpMerfConfig(steps=3, num_features=200)))
    return build_generator(cfg, progress=False).fit_and_sample(digits, 2.0, 0, CPU, noise=noise,
                                                               counts=counts).images


def test_dp_merf_fit_moves_with_the_noise(digits, dp_inputs):
    """Same public seed and counts, other noise: another pool (and the same noise: the same pool)."""
    counts = dp_inputs["counts"]
    first = dp_merf_pool(digits, NoiseSource.from_public_seed(1), counts)
    assert torch.equal(first, dp_merf_pool(digits, NoiseSource.from_public_seed(1), counts))
    other = dp_merf_pool(digits, NoiseSource.from_public_seed(2), counts)
    assert float((first - other).abs().max()) > 1e-3


def test_dp_merf_normalises_by_the_released_counts(digits, dp_inputs):
    exact = dp_inputs["counts"]
    released = ClassCounts(exact.values * 1.5, noisy=True, noise_std=10.0)
    noise = NoiseSource.from_public_seed(1)
    assert float((dp_merf_pool(digits, noise, exact) - dp_merf_pool(digits, noise, released)).abs().max()) > 1e-3

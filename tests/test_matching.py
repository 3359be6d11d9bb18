"""DP feature matching: the clipped noisy class statistic and the matching loop."""

from __future__ import annotations

import math

import pytest
import torch

import dpgd.matching as matching
from dpgd.matching import clip_rows, release_noisy_class_sums


def test_clipped_rows_never_exceed_the_clip_norm():
    gen = torch.Generator().manual_seed(0)
    emb = torch.randn(500, 64, generator=gen) * torch.logspace(-2, 2, 500)[:, None]
    clipped = clip_rows(emb, 1.5)
    assert clipped.norm(dim=1).max() <= 1.5 + 1e-5
    small = emb.norm(dim=1) < 1.5
    assert torch.allclose(clipped[small], emb[small])  # rows inside the ball are untouched


def test_noise_std_is_sigma_times_clip_norm():
    """With zero embeddings the released sums are pure noise: their std must be sigma*C."""
    sigma, clip = 3.0, 0.5
    emb = torch.zeros(10, 4096)
    labels = torch.arange(10)
    noisy = release_noisy_class_sums(emb, labels, 10, clip, sigma, torch.Generator().manual_seed(1))
    assert noisy.shape == (10, 4096)
    assert noisy.std().item() == pytest.approx(sigma * clip, rel=0.02)
    assert noisy.mean().abs().item() < 0.05


def test_noisy_sum_is_clean_sum_plus_one_noise_draw():
    gen = torch.Generator().manual_seed(2)
    emb = torch.randn(40, 16, generator=gen) * 5
    labels = torch.arange(40) % 4
    sigma, clip = 2.0, 1.0
    noisy = release_noisy_class_sums(emb, labels, 4, clip, sigma, torch.Generator().manual_seed(3))
    clean = torch.zeros(4, 16).index_add_(0, labels, clip_rows(emb, clip))
    expected_noise = torch.randn((4, 16), generator=torch.Generator().manual_seed(3)) * sigma * clip
    assert torch.allclose(noisy, clean + expected_noise, atol=1e-5)


def exact_counts(dataset):
    from dpgd.counts import release_class_counts

    return release_class_counts(dataset.train_labels, dataset.num_classes, None, torch.Generator())


def test_each_iteration_draws_noise_exactly_once(monkeypatch):
    """Spy on the mechanism: one release per iteration, and the matcher keeps only its output."""
    from dpgd.config import DatasetConfig, MatcherConfig, ModelConfig
    from dpgd.data import load_dataset
    from dpgd.initialisation import initialise

    dataset = load_dataset(DatasetConfig(name="digits", max_train_per_class=40))
    calls = []
    real_release = matching.release_noisy_class_sums

    def spy(*args, **kwargs):
        out = real_release(*args, **kwargs)
        calls.append(out.clone())
        return out

    monkeypatch.setattr(matching.loop, "release_noisy_class_sums", spy)
    cfg = MatcherConfig(name="dp_feature", iterations=5, lr_images=10.0, sample_rate=0.2, dsa=False)
    start = initialise("noise", dataset, 2, 1.0, torch.Generator().manual_seed(0))
    extractors = matching.RandomExtractors(ModelConfig(width=16), 1, 10, (8, 8), torch.Generator().manual_seed(0), torch.device("cpu"))
    images, stats = matching.match(
        start.images, start.labels, dataset, cfg, extractors=extractors, noise_multiplier=4.0,
        generator=torch.Generator().manual_seed(0), noise_generator=torch.Generator().manual_seed(1),
        device=torch.device("cpu"), progress=False,
        sampling_generator=torch.Generator().manual_seed(2), counts=exact_counts(dataset),
    )
    assert len(calls) == 5 and stats.iterations == 5
    assert not torch.equal(images, start.images)
    assert all(math.isfinite(c.sum().item()) for c in calls)

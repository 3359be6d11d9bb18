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


def test_release_once_is_one_gaussian_on_clipped_augmentation_means():
    """Each record adds the mean of its clipped views (norm <= C); noise is drawn once, after."""
    from dpgd.matching.release import release_class_sums_once

    gen = torch.Generator().manual_seed(4)
    images = torch.randn(30, 8, generator=gen) * 4
    labels = torch.arange(30) % 3
    scales = (1.0, -2.0, 0.5)

    def views(batch):
        return [batch * s for s in scales]

    sigma, clip = 1.5, 1.0
    noisy = release_class_sums_once(views, images, labels, 3, clip, sigma, torch.Generator().manual_seed(5),
                                    torch.device("cpu"), batch_size=7)
    record = torch.stack([clip_rows(images * s, clip) for s in scales]).mean(0)
    assert record.norm(dim=1).max() <= clip + 1e-5  # the sensitivity the ledger records
    clean = torch.zeros(3, 8).index_add_(0, labels, record)
    noise = torch.randn((3, 8), generator=torch.Generator().manual_seed(5)) * sigma * clip
    assert torch.allclose(noisy, clean + noise, atol=1e-5)


def test_james_stein_shrinkage_keeps_a_good_start_and_follows_a_strong_signal():
    from dpgd.matching.release import shrink_towards

    gen = torch.Generator().manual_seed(6)
    d, std = 256, torch.tensor([1.0, 1.0])
    signal = torch.randn(2, d, generator=gen)
    prior = signal.clone()
    prior[1] += 50.0 / math.sqrt(d)  # class 1's start is far (distance 50) from its signal
    target = signal + std[:, None] * torch.randn(2, d, generator=gen)
    estimate, weights = shrink_towards(target, prior, std)
    # class 0: the start is exact, the release is noise around it -> keep (almost) the start
    assert weights[0] < 0.1
    # class 1: distance 50 against noise norm 16 -> weight ~ 1 - 256/(2500+256)
    assert weights[1] == pytest.approx(1 - (d - 2) / (2500 + d), abs=0.05)
    # and the estimate is closer to the signal than the raw release, for both classes
    assert ((estimate - signal).norm(dim=1) < (target - signal).norm(dim=1)).all()


def test_signal_to_noise_bound_and_estimate():
    from dpgd.matching.release import signal_to_noise

    gen = torch.Generator().manual_seed(7)
    d, sigma, clip = 400, 2.0, 1.0
    expected = torch.tensor([100.0, 100.0])
    signal = torch.randn(2, d, generator=gen)
    signal = 0.8 * clip * signal / signal.norm(dim=1, keepdim=True)  # norm 0.8 C
    target = signal + sigma * clip * torch.randn(2, d, generator=gen) / expected[:, None]
    bound, estimate = signal_to_noise(target, sigma, clip, expected)
    noise_norm = sigma * clip * math.sqrt(d) / 100  # 0.4
    assert float(bound) == pytest.approx(clip / noise_norm)
    assert float(estimate) == pytest.approx(0.8 / noise_norm, rel=0.15)


def test_once_matching_releases_one_target_per_extractor_and_reads_no_data_after(monkeypatch):
    """release=once: M releases (one per extractor) before the loop; iterations release nothing."""
    from dpgd.config import DatasetConfig, MatcherConfig, ModelConfig
    from dpgd.data import load_dataset
    from dpgd.initialisation import initialise
    from dpgd.models import seeded_model
    from dpgd.privacy.components import ReleaseLog

    dataset = load_dataset(DatasetConfig(name="digits", max_train_per_class=40))
    calls = []
    real_release = matching.loop.release_class_sums_once

    def spy(*args, **kwargs):
        out = real_release(*args, **kwargs)
        calls.append(out.clone())
        return out

    monkeypatch.setattr(matching.loop, "release_class_sums_once", spy)
    monkeypatch.setattr(matching.loop, "release_noisy_class_sums", lambda *a, **k: pytest.fail("per-iteration release"))
    networks = [seeded_model(ModelConfig(width=16), 1, 10, (8, 8), seed) for seed in range(3)]
    for net in networks:
        net.requires_grad_(False)
    cfg = MatcherConfig(name="dp_feature", iterations=6, release="once", embedding="pooled", augmentations=2)
    start = initialise("noise", dataset, 2, 1.0, torch.Generator().manual_seed(0))
    releases = ReleaseLog("matcher")
    images, stats = matching.match(
        start.images, start.labels, dataset, cfg,
        extractors=matching.PoolTrainedExtractors(networks, torch.Generator().manual_seed(0)),
        noise_multiplier=[3.0, 3.0, 3.0], generator=torch.Generator().manual_seed(0),
        noise_generator=torch.Generator().manual_seed(1), device=torch.device("cpu"), progress=False,
        counts=exact_counts(dataset), releases=releases,
    )
    assert len(calls) == 3 and releases.sigmas == [3.0, 3.0, 3.0]
    assert all(c.shape == (10, 16) for c in calls)  # pooled: width values, not width*h*w
    assert stats.snr_bound is not None and stats.snr_bound > 0 and 0 <= stats.shrinkage_weight <= 1
    assert not torch.equal(images, start.images)


def test_once_release_is_planned_as_one_full_batch_gaussian_per_extractor():
    from dpgd.config import MatcherConfig
    from dpgd.errors import ConfigError
    from dpgd.matching import privacy_request

    need = privacy_request(MatcherConfig(release="once"), extractors=9)
    assert (need.sample_rate, need.steps) == (1.0, 9)
    per_iteration = privacy_request(MatcherConfig(), extractors=9)
    assert (per_iteration.sample_rate, per_iteration.steps) == (0.1, 200)
    with pytest.raises(ConfigError, match="release"):
        privacy_request(MatcherConfig(release="twice"), extractors=9)


def test_the_real_batch_is_embedded_in_chunks_with_the_same_values():
    from dpgd.matching.loop import embed_real
    from dpgd.models import ConvNet

    torch.manual_seed(0)
    net = ConvNet(3, 10, (32, 32)).eval()
    real = torch.randn(70, 3, 32, 32)  # chunks of 32: 32 + 32 + 6
    calls = []

    def embed(model, x):
        calls.append(len(x))
        return model.embed(x)

    with torch.no_grad():
        chunked = embed_real(embed, net, real)
        whole = net.embed(real)
    assert calls == [32, 32, 6]
    assert torch.allclose(chunked, whole, rtol=1e-4, atol=1e-5)


def test_clipped_loss_gives_the_raw_feature_gradient_projected_on_the_sphere():
    """The clipped (DP) loss is measured in the features' own scale: its gradient on each
    synthetic embedding equals the unclipped (DM) loss's gradient towards the target scaled
    back to that norm, minus its radial part (clipping cannot change a norm). Without the
    rescaling the gradient is (C / rho)^2 = 1/625 of it here, and the images do not move."""
    from dpgd.matching.loop import matching_loss

    gen = torch.Generator().manual_seed(8)
    rho, clip, classes, per_class, d = 25.0, 1.0, 3, 4, 64
    raw = torch.randn(classes * per_class, d, generator=gen)
    raw = rho * raw / raw.norm(dim=1, keepdim=True)
    labels = torch.arange(classes).repeat_interleave(per_class)
    target = clip_rows(torch.randn(classes, d, generator=gen), 0.7 * clip)  # a mean of clipped rows
    dp_emb = raw.clone().requires_grad_(True)
    matching_loss(dp_emb, labels, target, classes, clip).backward()
    dm_emb = raw.clone().requires_grad_(True)
    matching_loss(dm_emb, labels, target * rho / clip, classes, None).backward()
    unit = raw / rho
    projected = dm_emb.grad - (dm_emb.grad * unit).sum(1, keepdim=True) * unit
    assert torch.allclose(dp_emb.grad, projected, rtol=1e-4, atol=1e-6)
    assert dp_emb.grad.norm() > 0.1 * dm_emb.grad.norm()


def test_an_image_gradient_does_not_depend_on_images_per_class():
    """The loss is scaled by the images per class, so each image moves as fast at IPC 50 as
    at IPC 1 (a class mean of n images moves 1/n as fast under a plain mean loss)."""
    from dpgd.matching.loop import matching_loss

    gen = torch.Generator().manual_seed(9)
    emb = torch.randn(6, 32, generator=gen) * 5
    labels = torch.arange(3).repeat_interleave(2)
    target = torch.randn(3, 32, generator=gen)
    grads = []
    for copies in (1, 5):
        rows = emb.repeat(copies, 1).requires_grad_(True)
        matching_loss(rows, labels.repeat(copies), target, 3, 1.0).backward()
        grads.append(rows.grad[:6])
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-7)


def test_matching_moves_noise_images_into_a_set_that_trains_a_classifier(digits, one_torch_thread):
    """epsilon=inf on digits (NDPDC's setting, clipping kept, no noise): 30 iterations must
    move the noise start by a clear pixel distance and beat it by a clear margin. Measured:
    start 16.7 %, matched 83.3 %, RMS move 1.05; a step too small by the clipping's factor
    (the loss on clipped means with no rescaling) gave 53.1 % and 0.30."""
    from dpgd.config import EvaluationConfig, MatcherConfig, ModelConfig
    from dpgd.evaluation import evaluate_distilled
    from dpgd.initialisation import initialise

    model = ModelConfig(width=32)
    start = initialise("noise", digits, 10, float("inf"), torch.Generator().manual_seed(0))
    extractors = matching.RandomExtractors(model, digits.channels, digits.num_classes, digits.image_size,
                                           torch.Generator().manual_seed(1), torch.device("cpu"))
    images, _ = matching.match(
        start.images, start.labels, digits, MatcherConfig(iterations=30), extractors=extractors,
        noise_multiplier=0.0, generator=torch.Generator().manual_seed(2),
        noise_generator=torch.Generator().manual_seed(3), sampling_generator=torch.Generator().manual_seed(4),
        counts=exact_counts(digits), device=torch.device("cpu"), progress=False,
    )
    evaluation = EvaluationConfig(runs=1, epochs=100)

    def accuracy(x):
        return evaluate_distilled(x, start.labels, digits, model, evaluation, torch.device("cpu"), 0,
                                  progress=False).mean

    moved = (images - start.images).pow(2).mean().sqrt()
    assert moved > 0.7
    assert accuracy(images) > accuracy(start.images) + 50


def test_the_step_on_a_noisy_release_is_its_wiener_weight(digits):
    """One iteration, the same noise draw: the image step is lr x snr^2 / (snr^2 + h^2) times
    the loss gradient (h = half_step_snr), so the steps at two settings of h have exactly
    the ratio of their weights; at snr = h the weight is one half."""
    from dpgd.config import MatcherConfig, ModelConfig
    from dpgd.initialisation import initialise

    start = initialise("noise", digits, 2, 1.0, torch.Generator().manual_seed(0))
    logged = []

    def step(half_step_snr):
        extractors = matching.RandomExtractors(ModelConfig(width=16), 1, 10, (8, 8), torch.Generator().manual_seed(0),
                                               torch.device("cpu"))
        cfg = MatcherConfig(iterations=1, dsa=False, half_step_snr=half_step_snr)
        images, _ = matching.match(
            start.images, start.labels, digits, cfg, extractors=extractors, noise_multiplier=4.0,
            generator=torch.Generator().manual_seed(0), noise_generator=torch.Generator().manual_seed(1),
            sampling_generator=torch.Generator().manual_seed(2), counts=exact_counts(digits),
            device=torch.device("cpu"), progress=False, on_iteration=lambda i, m: logged.append(m),
        )
        return images - start.images, float(logged[-1]["step_factor"])

    small, weight_small = step(1.0)
    snr = float(logged[0]["snr_bound"])  # q N_c / (sigma sqrt(d)): ~0.1 here
    assert weight_small == pytest.approx(snr**2 / (snr**2 + 1.0), rel=1e-5)
    half, weight_half = step(snr)
    assert weight_half == pytest.approx(0.5, rel=1e-5)
    # float32 images near 1: ~1e-7 each
    assert torch.allclose(half, small * (weight_half / weight_small), rtol=1e-3, atol=1e-6)

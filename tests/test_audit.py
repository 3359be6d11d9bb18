"""The empirical privacy audit: its statistics, and bug injection into every DP mechanism.

Each DP release of the pipeline (class counts, DP-MERF's embedding, the matcher's class
sums, the expert's DP-SGD step) is run with its real code on neighbouring data sets (with
and without a canary record), with fresh, seeded noise for every release. Correct code
must keep the audit's lower bound below what the ledger claims for one release; a
deliberately broken copy (noise scaled by 0.05 or 0.5, a clean class sum, an expert
without noise: each while the ledger still records the planned noise multiplier) must
exceed it. Two bounds: epsilon at delta from a threshold count (300 trials per side, half
of them choosing the threshold), and mu of mu-GDP with the threshold fixed in advance (500
per side), which sees noise x0.5 where the first cannot (docs/privacy-audit.md).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.stats import binomtest

from dpgd.mia.audit import (
    AuditFailure, audit_release, audit_release_gdp, check_audit, check_gdp_audit, clopper_pearson_lower,
    clopper_pearson_upper, epsilon_lower_bound, gdp_lower_bound,
)
from dpgd.privacy import analysis
from dpgd.privacy.mechanisms import SubsampledGaussian
from dpgd.privacy.randomness import NoiseSource

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny ops: 2 threads are ~50x slower on a busy machine

DELTA = 1e-5
SIGMA = 2.0  # one release at sigma 2 claims epsilon 2.00 at delta 1e-5
TRIALS = 300  # per side: 150 choose the threshold, 150 are the evidence


def claimed_mu(sigma: float = SIGMA) -> float:
    """What the ledger proves for one Gaussian release: mu-GDP with mu = C / (sigma C) = 1 / sigma."""
    return 1.0 / sigma


def claimed_epsilon(sigma: float = SIGMA) -> float:
    """What the ledger proves for one release with the canary in (no subsampling credit)."""
    return analysis.compose_epsilon([SubsampledGaussian("audit", sigma, 1.0, 1, "C")], DELTA)


def noise_stream(seed: int = 0):
    """Fresh, seeded noise for each release of one game (reproducible: a test input)."""
    counter = itertools.count()
    return lambda: NoiseSource.from_public_seed(1_000_000 * seed + next(counter)).generator("audit")


@pytest.fixture
def scaled_noise(monkeypatch):
    """Test-only bug: every torch.randn draw scaled by ``factor`` (the ledger is untouched)."""
    real = torch.randn

    def inject(factor: float) -> None:
        monkeypatch.setattr(torch, "randn", lambda *args, **kwargs: factor * real(*args, **kwargs))

    return inject


# --- the statistics ---------------------------------------------------------------------


def test_clopper_pearson_matches_scipys_exact_binomial_interval():
    for k, n in [(0, 50), (3, 50), (25, 50), (50, 50), (7, 400)]:
        lower = binomtest(k, n, alternative="greater").proportion_ci(0.975, method="exact").low
        upper = binomtest(k, n, alternative="less").proportion_ci(0.975, method="exact").high
        assert clopper_pearson_lower(np.array([k]), n, 0.025)[0] == pytest.approx(lower, abs=1e-9)
        assert clopper_pearson_upper(np.array([k]), n, 0.025)[0] == pytest.approx(upper, abs=1e-9)


@pytest.mark.parametrize("sigma", [0.5, 1.0, 3.0])
def test_bound_on_the_gaussian_mechanism_stays_below_its_epsilon_and_grows_with_the_signal(sigma):
    """Scores N(1/sigma, 1) vs N(0, 1) are the optimal test of a Gaussian release at sigma."""
    rng = np.random.default_rng(0)
    n = 4000
    scores_in, scores_out = rng.normal(1 / sigma, 1, n), rng.normal(0, 1, n)
    bound = epsilon_lower_bound(scores_in[: n // 2], scores_out[: n // 2], scores_in[n // 2 :], scores_out[n // 2 :],
                                DELTA, 0.95)
    assert bound.epsilon_lower_bound <= claimed_epsilon(sigma)
    assert bound.trials_in == bound.trials_out == n // 2
    if sigma <= 1.0:  # mu >= 1: a real signal is seen
        assert bound.epsilon_lower_bound > 1.0
    else:
        assert bound.epsilon_lower_bound < 0.5


def test_no_signal_gives_no_bound_and_a_bound_above_the_proof_fails_loudly():
    rng = np.random.default_rng(1)
    same = [rng.normal(0, 1, 500) for _ in range(4)]
    assert epsilon_lower_bound(*same, DELTA).epsilon_lower_bound < 0.3
    bound = epsilon_lower_bound(np.ones(100), np.zeros(100), np.ones(100), np.zeros(100), DELTA)
    assert bound.epsilon_lower_bound > 3.0
    check_audit(bound, proven_epsilon=10.0)
    with pytest.raises(AuditFailure, match="privacy audit failed"):
        check_audit(bound, proven_epsilon=1.0)


def test_gdp_bound_holds_at_the_claim_and_sees_halved_noise():
    """Scores N(1, sigma^2) vs N(0, sigma^2) are the normalised game of one Gaussian release at
    sigma (mu = 1/sigma). Over 200 seeded repetitions of 500 trials per side, the bound
    exceeds the true mu in at most 5 % (the confidence; measured 0 %) and exceeds the claim
    1/2 when the noise is halved (sigma 1, mu 1) in at least 95 % (measured 100 %)."""
    rng = np.random.default_rng(0)

    def bound(sigma: float) -> float:
        scores_in, scores_out = rng.normal(1.0, sigma, 500), rng.normal(0.0, sigma, 500)
        return gdp_lower_bound(scores_in, scores_out, 0.5).mu_lower_bound

    assert sum(bound(SIGMA) > claimed_mu() for _ in range(200)) <= 10
    assert sum(bound(SIGMA / 2) > claimed_mu() for _ in range(200)) >= 190
    with pytest.raises(AuditFailure, match="claimed mu"):
        check_gdp_audit(gdp_lower_bound(np.ones(50), np.zeros(50), 0.5), claimed_mu())


def test_membership_audit_splits_records_and_bounds_separable_scores(compose):
    from dpgd.config import typed
    from dpgd.errors import ConfigError
    from dpgd.mia.audit import audit_membership
    from dpgd.mia.stage import check_mia_settings

    generator = torch.Generator().manual_seed(0)
    membership = torch.rand(8, 400, generator=generator) < 0.5
    noise = torch.randn(8, 400, generator=generator)
    leaky = audit_membership(noise + 4.0 * membership, membership, DELTA, 0.95, seed=1)
    assert leaky.epsilon_lower_bound > 3.0 and leaky.trials_in + leaky.trials_out == 8 * 200
    assert audit_membership(noise, membership, DELTA, 0.95, seed=1).epsilon_lower_bound < 0.3
    with pytest.raises(ConfigError, match="mia.audit=true"):
        check_mia_settings(typed(compose("mia.audit=true")))
    with pytest.raises(ConfigError, match="audit_confidence"):
        check_mia_settings(typed(compose("mia=lira", "mia.audit=true", "mia.audit_confidence=1.0")))


# --- bug injection, one DP mechanism at a time -----------------------------------------


# Every game's score is normalised: the canary moves it by exactly 1 and the claimed noise
# std is SIGMA (the canary-free clean value, computed without noise, is subtracted).


def counts_statistic(digits, seed: int = 0):
    from dpgd.counts import release_class_counts

    labels = digits.train_labels[:200]
    with_canary = torch.cat([labels, torch.tensor([0])])
    clean = float((labels == 0).sum())
    noise = noise_stream(seed)

    def statistic(canary: bool) -> float:
        released = release_class_counts(with_canary if canary else labels, digits.num_classes, SIGMA, noise())
        return float(released.values[0]) - clean

    return statistic


def matcher_statistic(digits, seed: int = 0):
    from dpgd.matching.release import clip_rows, release_noisy_class_sums

    clip = 1.0
    embeddings = digits.train_images[:200].flatten(1)
    labels = digits.train_labels[:200]
    canary = digits.train_images[200:201].flatten(1)
    canary_label = int(digits.train_labels[200])
    direction = clip_rows(canary, clip)[0] / clip  # norm 1: the canary's clipped contribution / C
    clean = float(release_noisy_class_sums(embeddings, labels, digits.num_classes, clip, 0.0,
                                           torch.Generator())[canary_label] @ direction)
    noise = noise_stream(seed)

    def statistic(canary_in: bool) -> float:
        rows = torch.cat([embeddings, canary]) if canary_in else embeddings
        names = torch.cat([labels, torch.tensor([canary_label])]) if canary_in else labels
        sums = release_noisy_class_sums(rows, names, digits.num_classes, clip, SIGMA, noise())
        return (float(sums[canary_label] @ direction) - clean) / clip

    assert canary.norm() > clip  # the canary moves its class sum by exactly C
    return statistic


def dp_merf_statistic(digits, seed: int = 0):
    from dpgd.generators.dp_merf import RandomFourierFeatures, class_feature_sums, release_embedding

    images, labels = digits.train_images[:200], digits.train_labels[:200]
    canary, canary_label = digits.train_images[200:201], int(digits.train_labels[200])
    features = RandomFourierFeatures(images[0].numel(), 200, 5.0, torch.Generator().manual_seed(0),
                                     torch.device("cpu"))
    direction = features(canary)[0]  # unit norm: the canary's whole contribution
    clean = class_feature_sums(features, images, labels, digits.num_classes, torch.device("cpu"))
    canary_sums = class_feature_sums(features, torch.cat([images, canary]),
                                     torch.cat([labels, torch.tensor([canary_label])]), digits.num_classes,
                                     torch.device("cpu"))
    base = float(clean[:, canary_label] @ direction)
    noise = noise_stream(seed)

    def statistic(canary_in: bool) -> float:
        released = release_embedding((canary_sums if canary_in else clean).clone(), SIGMA, noise())
        return float(released[:, canary_label] @ direction) - base

    assert direction.norm() == pytest.approx(1.0, abs=1e-4)
    return statistic


def expert_statistic(digits, seed: int = 0):
    """One DP-SGD step on the head at sample rate 1: the update projected on the canary's
    clipped gradient (the canary is mislabelled, so its gradient norm exceeds the clip),
    in units of the canary's own step lr C / (q N)."""
    from omegaconf import OmegaConf

    from dpgd.config import ExpertConfig, ModelConfig
    from dpgd.counts import ClassCounts
    from dpgd.data.bundle import ImageDataset
    from dpgd.expert import train_expert
    from dpgd.models import seeded_model

    clip, lr = 0.5, 0.1
    cfg = OmegaConf.structured(ExpertConfig(steps=1, sample_rate=1.0, clip_norm=clip, finetune="head", lr=lr))
    start = seeded_model(ModelConfig(width=8), 1, digits.num_classes, digits.image_size, 0)
    images, labels = digits.train_images[:30], digits.train_labels[:30]
    canary, canary_label = digits.train_images[30:31], (int(digits.train_labels[30]) + 1) % digits.num_classes

    def private_set(canary_in: bool) -> ImageDataset:
        return ImageDataset(
            "audit", torch.cat([images, canary]) if canary_in else images,
            torch.cat([labels, torch.tensor([canary_label])]) if canary_in else labels,
            digits.test_images[:10], digits.test_labels[:10], digits.class_names, digits.mean, digits.std)

    # The canary's clipped gradient on the head, as DP-SGD clips it.
    model = seeded_model(ModelConfig(width=8), 1, digits.num_classes, digits.image_size, 0)
    loss = torch.nn.functional.cross_entropy(model(canary), torch.tensor([canary_label]))
    grads = torch.autograd.grad(loss, list(model.classifier.parameters()))
    gradient = torch.cat([g.flatten() for g in grads])
    assert gradient.norm() > clip
    direction = gradient / gradient.norm()
    before = torch.cat([p.detach().flatten() for p in start.classifier.parameters()])
    counts = ClassCounts(torch.full((digits.num_classes,), 3.0), noisy=True, noise_std=1.0)
    step = lr * clip / round(1.0 * counts.total)  # SGD's first step moves by lr x (clipped sum + noise) / (q N)
    sources = itertools.count()

    def projection(canary_in: bool, sigma: float | None) -> float:
        expert = train_expert(cfg, start, private_set(canary_in), sigma, torch.device("cpu"), progress=False,
                              noise=NoiseSource.from_public_seed(1_000_000 * seed + next(sources)), counts=counts)
        after = torch.cat([p.detach().flatten() for p in expert.model.classifier.parameters()])
        return float((before - after) @ direction)  # SGD moves against the gradient

    base = projection(False, None)  # no noise (clipping kept)
    assert (projection(True, None) - base) / step == pytest.approx(1.0, rel=1e-3)

    def statistic(canary_in: bool) -> float:
        return (projection(canary_in, SIGMA) - base) / step

    return statistic


# Each DP release's canary game: a builder returning statistic(canary_in) -> float.
STATISTICS = {"counts": counts_statistic, "matcher": matcher_statistic, "dp_merf": dp_merf_statistic,
              "expert": expert_statistic}


def zero_opacus_noise(monkeypatch) -> None:
    """Test-only bug: DP-SGD adds no noise while the step hook still records the planned sigma."""
    import opacus.optimizers.optimizer as dp_optimizer

    real = dp_optimizer._generate_noise
    monkeypatch.setattr(dp_optimizer, "_generate_noise", lambda std, reference, **kw: 0 * real(std, reference, **kw))


@pytest.mark.slow
@pytest.mark.parametrize("mechanism", ["counts", "matcher", "dp_merf", "expert"])
def test_correct_mechanisms_pass_the_audit(mechanism, digits):
    statistic = STATISTICS[mechanism](digits)
    bound = audit_release(statistic, TRIALS, DELTA, game=mechanism)
    assert bound.epsilon_lower_bound <= claimed_epsilon(), bound
    check_audit(bound, claimed_epsilon())


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mechanism", "bug"),
    [
        ("counts", "noise multiplier scaled by 0.05"),
        ("dp_merf", "noise multiplier scaled by 0.05"),
        ("matcher", "the clean class sum released"),
        ("expert", "DP-SGD without noise"),
    ],
)
def test_each_injected_bug_fails_the_audit(mechanism, bug, digits, scaled_noise, monkeypatch):
    statistic = STATISTICS[mechanism](digits)
    if mechanism == "expert":
        zero_opacus_noise(monkeypatch)
    else:
        scaled_noise(0.0 if mechanism == "matcher" else 0.05)
    bound = audit_release(statistic, TRIALS, DELTA, game=f"{mechanism}: {bug}")
    assert bound.epsilon_lower_bound > claimed_epsilon() + 1.0, bound
    with pytest.raises(AuditFailure):
        check_audit(bound, claimed_epsilon())
    assert math.isfinite(bound.epsilon_lower_bound)


# --- the GDP audit: the same games, tested against mu = 1/sigma with a pre-set threshold ---------

GDP_TRIALS = {"counts": 500, "matcher": 500, "dp_merf": 500, "expert": 300}
GDP_MECHANISMS = ["counts", "matcher", "dp_merf", "expert"]


def halve_noise(mechanism: str, monkeypatch, scaled_noise) -> None:
    """Test-only bug: every noise draw at half its std, the ledger untouched."""
    if mechanism == "expert":
        import opacus.optimizers.optimizer as dp_optimizer

        real = dp_optimizer._generate_noise
        monkeypatch.setattr(dp_optimizer, "_generate_noise", lambda std, reference, **kw: real(0.5 * std, reference,
                                                                                                 **kw))
    else:
        scaled_noise(0.5)


@pytest.mark.privacy
@pytest.mark.parametrize("mechanism", GDP_MECHANISMS)
def test_correct_mechanisms_pass_the_gdp_audit(mechanism, digits):
    bound = audit_release_gdp(STATISTICS[mechanism](digits, seed=1), GDP_TRIALS[mechanism], 0.5, game=mechanism)
    assert bound.mu_lower_bound <= claimed_mu(), bound
    check_gdp_audit(bound, claimed_mu())


@pytest.mark.privacy
@pytest.mark.parametrize("mechanism", GDP_MECHANISMS)
def test_halved_noise_fails_the_gdp_audit(mechanism, digits, scaled_noise, monkeypatch):
    """Noise x0.5 (sigma 1 where the ledger says 2): the threshold audit above cannot see it."""
    statistic = STATISTICS[mechanism](digits, seed=2)
    halve_noise(mechanism, monkeypatch, scaled_noise)
    bound = audit_release_gdp(statistic, GDP_TRIALS[mechanism], 0.5, game=f"{mechanism}: noise x0.5")
    assert bound.mu_lower_bound > claimed_mu(), bound
    with pytest.raises(AuditFailure):
        check_gdp_audit(bound, claimed_mu())

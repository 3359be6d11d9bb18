"""Membership inference: ROC metrics, LiRA statistics, the attack on digits, resuming."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from dpgd.errors import ConfigError
from dpgd.mia import shadows
from dpgd.mia.lira import lira_scores, logit_scaled_confidence
from dpgd.mia.metrics import downsample_roc, roc_metrics
from dpgd.mia.design import membership_matrix
from dpgd.mia.shadows import SHADOW_DIR
from dpgd.mia.stage import ROC_FILE, run_attack
from dpgd.tracking import Tracker

# Small LiRA settings shared by the leaky and the DP run, so they face the same attack.
LIRA = ["logger=none", "mia=lira", "mia.num_shadow=8", "mia.population=200", "mia.epochs=100"]
HEADLINE = {"auc", "tpr_at_0.1pct_fpr", "tpr_at_1pct_fpr", "balanced_accuracy"}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class RecordingTracker(Tracker):
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def log(self, stage, metrics, step=None):
        self.calls += [("log", f"{stage}/{key}") for key in metrics]

    def log_images(self, key, images_01, per_row, caption=""):
        self.calls.append(("image", key))

    def log_table(self, key, columns, rows):
        self.calls.append(("table", f"{key}:{','.join(columns)}"))

    def summary(self, values):
        self.calls += [("summary", key) for key in values]






@pytest.fixture(scope="module")
def attack(tmp_path_factory, digits):
    """Run (and memoise) an attack for a tuple of overrides; returns (results, tracker, folder)."""
    from dpgd.config import compose

    cache: dict[tuple[str, ...], tuple[dict, RecordingTracker, Path]] = {}

    def _attack(*overrides: str):
        if overrides not in cache:
            cfg = compose(*overrides)
            folder = tmp_path_factory.mktemp("mia")
            tracker = RecordingTracker()
            results = run_attack(cfg, digits, torch.device("cpu"), folder, tracker, progress=False)
            cache[overrides] = (results, tracker, folder)
        return cache[overrides]

    return _attack


# ---------------------------------------------------------------- metrics


def brute_force_tpr_at(scores: np.ndarray, labels: np.ndarray, level: float) -> float:
    """Max TPR over every threshold 'score >= t' whose FPR <= level, by direct counting."""
    best = 0.0
    for threshold in np.concatenate([np.unique(scores), [np.inf]]):
        predicted = scores >= threshold
        fpr = (predicted & ~labels).sum() / (~labels).sum()
        if fpr <= level:
            best = max(best, (predicted & labels).sum() / labels.sum())
    return best


def test_roc_metrics_agree_with_sklearn_and_direct_counting():
    rng = np.random.default_rng(0)
    labels = rng.random(3000) < 0.5
    scores = rng.normal(size=3000) + 0.8 * labels
    scores[:50] = np.round(scores[:50])  # ties
    metrics = roc_metrics(scores, labels)
    assert metrics.auc == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    fpr, tpr, _ = roc_curve(labels, scores)
    for level in (0.001, 0.01):
        assert metrics.tpr_at_fpr[level] == pytest.approx(brute_force_tpr_at(scores, labels, level))
        assert metrics.tpr_at_fpr[level] == pytest.approx(tpr[fpr <= level].max())
    assert metrics.balanced_accuracy == pytest.approx(((tpr + 1 - fpr) / 2).max())
    assert metrics.positives + metrics.negatives == 3000


def test_roc_metrics_perfect_and_random_scores():
    labels = np.array([True] * 500 + [False] * 500)
    perfect = roc_metrics(labels.astype(float), labels)
    assert perfect.auc == 1.0 and perfect.tpr_at_fpr[0.001] == 1.0 and perfect.balanced_accuracy == 1.0
    inverted = roc_metrics(-labels.astype(float), labels)
    assert inverted.auc == 0.0 and inverted.tpr_at_fpr[0.01] == 0.0
    constant = roc_metrics(np.zeros(1000), labels)
    assert constant.auc == 0.5 and constant.tpr_at_fpr[0.01] == 0.0 and constant.balanced_accuracy == 0.5
    random = roc_metrics(np.random.default_rng(1).random(20000), np.random.default_rng(2).random(20000) < 0.5)
    assert abs(random.auc - 0.5) < 0.02 and random.tpr_at_fpr[0.01] < 0.03
    with pytest.raises(ValueError, match="both"):
        roc_metrics(np.zeros(4), np.ones(4, dtype=bool))


def test_downsampled_roc_is_short_and_never_above_the_curve():
    rng = np.random.default_rng(3)
    labels = rng.random(5000) < 0.5
    metrics = roc_metrics(rng.normal(size=5000) + labels, labels)
    fpr, tpr = downsample_roc(metrics.fpr, metrics.tpr, 200)
    assert len(fpr) <= 200 and fpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
    for x, y in zip(fpr, tpr):
        assert y <= metrics.tpr[metrics.fpr <= x].max()


# ---------------------------------------------------------------- LiRA statistics


def test_logit_scaled_confidence_is_stable_and_exact():
    logits = torch.tensor([[2.0, 0.5, -1.0], [300.0, 0.0, 0.0], [-300.0, 0.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 0])
    phi = logit_scaled_confidence(logits, labels)
    p = torch.softmax(logits[0], 0)[0]
    assert phi[0] == pytest.approx(float(torch.log(p / (1 - p))))
    assert phi[1] == pytest.approx(300 - math.log(2)) and phi[2] == pytest.approx(-300 - math.log(2))


def synthetic_phi(shift: float, runs: int = 8, records: int = 400, seed: int = 0):
    """phi = record difficulty + shift if member + run noise, with the attack's pair design."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(records) % 10
    membership = membership_matrix(labels, 10, runs, seed)
    difficulty = 3 * torch.randn(records, generator=generator)
    noise = torch.randn(runs, records, generator=generator)
    return difficulty + shift * membership + noise, membership


def test_lira_finds_a_membership_shift_and_is_unbiased_without_one():
    phi, membership = synthetic_phi(shift=2.0)
    assert (membership.sum(0) == 4).all()  # every record is a member in exactly half the runs
    scores = lira_scores(phi, membership)
    online = roc_metrics(scores.online, scores.membership)
    offline = roc_metrics(scores.offline, scores.membership)
    # Without calibration the per-record difficulty (sd 3) swamps the shift (loss-style).
    global_threshold = roc_metrics(phi, membership)
    assert online.auc > 0.85 and offline.auc > 0.8 and global_threshold.auc < 0.75
    # No signal: 3200 pairs give sd(AUC) ~ 0.01 (independent) to ~0.03 (per-record correlation).
    aucs = []
    for seed in range(3):
        phi, membership = synthetic_phi(shift=0.0, seed=seed)
        null = lira_scores(phi, membership)
        aucs += [roc_metrics(null.online, membership).auc, roc_metrics(null.offline, membership).auc]
    assert abs(float(np.mean(aucs)) - 0.5) < 0.03


# ---------------------------------------------------------------- the attack on digits


@pytest.mark.slow
def test_leaky_release_is_detected_and_logged(attack):
    results, tracker, folder = attack("experiment=leaky_baseline", "logger=none", "mia.log_to_wandb=true",
                                      "mia.audit=true")
    assert results["attack"] == "lira" and results["num_shadow"] == 8 and results["population"] == 200
    assert results["scored_pairs"] == 1600 and set(results["variants"]) == {"online", "offline"}
    assert HEADLINE <= set(results) and HEADLINE <= set(results["variants"]["offline"])
    assert results["auc"] == results["variants"]["online"]["auc"]
    assert len(results["roc"]["fpr"]) == len(results["roc"]["tpr"]) <= 200
    # Measured over seeds 0-2: AUC 0.78-0.79, TPR@1% 0.14-0.18, TPR@0.1% 0.02-0.08.
    assert results["auc"] > 0.7
    assert results["tpr_at_1pct_fpr"] > 0.05
    assert (folder / ROC_FILE).stat().st_size > 1000
    assert len(list((folder / SHADOW_DIR).glob("shadow_*.pt"))) == 8
    # Asked for (mia.log_to_wandb=true): only the ROC figure goes to the tracker as an image.
    assert [key for kind, key in tracker.calls if kind == "image"] == ["mia/roc_curve"]
    assert ("table", "mia/roc:fpr,tpr,variant") in tracker.calls
    assert {("log", "mia/auc"), ("log", "mia/offline/tpr_at_0.1pct_fpr"), ("summary", "mia/auc")} <= set(tracker.calls)
    # The audit (mia.audit=true): copying members is far from epsilon 1 (measured 2.88 at 95 %).
    audit = results["audit"]
    assert audit["epsilon_lower_bound"] > 1.0 and audit["confidence"] == 0.95
    assert audit["trials_in"] + audit["trials_out"] == 800 and audit["passed"]  # proven epsilon: inf
    assert ("summary", "mia/epsilon_lower_bound") in tracker.calls


@pytest.mark.slow
def test_dp_release_stays_near_chance_and_below_the_leaky_one(attack):
    leaky, _, _ = attack("experiment=leaky_baseline", "logger=none", "mia.log_to_wandb=true", "mia.audit=true")
    dp, _, _ = attack("experiment=ndpdc", "epsilon=1", "matcher.iterations=50", *LIRA, "mia.audit=true")
    assert (dp["num_shadow"], dp["population"], dp["epochs"]) == (leaky["num_shadow"], leaky["population"], 100)
    # 1600 scored pairs (800 members, 800 non-members): under no leakage sd(AUC) is 0.014 for
    # independent pairs and at most sqrt(8) x that = 0.04 when a record's 8 pairs were
    # perfectly correlated; 0.1 is > 2.4 sd even then (measured: 0.49).
    for variant in dp["variants"].values():
        assert abs(variant["auc"] - 0.5) < 0.1
    # epsilon-DP bounds TPR <= e^eps FPR + delta = 2.7% at 1% FPR; 5% leaves room for the
    # binomial error of 800 members (sd 0.6%) and the max over thresholds.
    assert dp["tpr_at_1pct_fpr"] < 0.05
    assert leaky["tpr_at_1pct_fpr"] > dp["tpr_at_1pct_fpr"] + 0.05
    assert leaky["auc"] > dp["auc"] + 0.15
    # The audit's lower bound stays at or below the proof, and below the leaky control's.
    assert dp["audit"]["epsilon_lower_bound"] <= 1.0 and dp["audit"]["passed"]
    assert dp["audit"]["proven_epsilon"] <= 1.0
    assert leaky["audit"]["epsilon_lower_bound"] > dp["audit"]["epsilon_lower_bound"] + 1.0


def test_interrupted_attack_resumes_with_only_the_missing_run(tmp_path, compose, digits, monkeypatch):
    overrides = ["experiment=leaky_baseline", "logger=none", "mia.num_shadow=4", "mia.population=100",
                 "ipc=5", "mia.epochs=10"]
    first = run_attack(compose(*overrides), digits, torch.device("cpu"), tmp_path, Tracker(), progress=False)
    assert first["runs_computed"] == 4
    (tmp_path / SHADOW_DIR / "shadow_2.pt").unlink()
    calls: list[int] = []
    real_run = shadows.run_shadow

    def counting(context, run, membership):
        calls.append(run)
        return real_run(context, run, membership)

    monkeypatch.setattr(shadows, "run_shadow", counting)
    again = run_attack(compose(*overrides), digits, torch.device("cpu"), tmp_path, Tracker(), progress=False)
    assert calls == [2] and again["runs_computed"] == 1
    for key in (*HEADLINE, "variants", "run_test_acc_mean"):
        assert again[key] == first[key]
    # A setting that changes the runs' outputs invalidates every cached run.
    calls.clear()
    run_attack(compose(*overrides[:-1], "mia.epochs=5"), digits, torch.device("cpu"), tmp_path, Tracker(),
               progress=False)
    assert sorted(calls) == [0, 1, 2, 3]


def test_parallel_runs_fill_the_same_cache(tmp_path, compose, digits):
    overrides = ["experiment=leaky_baseline", "logger=none", "mia.num_shadow=4", "mia.population=100",
                 "ipc=5", "mia.epochs=5"]
    parallel = run_attack(compose(*overrides, "mia.workers=2"), digits, torch.device("cpu"), tmp_path, Tracker(),
                          progress=False)
    assert parallel["runs_computed"] == 4
    in_process = run_attack(compose(*overrides), digits, torch.device("cpu"), tmp_path, Tracker(), progress=False)
    assert in_process["runs_computed"] == 0 and in_process["auc"] == parallel["auc"]


def test_loss_attack_returns_the_keys(attack):
    results, _, folder = attack("experiment=leaky_baseline", "logger=none", "mia=loss", "mia.population=200",
                                "mia.epochs=50", "mia.eval_models=1")
    assert results["attack"] == "loss" and results["num_shadow"] == 0 and results["scored_pairs"] == 200
    assert HEADLINE <= set(results) and set(results["variants"]) == {"loss"}
    assert set(results["roc"]) == {"fpr", "tpr"} and (folder / ROC_FILE).is_file()
    # The leaky control copies the members into the release: the attack must see it. With
    # 100 members and 100 non-members, AUC > 0.567 rejects "no signal" at the one-sided 5 %
    # level (null sd 0.041); measured 0.606 (seed 0; seeds 1, 2: 0.550, 0.587). An
    # inverted or a random score fails.
    assert results["auc"] > 0.567


def test_none_returns_none(compose, digits, tmp_path):
    assert run_attack(compose("logger=none"), digits, torch.device("cpu"), tmp_path, Tracker()) is None
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["mia=lira", "mia.num_shadow=5"], "even number >= 4"),
        (["mia=lira", "mia.num_shadow=4", "mia.global_variance=false"], "num_shadow>=6"),
        (["experiment=leaky_baseline", "mia.population=100"], "population>=200"),
        (["mia=lira", "mia.population=10000"], "population<="),
        (["mia=lira", "mia.population=10"], "population>=20"),
    ],
)
def test_bad_settings_are_refused(compose, digits, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        run_attack(compose("logger=none", *overrides), digits, torch.device("cpu"), tmp_path, Tracker())

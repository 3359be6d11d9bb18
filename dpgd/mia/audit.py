"""Empirical privacy audit: an epsilon LOWER bound from a distinguishing game.

(epsilon, delta)-DP bounds the error rates of every test that tells two neighbouring data
sets apart: ``TPR <= e^eps FPR + delta`` and ``1 - FPR <= e^eps (1 - TPR) + delta``
(Kairouz, Oh & Viswanath 2015). Observed rates, with Clopper-Pearson confidence bounds,
turn an attack into a statistical lower bound on the epsilon the *implementation*
achieves (Jagielski, Ullman & Oprea 2020; Nasr et al. 2021). A lower bound above the
proven upper bound means the code does not do what its ledger says: a bug. A lower bound
below it proves nothing about the guarantee; it is a test of the code, not a tighter
epsilon.

The threshold is chosen on one half of the trials and the bound computed on the other,
so choosing the best threshold does not inflate it. Each rate gets a one-sided bound at
``(1 - confidence) / 2``: both hold together with probability >= ``confidence``.

A threshold count needs rare events to certify a large epsilon at a small delta: with
150 trials per side it cannot tell one Gaussian release at sigma 2 (epsilon 2.0) from
one at sigma 1 (epsilon 4.4). :func:`audit_release_gdp` asks the sharper question the
ledger's record makes for a single Gaussian release: is it mu-GDP with mu = sensitivity
/ (sigma x sensitivity) = 1/sigma (Dong, Roth & Su 2022)? Every mu-GDP mechanism has, for
every test, Phi^-1(TPR) - Phi^-1(FPR) <= mu; at moderate error rates a few hundred
trials measure that difference well (docs/privacy-audit.md: measured power).

Two games use the threshold bound:

* :func:`audit_release`: one DP release run many times with and without a canary record,
  each trial with fresh noise, scored by projecting the release on the canary's
  contribution (the Neyman-Pearson test for Gaussian noise). Trials are independent, so
  the bound is rigorous at its confidence; the bug-injection tests use it per mechanism.
* :func:`audit_membership`: the membership attack's (run, record) scores
  (``mia.audit=true``). Pairs of one run share its noise, so they are not independent
  trials: there the bound is a diagnostic, as in most end-to-end audits.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
from scipy.stats import beta, norm

# Candidate thresholds tried on the selection half (quantiles of its scores).
MAX_THRESHOLDS = 200


class AuditFailure(RuntimeError):
    """The audit's lower bound exceeds the proven epsilon: the implementation leaks more
    than its ledger says. Not a user error: a bug to report."""


@dataclass(frozen=True)
class AuditBound:
    epsilon_lower_bound: float
    confidence: float
    delta: float
    # Trials in the held-out half the bound is computed on (with / without the target).
    trials_in: int
    trials_out: int
    threshold: float
    tpr_lower: float
    fpr_upper: float
    game: str = ""

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "AuditBound":
        return cls(**{name: data[name] for name in cls.__dataclass_fields__})


def clopper_pearson_lower(successes: np.ndarray, trials: int, alpha: float) -> np.ndarray:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial rate."""
    k = np.asarray(successes, dtype=float)
    return np.where(k > 0, beta.ppf(alpha, np.maximum(k, 1e-12), trials - k + 1), 0.0)


def clopper_pearson_upper(successes: np.ndarray, trials: int, alpha: float) -> np.ndarray:
    """One-sided (1 - alpha) Clopper-Pearson upper bound on a binomial rate."""
    k = np.asarray(successes, dtype=float)
    return np.where(k < trials, beta.ppf(1 - alpha, k + 1, np.maximum(trials - k, 1e-12)), 1.0)


def _epsilons(tp: np.ndarray, n_in: int, fp: np.ndarray, n_out: int, delta: float, alpha: float):
    """The DP lower bound at each threshold's counts: (epsilon, tpr_lower, fpr_upper)."""
    tpr_lo = clopper_pearson_lower(tp, n_in, alpha / 2)
    fpr_hi = clopper_pearson_upper(fp, n_out, alpha / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        positive = np.log(np.clip(tpr_lo - delta, 1e-300, None) / np.clip(fpr_hi, 1e-300, None))
        negative = np.log(np.clip(1 - fpr_hi - delta, 1e-300, None) / np.clip(1 - tpr_lo, 1e-300, None))
    positive = np.where(tpr_lo > delta, positive, 0.0)
    negative = np.where(1 - fpr_hi > delta, negative, 0.0)
    return np.maximum(0.0, np.maximum(positive, negative)), tpr_lo, fpr_hi


def _counts_above(scores_in: np.ndarray, scores_out: np.ndarray, thresholds: np.ndarray):
    """Per threshold t: how many scores of each side exceed t (guess "in" when score > t)."""
    tp = len(scores_in) - np.searchsorted(np.sort(scores_in), thresholds, side="right")
    fp = len(scores_out) - np.searchsorted(np.sort(scores_out), thresholds, side="right")
    return tp, fp


def epsilon_lower_bound(
    select_in: np.ndarray,
    select_out: np.ndarray,
    eval_in: np.ndarray,
    eval_out: np.ndarray,
    delta: float,
    confidence: float = 0.95,
    game: str = "",
) -> AuditBound:
    """The threshold that maximises the bound on the selection scores, applied to the
    evaluation scores (higher score = "the target is in")."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    select_in, select_out = np.asarray(select_in, float), np.asarray(select_out, float)
    eval_in, eval_out = np.asarray(eval_in, float), np.asarray(eval_out, float)
    if min(len(select_in), len(select_out), len(eval_in), len(eval_out)) == 0:
        raise ValueError("the audit needs trials with and without the target in both halves")
    alpha = 1 - confidence
    pooled = np.concatenate([select_in, select_out])
    thresholds = np.unique(np.quantile(pooled, np.linspace(0, 1, MAX_THRESHOLDS)))
    tp, fp = _counts_above(select_in, select_out, thresholds)
    chosen = float(thresholds[int(np.argmax(_epsilons(tp, len(select_in), fp, len(select_out), delta, alpha)[0]))])
    tp, fp = _counts_above(eval_in, eval_out, np.array([chosen]))
    eps, tpr_lo, fpr_hi = _epsilons(tp, len(eval_in), fp, len(eval_out), delta, alpha)
    return AuditBound(float(eps[0]), confidence, delta, len(eval_in), len(eval_out), chosen,
                      float(tpr_lo[0]), float(fpr_hi[0]), game)


def _play(statistic: Callable[[bool], float], trials: int) -> tuple[np.ndarray, np.ndarray]:
    """The canary game: ``trials`` releases with the target, then ``trials`` without."""
    if trials < 4:
        raise ValueError(f"an audit needs at least 4 trials per side, got {trials}")
    scores_in = np.array([float(statistic(True)) for _ in range(trials)])
    scores_out = np.array([float(statistic(False)) for _ in range(trials)])
    return scores_in, scores_out


def audit_release(
    statistic: Callable[[bool], float],
    trials: int,
    delta: float,
    confidence: float = 0.95,
    game: str = "canary",
) -> AuditBound:
    """Run ``statistic(with_canary)`` ``trials`` times per side (each call one release with
    fresh noise) and bound epsilon: the first half of each side selects the threshold, the
    second half is the evidence."""
    scores_in, scores_out = _play(statistic, trials)
    half = trials // 2
    return epsilon_lower_bound(scores_in[:half], scores_out[:half], scores_in[half:], scores_out[half:],
                               delta, confidence, game)


@dataclass(frozen=True)
class GdpBound:
    """A lower bound on mu in mu-GDP from one game, at ``confidence``."""

    mu_lower_bound: float
    confidence: float
    trials_in: int
    trials_out: int
    threshold: float
    tpr_lower: float
    fpr_upper: float
    game: str = ""

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def gdp_lower_bound(scores_in: np.ndarray, scores_out: np.ndarray, threshold: float, confidence: float = 0.95,
                    game: str = "") -> GdpBound:
    """mu >= Phi^-1(TPR_lower) - Phi^-1(FPR_upper) for the test "score > ``threshold``".

    The threshold must be fixed before the scores are drawn (every trial is then evidence):
    with probability >= ``confidence`` both Clopper-Pearson bounds hold, and then any mu-GDP
    mechanism has mu at least this value. 0 when the bounds show nothing.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    scores_in, scores_out = np.asarray(scores_in, float), np.asarray(scores_out, float)
    if min(len(scores_in), len(scores_out)) == 0:
        raise ValueError("the audit needs trials with and without the target")
    alpha = 1 - confidence
    tpr_lo = float(clopper_pearson_lower(np.array([(scores_in > threshold).sum()]), len(scores_in), alpha / 2)[0])
    fpr_hi = float(clopper_pearson_upper(np.array([(scores_out > threshold).sum()]), len(scores_out), alpha / 2)[0])
    mu = float(norm.ppf(tpr_lo) - norm.ppf(fpr_hi)) if tpr_lo > 0 and fpr_hi < 1 else 0.0
    return GdpBound(max(mu, 0.0), confidence, len(scores_in), len(scores_out), float(threshold), tpr_lo, fpr_hi,
                    game)


def audit_release_gdp(
    statistic: Callable[[bool], float],
    trials: int,
    threshold: float,
    confidence: float = 0.95,
    game: str = "canary",
) -> GdpBound:
    """Run ``statistic(with_canary)`` ``trials`` times per side (each call one release with
    fresh noise) and bound mu with the pre-set ``threshold`` (for a score normalised so the
    canary moves it by 1 and the claimed noise std is sigma, the midpoint 0.5)."""
    scores_in, scores_out = _play(statistic, trials)
    return gdp_lower_bound(scores_in, scores_out, threshold, confidence, game)


def check_gdp_audit(bound: GdpBound, claimed_mu: float) -> None:
    """Fail loudly when the lower bound on mu exceeds the mu the ledger claims."""
    if bound.mu_lower_bound > claimed_mu:
        raise AuditFailure(
            f"privacy audit failed: the empirical lower bound mu >= {bound.mu_lower_bound:.3g} (confidence "
            f"{bound.confidence:g}, {bound.trials_in}+{bound.trials_out} trials, {bound.game}) exceeds the claimed "
            f"mu {claimed_mu:.4g} (one Gaussian release: sensitivity / noise std). The implementation releases "
            "more than its ledger records: this is a bug."
        )


def audit_membership(
    scores: torch.Tensor,
    membership: torch.Tensor,
    delta: float,
    confidence: float,
    seed: int,
) -> AuditBound:
    """The bound from a membership attack's (run, record) scores, both ``(K, n)``: records are
    split in two halves (a seeded, public draw), one to choose the threshold, one to bound."""
    scores = scores.detach().cpu().double()
    members = membership.detach().cpu().bool()
    records = scores.shape[1]
    order = torch.randperm(records, generator=torch.Generator().manual_seed(seed))
    select, held_out = order[: records // 2], order[records // 2 :]

    def sides(index: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        part, inside = scores[:, index], members[:, index]
        return part[inside].numpy(), part[~inside].numpy()

    select_in, select_out = sides(select)
    eval_in, eval_out = sides(held_out)
    return epsilon_lower_bound(select_in, select_out, eval_in, eval_out, delta, confidence,
                               game="membership (run, record) pairs")


def check_audit(bound: AuditBound, proven_epsilon: float) -> None:
    """Fail loudly when the lower bound exceeds the proven upper bound."""
    if math.isfinite(proven_epsilon) and bound.epsilon_lower_bound > proven_epsilon:
        raise AuditFailure(
            f"privacy audit failed: the empirical lower bound epsilon >= {bound.epsilon_lower_bound:.3g} "
            f"(confidence {bound.confidence:g}, {bound.trials_in}+{bound.trials_out} trials, {bound.game}) "
            f"exceeds the proven epsilon {proven_epsilon:.4g}. The implementation releases more than its "
            "ledger records: this is a bug; please report it with the run's private/mia.json."
        )

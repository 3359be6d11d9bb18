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

Two games use it:

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
from scipy.stats import beta

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
    if trials < 4:
        raise ValueError(f"an audit needs at least 4 trials per side, got {trials}")
    scores_in = np.array([float(statistic(True)) for _ in range(trials)])
    scores_out = np.array([float(statistic(False)) for _ in range(trials)])
    half = trials // 2
    return epsilon_lower_bound(scores_in[:half], scores_out[:half], scores_in[half:], scores_out[half:],
                               delta, confidence, game)


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

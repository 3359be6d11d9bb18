"""Pure privacy analysis: epsilon of a list of mechanism records.

Nothing here holds state: every call builds fresh privacy loss distributions (or RDP
curves) from the records.

Reported epsilon: Google's dp-accounting PLD accountant (privacy loss distributions,
Koskela et al. / Doroshenko et al. "connect the dots"), the field's reference numerical
accountant. Each record ``(sigma, q, steps)`` is a Poisson-subsampled Gaussian under
add/remove adjacency, self-composed ``steps`` times; the records are composed and
epsilon read at ``delta``. The PESSIMISTIC estimate is reported: an upper bound on
epsilon at any discretisation (probability mass that is rounded or truncated moves
towards more privacy loss). At the default discretisation it exceeds the exact value by
well under 0.1% (docs/performance.md: against finer grids and opacus's PRV). RDP (opacus) is the
independent, looser cross-check: both bound the same epsilon from above, so RDP coming
out more than ``DISAGREEMENT_REL`` below PLD can only be a bug.

Discretisation: the privacy loss is rounded to multiples of ``interval``; cost grows with
(range of the privacy loss) / interval, and the range grows with epsilon. The pessimistic
rounding of every composed step adds up: measured at epsilon ~1, the bound's relative
excess is about 1.2 T interval^2 (T = total steps: 12 % at T = 1000, interval 1e-2; 1.25 %
at T = 10^4, interval 1e-3). The interval is therefore the smaller of ``INTERVAL_REL`` x
the (cheap, coarse) RDP epsilon and ``INTERVAL_STEPS / sqrt(T)`` (excess ~1e-4), clipped
to ``[INTERVAL_MIN, INTERVAL_MAX]``: ~0.05-0.3 s per evaluation for the presets.

Guards: an RDP epsilon above ``EPSILON_MAX`` (tiny noise or huge step counts: nothing
there is a meaningful guarantee, and the distributions would span millions of points)
raises :class:`AccountingError` before any distribution is built, and so does a failure
inside dp-accounting. :meth:`PrivacyLedger.report` then reports the RDP bound and says why.

Records with equal ``(sigma, q)`` are merged and sorted before composing, so the result
does not depend on declaration order or on how a run was split into records.
"""

from __future__ import annotations

import math
import warnings
from functools import lru_cache
from typing import Iterable, Sequence

import numpy as np
from dp_accounting.pld import privacy_loss_distribution as pld_lib
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis import rdp as rdp_analysis
from scipy.optimize import brentq
from scipy.stats import norm

from dpgd.errors import ConfigError
from dpgd.privacy.mechanisms import SubsampledGaussian

__all__ = [
    "rdp_sigma",
    "AccountingError",
    "ACCOUNTANTS",
    "compose_epsilon",
    "history",
    "pld_epsilon",
    "pld_interval",
    "rdp_epsilon",
    "gaussian_delta",
    "gaussian_mu",
    "clt_sigma",
]

ACCOUNTANTS = ("pld", "rdp")

# interval = INTERVAL_REL * (RDP epsilon), clipped: a relative discretisation keeps the
# distributions' size (and the bound's relative accuracy) near constant over epsilon.
INTERVAL_REL = 1e-4
INTERVAL_STEPS = 0.009  # interval <= 0.009 / sqrt(T): relative excess 1.2 T interval^2 <= 1e-4
INTERVAL_MIN = 1e-6
INTERVAL_MAX = 1e-3
# Beyond this (RDP) epsilon nothing is a meaningful guarantee and the distributions would
# span millions of points: refused as an AccountingError (the ledger falls back to RDP).
EPSILON_MAX = 1000.0
# RDP below PLD by more than this fraction of PLD is a bug (PLD's own overestimate at the
# default discretisation is ~1e-4 of epsilon; RDP's is a few percent above the truth).
DISAGREEMENT_REL = 0.01

# RDP orders for the reported RDP epsilon: opacus's defaults plus larger orders, which
# tighten the bound for small epsilon (opacus warns when the optimum is its largest order).
RDP_ORDERS = tuple(RDPAccountant.DEFAULT_ALPHAS) + (80, 96, 128, 192, 256)
# Cheap orders for the scale of epsilon (the discretisation and the guard): a subset of
# opacus's defaults. Fractional orders cost O(sigma) terms each in opacus for q < 1, so they
# are only used for sigma <= _FRACTIONAL_SIGMA_MAX, where the optimal order can be below 2.
_COARSE_ORDERS = tuple(
    a for a in RDPAccountant.DEFAULT_ALPHAS
    if any(abs(a - b) < 1e-9 for b in (1.2, 1.5, 1.8, 2, 2.5, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 63))
)
_FRACTIONAL_SIGMA_MAX = 10.0

History = list[tuple[float, float, int]]


class AccountingError(RuntimeError):
    """The PLD accountant cannot evaluate this history (not a user error by itself)."""


def _check_delta(delta: float) -> float:
    delta = float(delta)
    if not (0 < delta < 1):
        raise ConfigError(f"delta must be in (0, 1), got {delta!r}")
    return delta


def _as_mechanisms(mechanisms: Iterable[SubsampledGaussian]) -> tuple[SubsampledGaussian, ...]:
    mechs = tuple(mechanisms)
    for m in mechs:
        if not isinstance(m, SubsampledGaussian):
            raise TypeError(f"expected SubsampledGaussian records, got {type(m).__name__}")
    return mechs


def history(mechanisms: Iterable[SubsampledGaussian]) -> History:
    """``[(sigma, q, steps)]``: equal (sigma, q) merged, sorted."""
    steps: dict[tuple[float, float], int] = {}
    for m in _as_mechanisms(mechanisms):
        key = (m.noise_multiplier, m.sample_rate)
        steps[key] = steps.get(key, 0) + m.steps
    return [(sigma, q, n) for (sigma, q), n in sorted(steps.items(), key=lambda kv: (kv[0][1], kv[0][0]))]


def _rdp_per_step(hist: History, orders: Sequence[float], cheap: bool = False) -> list[np.ndarray]:
    """Per-step RDP curves; ``cheap`` leaves out (as +inf) slow fractional orders."""
    out = []
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        for sigma, q, _ in hist:
            use = [not (cheap and q < 1 and sigma > _FRACTIONAL_SIGMA_MAX and a != int(a)) for a in orders]
            curve = np.full(len(orders), np.inf)
            sub = [a for a, u in zip(orders, use) if u]
            curve[np.asarray(use)] = rdp_analysis.compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=sub)
            out.append(curve)
    return out


def _rdp_to_eps(rdp: np.ndarray, orders: Sequence[float], delta: float) -> float:
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # "optimal order is the largest alpha" etc.
        eps, _ = rdp_analysis.get_privacy_spent(orders=list(orders), rdp=rdp, delta=delta)
    eps = float(eps)
    return max(eps, 0.0) if not math.isnan(eps) else math.inf


def _coarse_rdp_epsilon(hist: History, delta: float) -> float:
    """RDP epsilon on cheap orders: the scale of epsilon (never below the reported RDP bound)."""
    if not hist:
        return 0.0
    per_step = _rdp_per_step(hist, _COARSE_ORDERS, cheap=True)
    total = sum((r * n for r, (_, _, n) in zip(per_step, hist)), np.zeros(len(_COARSE_ORDERS)))
    return _rdp_to_eps(total, _COARSE_ORDERS, delta)


def rdp_epsilon(mechanisms: Iterable[SubsampledGaussian], delta: float) -> float:
    """RDP epsilon (opacus analysis, extended orders); a valid but looser upper bound."""
    delta = _check_delta(delta)
    accountant = RDPAccountant()
    accountant.history = history(mechanisms)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # "optimal order is the largest alpha"
        eps, _ = accountant.get_privacy_spent(delta=delta, alphas=list(RDP_ORDERS))
    eps = float(eps)
    return max(eps, 0.0) if not math.isnan(eps) else math.inf


# Integer orders: ~20x cheaper per evaluation than the fractional ones, enough to compare
# noise multipliers (rdp_sigma), never used for a reported epsilon.
_SIGMA_ORDERS = tuple(range(2, 65)) + (80, 96, 128, 192, 256)


@lru_cache(maxsize=4096)
def rdp_sigma(epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """The noise multiplier at which ``steps`` Poisson-subsampled Gaussians at
    ``sample_rate`` spend ``epsilon`` (opacus's RDP analysis at integer orders, 1 %
    tolerance). For choosing between settings (e.g. iteration counts) only: the plan
    calibrates what runs with PLD."""

    def excess(log_sigma: float) -> float:
        rdp = rdp_analysis.compute_rdp(q=sample_rate, noise_multiplier=math.exp(log_sigma), steps=steps,
                                       orders=_SIGMA_ORDERS)
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            spent, _ = rdp_analysis.get_privacy_spent(orders=_SIGMA_ORDERS, rdp=rdp, delta=delta)
        return math.log(max(float(spent), 1e-300)) - math.log(epsilon)

    return math.exp(brentq(excess, math.log(1e-2), math.log(1e4), xtol=0.01))


def _interval_for(hist: History, scale: float) -> float:
    """The default discretisation for a history whose (coarse RDP) epsilon is ``scale``."""
    steps_bound = INTERVAL_STEPS / math.sqrt(max(sum(n for _, _, n in hist), 1))
    interval = min(INTERVAL_REL * scale, steps_bound) if math.isfinite(scale) else steps_bound
    return float(min(max(interval, INTERVAL_MIN), INTERVAL_MAX))


def pld_interval(mechanisms: Iterable[SubsampledGaussian], delta: float) -> float:
    """The discretisation used when none is given (see the module docstring)."""
    hist = history(mechanisms)
    return _interval_for(hist, _coarse_rdp_epsilon(hist, _check_delta(delta)))


def _pld_epsilon(hist: History, delta: float, interval: float | None) -> float:
    if not hist:
        return 0.0
    scale = _coarse_rdp_epsilon(hist, delta)
    if interval is None:
        interval = _interval_for(hist, scale)
    if not scale <= EPSILON_MAX:
        raise AccountingError(
            f"epsilon of history (sigma, q, steps)={hist} at delta={delta:g} is about {scale:.3g} (RDP), "
            f"above {EPSILON_MAX:g}: the noise is too small or the steps too many for any meaningful guarantee"
        )
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            composed = None
            for sigma, q, steps in hist:
                one = pld_lib.from_gaussian_mechanism(
                    standard_deviation=sigma, sampling_prob=q, value_discretization_interval=interval,
                    pessimistic_estimate=True, use_connect_dots=True,
                )
                one = one.self_compose(steps) if steps > 1 else one
                composed = one if composed is None else composed.compose(one)
            eps = float(composed.get_epsilon_for_delta(delta))
    except (ValueError, RuntimeError, IndexError, ArithmeticError, MemoryError) as exc:
        raise AccountingError(
            f"dp-accounting PLD failed for history (sigma, q, steps)={hist} at delta={delta:g}, "
            f"interval={interval:g}: {type(exc).__name__}: {exc}"
        ) from exc
    if not math.isfinite(eps):
        raise AccountingError(
            f"dp-accounting PLD returned {eps} for history (sigma, q, steps)={hist} at delta={delta:g}"
        )
    return max(eps, 0.0)


def _checked_interval(interval: float | None) -> float | None:
    if interval is None:
        return None
    interval = float(interval)
    if not (0 < interval <= 1):
        raise ConfigError(f"the PLD discretisation interval must be in (0, 1], got {interval!r}")
    return interval


def pld_epsilon(mechanisms: Iterable[SubsampledGaussian], delta: float, interval: float | None = None) -> float:
    """The reported epsilon: PLD's pessimistic estimate, an upper bound; raises
    :class:`AccountingError`. ``interval``: the discretisation (default :func:`pld_interval`;
    searches pass a coarser one, still an upper bound, slightly looser)."""
    delta = _check_delta(delta)
    hist = history(mechanisms)
    return _pld_epsilon(hist, delta, _checked_interval(interval))


def compose_epsilon(
    mechanisms: Iterable[SubsampledGaussian],
    delta: float,
    accountant: str = "pld",
    *,
    interval: float | None = None,
) -> float:
    """Epsilon of all records composed, at ``delta``; 0.0 for no records.

    ``accountant="pld"``: dp-accounting's pessimistic PLD bound (``interval`` default: see
    :func:`pld_interval`); raises :class:`AccountingError` when it cannot be evaluated.
    ``accountant="rdp"``: opacus RDP bound.
    """
    if accountant == "pld":
        return pld_epsilon(mechanisms, delta, interval)
    if accountant == "rdp":
        return rdp_epsilon(mechanisms, delta)
    raise ConfigError(f"unknown accountant {accountant!r}; use one of {ACCOUNTANTS}")


# --- Gaussian differential privacy: closed forms used only for starting guesses -------


def gaussian_delta(epsilon: float, mu: float) -> float:
    """delta(epsilon) of mu-GDP (Dong, Roth & Su; = Balle & Wang's analytic Gaussian)."""
    if mu <= 0:
        return 0.0
    a = -epsilon / mu
    return float(norm.cdf(a + mu / 2) - math.exp(min(epsilon + norm.logcdf(a - mu / 2), 0.0)))


def gaussian_mu(epsilon: float, delta: float) -> float:
    """mu of the mu-GDP mechanism that is exactly (epsilon, delta)-DP."""
    lo, hi = 1e-12, 1.0
    while gaussian_delta(epsilon, hi) < delta:
        hi *= 2
        if hi > 1e6:
            return hi
    if gaussian_delta(epsilon, lo) >= delta:
        return lo
    return float(brentq(lambda m: gaussian_delta(epsilon, m) - delta, lo, hi, xtol=1e-14, rtol=1e-10))


def clt_sigma(mu: float, sample_rate: float, steps: int) -> float:
    """sigma of ``steps`` subsampled Gaussians at mu: exact for q = 1, the CLT approximation
    mu = q sqrt(T (e^{1/sigma^2} - 1)) inverted otherwise (a starting guess only)."""
    if sample_rate >= 1:
        return math.sqrt(steps) / mu
    return 1.0 / math.sqrt(math.log1p(mu**2 / (sample_rate**2 * steps)))

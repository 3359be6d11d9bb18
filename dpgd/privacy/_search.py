"""The searches behind :func:`dpgd.privacy.plan.plan_budget`: a bracketed 1-D root solver and
per-component epsilon-vs-sigma curves with a cache of PLD evaluations.

Speed: single-component searches evaluate PLD on a coarse discretisation (interval = 0.1%
of the component's target, at most 0.03 / sqrt(steps): still an upper bound, its excess
~1.2 steps interval^2 <= 0.1 %; see :mod:`.analysis`),
warm-started from the Gaussian-DP closed form (exact for sample rate 1, a CLT guess
otherwise). Only the composed epsilon is evaluated at reporting accuracy, a few times (by
the planner).

Kept apart from the plan so the plan reads as policy (shares, bounds, checks) and this
module as numerics; the sigma bounds are the plan's and come in as arguments.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

from scipy.optimize import brentq

from dpgd.errors import BudgetError
import dpgd.privacy.analysis as analysis
from dpgd.privacy.mechanisms import SubsampledGaussian

if TYPE_CHECKING:
    from dpgd.privacy.plan import ComponentRequest

_COARSE_REL = 1e-3  # coarse PLD discretisation interval as a fraction of a component's target
_COARSE_STEPS = 0.03  # ... and at most this / sqrt(steps): excess 1.2 steps interval^2 <= 1e-3
_COARSE_MIN, _COARSE_MAX = 1e-6, 1e-2
_MAX_EVALS = 60


# --- one-dimensional search ----------------------------------------------------------


class OutOfRange(Exception):
    """The window is not reachable inside [x_min, x_max]; ``side`` says which end failed."""

    def __init__(self, side: str) -> None:
        super().__init__(side)
        self.side = side  # "low": too high even at x_min; "high": too low even at x_max


def solve_increasing(
    fun: Callable[[float], float],
    x0: float,
    y_lo: float,
    y_hi: float,
    x_min: float,
    x_max: float,
    slope: float = 1.0,
) -> tuple[float, float]:
    """Find x in [x_min, x_max] with y_lo <= fun(x) <= y_hi, for increasing ``fun``.

    ``fun`` may return -inf/+inf (too low/too high to evaluate). Secant steps, bracketed,
    with a bisection whenever two steps in a row land on the same side.
    """
    y_mid = 0.5 * (y_lo + y_hi)
    below: tuple[float, float] | None = None  # largest x with y < y_lo
    above: tuple[float, float] | None = None  # smallest x with y > y_hi
    prev: tuple[float, float] | None = None
    sides: list[str] = []
    x = min(max(x0, x_min), x_max)
    for _ in range(_MAX_EVALS):
        y = fun(x)
        if y_lo <= y <= y_hi:
            return x, y
        if y < y_lo:
            if x >= x_max:
                raise OutOfRange("high")
            below = (x, y) if below is None or x > below[0] else below
            sides.append("below")
        else:
            if x <= x_min:
                raise OutOfRange("low")
            above = (x, y) if above is None or x < above[0] else above
            sides.append("above")
        if below is not None and above is not None:
            (xb, yb), (xa, ya) = below, above
            same_side = len(sides) >= 2 and sides[-1] == sides[-2]
            if math.isfinite(yb) and math.isfinite(ya) and not same_side:
                x_new = xb + (y_mid - yb) * (xa - xb) / (ya - yb)
                width = xa - xb
                x_new = min(max(x_new, xb + 0.01 * width), xa - 0.01 * width)
            else:
                x_new = 0.5 * (xa + xb)
        else:
            s = slope
            if prev is not None and math.isfinite(prev[1]) and math.isfinite(y) and x != prev[0]:
                est = (y - prev[1]) / (x - prev[0])
                if est > 0:
                    s = min(max(est, 0.25 * slope), 4 * slope)
            if math.isfinite(y):
                step = (y_mid - y) / s
                step = math.copysign(min(max(abs(step), 1e-3), 3.0), step)
            else:
                step = 2.0 if y < y_lo else -2.0
            x_new = min(max(x + step, x_min), x_max)
        prev = (x, y)
        x = x_new
    raise RuntimeError(f"noise calibration did not converge in {_MAX_EVALS} evaluations (window {y_lo}..{y_hi})")


# --- per-component calibration -------------------------------------------------------


class Infeasible(Exception):
    """A component's target needs a noise multiplier above the plan's maximum."""

    def __init__(self, component: "ComponentCurve", target: float) -> None:
        super().__init__(component.request.name)
        self.component = component
        self.target = target


class ComponentCurve:
    """One component's epsilon-vs-sigma curve, evaluated lazily on coarse PLD grids."""

    def __init__(
        self,
        request: ComponentRequest,
        epsilon: float,
        delta: float,
        tol: float,
        shared: dict,
        sigma_range: tuple[float, float],
    ) -> None:
        self.request = request
        self.sigma_min, self.sigma_max = sigma_range  # the plan's bounds on any noise multiplier
        self.delta = delta
        self.tol = tol
        share = request.fraction * epsilon
        self.interval = min(max(min(_COARSE_REL * share, _COARSE_STEPS / math.sqrt(request.steps)), _COARSE_MIN),
                            _COARSE_MAX)
        # Components with equal (q, steps, interval) have the same curve: share the work.
        self.pieces = request.pieces
        key = (request.sample_rate, request.steps, self.interval, self.pieces)
        self._cache, self._calibrated = shared.setdefault(key, ({}, {}))  # sigma -> log est; target -> sigma
        rel = [v for v, _ in self.pieces]
        self.rel_max, self.rel_min = max(rel), min(rel)
        # Closed-form guesses: for large sigma a subsampled Gaussian's mu ~ q sqrt(T)/sigma, so
        # a schedule acts like a constant sigma_eq = scale / sqrt(mean over steps of r^-2).
        self.equivalent = math.sqrt(sum(n / v**2 for v, n in self.pieces) / request.steps)

    def mechanisms(self, scale: float) -> tuple[SubsampledGaussian, ...]:
        r = self.request
        return tuple(
            SubsampledGaussian(r.name, scale * value, r.sample_rate, n, r.sensitivity) for value, n in self.pieces
        )

    def log_estimate(self, sigma: float) -> float:
        if sigma not in self._cache:
            try:
                est = analysis.pld_epsilon(list(self.mechanisms(sigma)), self.delta, self.interval)
                y = math.log(est) if est > 0 else -math.inf
            except analysis.AccountingError:
                y = math.inf  # only tiny sigma (a huge epsilon) is refused
            self._cache[sigma] = y
        return self._cache[sigma]

    def _guess(self, target: float) -> float:
        """Starting sigma: interpolate evaluated points, else the Gaussian-DP closed form."""
        y_t = math.log(target)
        pts = sorted((-math.log(s), y) for s, y in self._cache.items() if math.isfinite(y))
        lower = [p for p in pts if p[1] <= y_t]
        upper = [p for p in pts if p[1] > y_t]
        if lower and upper:
            (x0, y0), (x1, y1) = lower[-1], upper[0]
        elif len(pts) >= 2:
            (x0, y0), (x1, y1) = (pts[-2], pts[-1]) if lower else (pts[0], pts[1])
        else:
            r = self.request
            return analysis.clt_sigma(analysis.gaussian_mu(target, self.delta), r.sample_rate, r.steps) * self.equivalent
        if y1 <= y0 or x1 == x0:
            return math.exp(-x0)
        return math.exp(-(x0 + (y_t - y0) * (x1 - x0) / (y1 - y0)))

    def sigma_for(self, target: float) -> float:
        """Noise multiplier at which this component alone spends ``target`` (estimate)."""
        if target in self._calibrated:
            return self._calibrated[target]
        r = self.request
        if r.sample_rate >= 1:
            # Exact for q = 1 (composition of Gaussians is mu-GDP): refuse without PLD.
            needed = analysis.clt_sigma(analysis.gaussian_mu(target * (1 - self.tol), self.delta), 1.0, r.steps)
            if needed * self.equivalent * self.rel_max > self.sigma_max * 1.01:
                raise Infeasible(self, target)
        guess = self._guess(target)
        if not math.isfinite(guess) or guess <= 0:
            guess = self.sigma_max / self.rel_max
        try:
            x, _ = solve_increasing(
                lambda x: self.log_estimate(math.exp(-x)),
                -math.log(guess),
                math.log(target * (1 - self.tol)),
                math.log(target * (1 + self.tol)),
                -math.log(self.sigma_max / self.rel_max),
                -math.log(self.sigma_min / self.rel_min),
            )
        except OutOfRange as exc:
            if exc.side == "low":
                raise Infeasible(self, target) from None
            raise BudgetError(
                f"component '{r.name}': its epsilon share {target:.3g} is not reached even at "
                f"noise_multiplier {self.sigma_min:g}; lower epsilon or this component's share"
            ) from None
        sigma = math.exp(-x)
        self._calibrated[target] = sigma
        return sigma


def initial_scale(components: list[ComponentCurve], epsilon: float, delta: float, goal: float) -> float:
    """Common scale s under mu-GDP composition (exact for q = 1; a guess otherwise)."""
    fractions = [c.request.fraction for c in components]
    if len(components) == 1:
        return goal / epsilon
    mu_goal = analysis.gaussian_mu(goal, delta)

    def excess(log_s: float) -> float:
        s = math.exp(log_s)
        mu = math.sqrt(sum(analysis.gaussian_mu(s * f * epsilon, delta) ** 2 for f in fractions))
        return math.log(mu) - math.log(mu_goal)

    hi = math.log(1 / max(fractions))
    lo = math.log(goal / epsilon) - 1.0
    if excess(hi) <= 0:
        return math.exp(hi)
    while excess(lo) > 0 and lo > -20:
        lo -= 1.0
    if excess(lo) > 0:
        # Only a delta near 1 makes every share's mu-GDP exceed the goal at any scale.
        raise BudgetError(
            f"delta={delta:g} is too large for a meaningful guarantee: it must lie far below 1/N "
            f"(N = number of training records); the field's convention is delta=1e-5"
        )
    return math.exp(brentq(excess, lo, hi, xtol=1e-6))

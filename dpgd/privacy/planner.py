"""Noise calibration: split one (epsilon, delta) budget across the DP components.

Split convention. ``fraction`` is a share of the TOTAL epsilon. Component i alone is
calibrated to spend ``s * fraction_i * epsilon`` (its noise multiplier is the one at which
its own PRV epsilon equals that), with one scale ``s`` common to all components. With
``s = 1`` each component alone spends exactly its share; because composition is
sub-additive (sqrt-like for Gaussians), the composed epsilon is then below ``epsilon``,
so ``s`` (usually > 1) is found by search such that the COMPOSED PRV epsilon of all
mechanisms lies in ``[epsilon * (1 - rel_tol), epsilon]`` -- never above. The shares thus
fix the ratios of the per-component epsilons, and the whole budget is used.

Noise schedules. A request may carry a relative schedule, ``(relative_multiplier, steps)``
pieces run in order (default: one piece ``(1.0, steps)``). Its pieces' noise multipliers
are ``sigma_c * relative_multiplier`` and the per-component search solves for the scale
``sigma_c`` (so ``multipliers[name]`` is the scale: the sigma of relative multiplier 1.0,
the last piece of a decreasing schedule). Each piece is one SubsampledGaussian record:
:meth:`NoisePlan.mechanisms_for` gives them, :meth:`NoisePlan.schedule_for` the per-step
sigmas. :meth:`NoisePlan.for_component` refuses a component with more than one piece.

Components with fraction 0 get no mechanism: they must not run a DP mechanism at all
(:meth:`NoisePlan.for_component` refuses them). A share that cannot be met without a
noise multiplier above ``SIGMA_MAX`` raises :class:`BudgetError`; sigma is never capped
silently (the published code capped it and overspent).

Speed: single-component searches use PRV point estimates on a coarse grid (eps_error =
10% of the target; the estimate itself is accurate to ~0.1%), warm-started from the
Gaussian-DP closed form (exact for sample rate 1, a CLT guess otherwise). Only the
composed epsilon is evaluated at reporting accuracy, a few times. See ``plan_budget``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from scipy.optimize import brentq

from dpgd.errors import BudgetError, ConfigError
from dpgd.privacy import analysis
from dpgd.privacy.mechanisms import SubsampledGaussian
from dpgd.privacy.schedules import Pieces, expand, validate_pieces

__all__ = ["ComponentRequest", "NoisePlan", "plan_budget", "check_delta", "SIGMA_MAX", "EPSILON_MAX"]

# Above sigma = 1e4 the noise (std 1e4 * C per coordinate) drowns any batch sum (norm
# <= batch * C): a plan needing more is better refused than run.
SIGMA_MAX = 1e4
SIGMA_MIN = 1e-2
# PRV (opacus) returns inf beyond epsilon ~700; nothing above ~100 is a meaningful guarantee.
EPSILON_MAX = 200.0
_COARSE_REL = 0.1  # coarse-grid eps_error as a fraction of a component's target
_MAX_EVALS = 60


@dataclass(frozen=True)
class ComponentRequest:
    """What a component needs: its share of epsilon and how it samples and repeats."""

    name: str
    fraction: float
    sample_rate: float
    steps: int
    sensitivity: str
    # Relative noise schedule: (relative_multiplier, steps) pieces summing to ``steps``;
    # None = constant (one piece (1.0, steps)).
    schedule: Pieces | None = None

    @property
    def pieces(self) -> Pieces:
        if self.schedule is None:
            return ((1.0, int(self.steps)),)
        return tuple((float(v), int(n)) for v, n in self.schedule)


@dataclass(frozen=True)
class NoisePlan:
    """Calibrated noise multipliers; ``epsilon`` is the composed PRV upper bound."""

    multipliers: dict[str, float]
    mechanisms: tuple[SubsampledGaussian, ...]
    epsilon: float
    epsilon_target: float
    delta: float
    eps_error: float = 0.0
    scale: float = 1.0  # the common factor s on the per-component targets
    skipped: tuple[str, ...] = field(default=())  # fraction-0 components: no DP mechanism

    def for_component(self, name: str) -> float:
        """Noise multiplier of a planned constant-noise component (refuses fraction-0
        components and scheduled ones: use :meth:`schedule_for` for those)."""
        self._check(name)
        if len(self._records(name)) > 1:
            raise ConfigError(
                f"component '{name}' runs a noise schedule ({len(self._records(name))} pieces); "
                "use NoisePlan.schedule_for / mechanisms_for"
            )
        return self.multipliers[name]

    def _records(self, name: str) -> tuple[SubsampledGaussian, ...]:
        return tuple(m for m in self.mechanisms if m.component == name)

    def _check(self, name: str) -> None:
        if name in self.multipliers:
            return
        if name in self.skipped:
            raise ConfigError(
                f"component '{name}' has budget share 0 and must not run a DP mechanism; "
                f"give budget.{name} a share > 0 to run it"
            )
        raise ConfigError(f"component '{name}' is not in the noise plan (planned: {sorted(self.multipliers)})")

    def mechanisms_for(self, name: str) -> tuple[SubsampledGaussian, ...]:
        """The records a component must declare to the ledger when it runs as planned."""
        self._check(name)  # same refusal for fraction-0 or unknown components
        return self._records(name)

    def pieces_for(self, name: str) -> tuple[tuple[float, int], ...]:
        """``(noise_multiplier, steps)`` pieces of a component, in the order they run."""
        return tuple((m.noise_multiplier, m.steps) for m in self.mechanisms_for(name))

    def schedule_for(self, name: str) -> list[float]:
        """The noise multiplier of every step of a component (length = its steps)."""
        return expand(self.pieces_for(name))

    def to_dict(self) -> dict[str, Any]:
        return {
            "multipliers": dict(self.multipliers),
            "mechanisms": [m.to_dict() for m in self.mechanisms],
            "epsilon": self.epsilon,
            "epsilon_target": self.epsilon_target,
            "delta": self.delta,
            "eps_error": self.eps_error,
            "scale": self.scale,
            "skipped": list(self.skipped),
        }


def check_delta(delta: float, num_records: int) -> None:
    """Refuse delta >= 1/N: such a delta allows releasing one record in the clear."""
    if isinstance(num_records, bool) or int(num_records) != num_records or num_records < 1:
        raise ConfigError(f"num_records must be a positive integer, got {num_records!r}")
    n = int(num_records)
    delta = float(delta)
    if not (0 < delta < 1):
        raise ConfigError(f"delta must be in (0, 1), got {delta!r}")
    if delta >= 1.0 / n:
        bound = 1.0 / (10 * n)
        example = min(1e-5, 10 ** math.floor(math.log10(bound)))
        raise ConfigError(
            f"delta={delta:g} is not below 1/N={1.0 / n:.3g} for N={n} training records; "
            f"use delta <= {bound:.3g}, e.g. {example:g}"
        )


# --- validation --------------------------------------------------------------------


def _validate(epsilon: float, delta: float, requests: Sequence[ComponentRequest], rel_tol: float) -> None:
    if not isinstance(epsilon, (int, float)) or not math.isfinite(epsilon) or epsilon <= 0:
        raise ConfigError(f"epsilon must be finite and > 0, got {epsilon!r} (use the non-private path for no DP)")
    if epsilon > EPSILON_MAX:
        raise ConfigError(
            f"epsilon={epsilon:g} is above {EPSILON_MAX:g}, where a DP guarantee means nothing and "
            "the PRV accountant loses precision; use a smaller epsilon or the non-private path"
        )
    if not isinstance(delta, (int, float)) or not (0 < delta < 1):
        raise ConfigError(f"delta must be in (0, 1), got {delta!r}; the convention is 1e-5")
    if not (1e-3 <= rel_tol < 1):
        raise ConfigError(f"rel_tol must be in [1e-3, 1), got {rel_tol!r}")
    if not requests:
        raise ConfigError("plan_budget needs at least one component request")
    names = [r.name for r in requests]
    if any(not isinstance(n, str) or not n for n in names) or len(set(names)) != len(names):
        raise ConfigError(f"component names must be unique non-empty strings, got {names}")
    shares = " + ".join(f"budget.{r.name}" for r in requests)
    for r in requests:
        if not isinstance(r.fraction, (int, float)) or not (0 <= r.fraction <= 1):
            raise ConfigError(f"budget.{r.name} = {r.fraction!r} must be a fraction in [0, 1] of epsilon")
    total = math.fsum(r.fraction for r in requests)
    if abs(total - 1) > 1e-6:
        raise ConfigError(f"{shares} = {total:g}; make them sum to 1")
    for r in requests:
        if r.fraction == 0:
            continue
        if isinstance(r.steps, bool) or not isinstance(r.steps, int) or r.steps < 0:
            raise ConfigError(f"component '{r.name}': steps must be an integer >= 0, got {r.steps!r}")
        if r.steps == 0:
            raise ConfigError(
                f"component '{r.name}' has budget share {r.fraction:g} but 0 steps; "
                f"set budget.{r.name} to 0 or give it steps"
            )
        # Constructing the record checks sample_rate and sensitivity, naming the component.
        SubsampledGaussian(r.name, 1.0, r.sample_rate, r.steps, r.sensitivity)
        validate_pieces(r.name, r.pieces, r.steps)


# --- one-dimensional search ----------------------------------------------------------


class _OutOfRange(Exception):
    """The window is not reachable inside [x_min, x_max]; ``side`` says which end failed."""

    def __init__(self, side: str) -> None:
        super().__init__(side)
        self.side = side  # "low": too high even at x_min; "high": too low even at x_max


def _solve_increasing(
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
                raise _OutOfRange("high")
            below = (x, y) if below is None or x > below[0] else below
            sides.append("below")
        else:
            if x <= x_min:
                raise _OutOfRange("low")
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


class _Infeasible(Exception):
    def __init__(self, component: "_Component", target: float) -> None:
        super().__init__(component.request.name)
        self.component = component
        self.target = target


class _Component:
    """One component's epsilon-vs-sigma curve, evaluated lazily on coarse PRV grids."""

    def __init__(self, request: ComponentRequest, epsilon: float, delta: float, tol: float, shared: dict) -> None:
        self.request = request
        self.delta = delta
        self.tol = tol
        share = request.fraction * epsilon
        self.eps_error = min(max(_COARSE_REL * share, analysis.EPS_ERROR_MIN), analysis.EPS_ERROR_MAX)
        # Components with equal (q, steps, eps_error) have the same curve: share the work.
        self.pieces = request.pieces
        key = (request.sample_rate, request.steps, self.eps_error, self.pieces)
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
                est = analysis.prv_estimate(list(self.mechanisms(sigma)), self.delta, self.eps_error)
                y = math.log(est) if est > 0 else -math.inf
            except analysis.AccountingError:
                y = math.inf  # only tiny sigma (huge epsilon) makes the grid explode
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
            # Exact for q = 1 (composition of Gaussians is mu-GDP): refuse without PRV.
            needed = analysis.clt_sigma(analysis.gaussian_mu(target * (1 - self.tol), self.delta), 1.0, r.steps)
            if needed * self.equivalent * self.rel_max > SIGMA_MAX * 1.01:
                raise _Infeasible(self, target)
        guess = self._guess(target)
        if not math.isfinite(guess) or guess <= 0:
            guess = SIGMA_MAX / self.rel_max
        try:
            x, _ = _solve_increasing(
                lambda x: self.log_estimate(math.exp(-x)),
                -math.log(guess),
                math.log(target * (1 - self.tol)),
                math.log(target * (1 + self.tol)),
                -math.log(SIGMA_MAX / self.rel_max),
                -math.log(SIGMA_MIN / self.rel_min),
            )
        except _OutOfRange as exc:
            if exc.side == "low":
                raise _Infeasible(self, target) from None
            raise BudgetError(
                f"component '{r.name}': its epsilon share {target:.3g} is not reached even at "
                f"noise_multiplier {SIGMA_MIN:g}; lower epsilon or this component's share"
            ) from None
        sigma = math.exp(-x)
        self._calibrated[target] = sigma
        return sigma


def _infeasible_error(exc: _Infeasible, epsilon: float, delta: float) -> BudgetError:
    r = exc.component.request
    return BudgetError(
        f"component '{r.name}' cannot meet its share of the budget: {r.steps} steps at "
        f"sample_rate {r.sample_rate:g} with share {r.fraction:g} of epsilon={epsilon:g} "
        f"(about {exc.target:.3g} for it alone, delta={delta:g}) would need "
        f"noise_multiplier > {SIGMA_MAX:g}; "
        + (f"use fewer iterations or a smaller sample rate for '{r.name}', or " if r.steps > 1 or r.sample_rate < 1 else "use ")
        + f"a larger epsilon or a larger share (budget.{r.name}) for '{r.name}'"
    )


def _initial_scale(components: list[_Component], epsilon: float, delta: float, goal: float) -> float:
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
    return math.exp(brentq(excess, lo, hi, xtol=1e-6))


def plan_budget(
    epsilon: float,
    delta: float,
    requests: list[ComponentRequest],
    rel_tol: float = 0.02,
) -> NoisePlan:
    """Calibrate noise multipliers so all components together spend ``epsilon``.

    Returns a plan whose composed PRV epsilon lies in ``[epsilon*(1-rel_tol), epsilon]``.
    Raises ConfigError for invalid input and BudgetError (naming the component) for a
    share that cannot be met; nothing is read or run before this succeeds.
    """
    requests = list(requests)
    _validate(epsilon, delta, requests, rel_tol)
    epsilon, delta = float(epsilon), float(delta)
    active = [r for r in requests if r.fraction > 0]
    skipped = tuple(r.name for r in requests if r.fraction == 0)
    inner_tol = min(1e-3, rel_tol / 20)
    shared: dict = {}
    components = [_Component(r, epsilon, delta, inner_tol, shared) for r in active]

    goal = epsilon * (1 - rel_tol / 2)
    y_lo, y_hi = math.log(epsilon * (1 - rel_tol)), math.log(epsilon)
    results: dict[float, tuple[tuple[SubsampledGaussian, ...], float]] = {}
    last_infeasible: list[_Infeasible] = []

    def log_composed(log_s: float) -> float:
        s = math.exp(log_s)
        try:
            mechs = tuple(
                m for c in components for m in c.mechanisms(c.sigma_for(s * c.request.fraction * epsilon))
            )
        except _Infeasible as exc:
            last_infeasible.append(exc)
            return -math.inf  # a target too small to reach: raise s
        try:
            eps = analysis.prv_epsilon(mechs, delta)
        except analysis.AccountingError:
            return math.inf  # only tiny noise (a huge epsilon) defeats PRV: lower s
        results[log_s] = (mechs, eps)
        return math.log(eps) if eps > 0 else -math.inf

    s0 = _initial_scale(components, epsilon, delta, goal * (1 - analysis.EPS_ERROR_REL))
    x_max = math.log(1 / max(c.request.fraction for c in components))
    try:
        log_s, _ = _solve_increasing(log_composed, math.log(s0), y_lo, y_hi, math.log(1e-6), x_max)
    except _OutOfRange as exc:
        if exc.side == "high" and last_infeasible:
            raise _infeasible_error(last_infeasible[-1], epsilon, delta) from None
        raise RuntimeError(
            f"noise calibration failed ({exc.side}) for epsilon={epsilon:g}, delta={delta:g}, {requests}"
        ) from None
    mechs, eps = results[log_s]
    return NoisePlan(
        multipliers={c.request.name: c.sigma_for(math.exp(log_s) * c.request.fraction * epsilon) for c in components},
        mechanisms=mechs,
        epsilon=eps,
        epsilon_target=epsilon,
        delta=delta,
        eps_error=analysis.default_eps_error(mechs, delta),
        scale=math.exp(log_s),
        skipped=skipped,
    )

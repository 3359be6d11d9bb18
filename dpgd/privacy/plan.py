"""Noise calibration: split one (epsilon, delta) budget across the DP components.

Split convention. ``fraction`` is a share of the TOTAL epsilon. Component i alone is
calibrated to spend ``s * fraction_i * epsilon`` (its noise multiplier is the one at which
its own PLD epsilon equals that), with one scale ``s`` common to all components. With
``s = 1`` each component alone spends exactly its share; because composition is
sub-additive (sqrt-like for Gaussians), the composed epsilon is then below ``epsilon``,
so ``s`` (usually > 1) is found by search such that the COMPOSED PLD epsilon of all
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

The search that finds the noise multipliers lives in :mod:`dpgd.privacy._search`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from dpgd.errors import BudgetError, ConfigError
import dpgd.privacy.analysis as analysis
from dpgd.privacy._search import ComponentCurve, Infeasible, OutOfRange, initial_scale, solve_increasing
from dpgd.privacy.mechanisms import SubsampledGaussian
from dpgd.privacy.schedules import Pieces, expand, validate_pieces

__all__ = ["ComponentRequest", "NoisePlan", "plan_budget", "check_delta", "SIGMA_MAX", "EPSILON_MAX"]

# Above sigma = 1e4 the noise (std 1e4 * C per coordinate) drowns any batch sum (norm
# <= batch * C): a plan needing more is better refused than run.
SIGMA_MAX = 1e4
SIGMA_MIN = 1e-2
# Nothing above ~100 is a meaningful guarantee; the accountant refuses far above (analysis.EPSILON_MAX).
EPSILON_MAX = 200.0


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
    """Calibrated noise multipliers; ``epsilon`` is the composed PLD upper bound (the
    reported accountant, at its default discretisation ``pld_interval``)."""

    multipliers: dict[str, float]
    mechanisms: tuple[SubsampledGaussian, ...]
    epsilon: float
    epsilon_target: float
    delta: float
    pld_interval: float = 0.0
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
            "pld_interval": self.pld_interval,
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
            "no accountant is meaningful; use a smaller epsilon or the non-private path"
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


def _infeasible_error(exc: Infeasible, epsilon: float, delta: float) -> BudgetError:
    r = exc.component.request
    return BudgetError(
        f"component '{r.name}' cannot meet its share of the budget: {r.steps} steps at "
        f"sample_rate {r.sample_rate:g} with share {r.fraction:g} of epsilon={epsilon:g} "
        f"(about {exc.target:.3g} for it alone, delta={delta:g}) would need "
        f"noise_multiplier > {SIGMA_MAX:g}; "
        + (f"use fewer iterations or a smaller sample rate for '{r.name}', or " if r.steps > 1 or r.sample_rate < 1 else "use ")
        + f"a larger epsilon or a larger share (budget.{r.name}) for '{r.name}'"
    )


def plan_budget(
    epsilon: float,
    delta: float,
    requests: list[ComponentRequest],
    rel_tol: float = 0.02,
    fixed: Sequence[SubsampledGaussian] = (),
) -> NoisePlan:
    """Calibrate noise multipliers so all components together spend ``epsilon``.

    Returns a plan whose composed PLD epsilon (what the ledger reports) lies in ``[epsilon*(1-rel_tol), epsilon]``.
    Raises ConfigError for invalid input and BudgetError (naming the component) for a
    share that cannot be met; nothing is read or run before this succeeds.

    ``fixed``: records already released (e.g. the class counts, before a rule re-plans the
    rest on them). They are composed with the calibrated ones but keep their noise, and
    are part of the returned plan; ``requests`` then share what they leave.
    """
    requests = list(requests)
    fixed = tuple(fixed)
    _validate(epsilon, delta, requests, rel_tol)
    clash = {m.component for m in fixed} & {r.name for r in requests}
    if clash:
        raise ConfigError(f"component(s) {sorted(clash)} are both fixed and requested")
    epsilon, delta = float(epsilon), float(delta)
    active = [r for r in requests if r.fraction > 0]
    skipped = tuple(r.name for r in requests if r.fraction == 0)
    inner_tol = min(1e-3, rel_tol / 20)
    shared: dict = {}
    components = [ComponentCurve(r, epsilon, delta, inner_tol, shared, (SIGMA_MIN, SIGMA_MAX)) for r in active]

    goal = epsilon * (1 - rel_tol / 2)
    y_lo, y_hi = math.log(epsilon * (1 - rel_tol)), math.log(epsilon)
    results: dict[float, tuple[tuple[SubsampledGaussian, ...], float]] = {}
    last_infeasible: list[Infeasible] = []

    def log_composed(log_s: float) -> float:
        s = math.exp(log_s)
        try:
            mechs = fixed + tuple(
                m for c in components for m in c.mechanisms(c.sigma_for(s * c.request.fraction * epsilon))
            )
        except Infeasible as exc:
            last_infeasible.append(exc)
            return -math.inf  # a target too small to reach: raise s
        try:
            eps = analysis.pld_epsilon(mechs, delta)
        except analysis.AccountingError:
            return math.inf  # only tiny noise (a huge epsilon) defeats the accountant: lower s
        results[log_s] = (mechs, eps)
        return math.log(eps) if eps > 0 else -math.inf

    s0 = initial_scale(components, epsilon, delta, goal)
    x_max = math.log(1 / max(c.request.fraction for c in components))
    try:
        log_s, _ = solve_increasing(log_composed, math.log(s0), y_lo, y_hi, math.log(1e-6), x_max)
    except OutOfRange as exc:
        if exc.side == "high" and last_infeasible:
            raise _infeasible_error(last_infeasible[-1], epsilon, delta) from None
        raise RuntimeError(
            f"noise calibration failed ({exc.side}) for epsilon={epsilon:g}, delta={delta:g}, {requests}"
        ) from None
    mechs, eps = results[log_s]
    fixed_multipliers = {m.component: m.noise_multiplier for m in fixed}
    return NoisePlan(
        multipliers={**fixed_multipliers,
                     **{c.request.name: c.sigma_for(math.exp(log_s) * c.request.fraction * epsilon)
                        for c in components}},
        mechanisms=mechs,
        epsilon=eps,
        epsilon_target=epsilon,
        delta=delta,
        pld_interval=analysis.pld_interval(mechs, delta),
        scale=math.exp(log_s),
        skipped=skipped,
    )

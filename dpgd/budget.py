"""The ``budget`` group: turn the config into a noise plan before any data is read.

Every component that runs a DP mechanism states its :class:`~dpgd.privacy.PrivacyNeed`
(count release, generator, expert, matcher, selection) and gets a share of the total epsilon;
:func:`dpgd.privacy.plan_budget` calibrates every noise multiplier and checks the composed
total with the numerical accountant. A plan that cannot meet the target raises
:class:`~dpgd.errors.BudgetError` here, at the start of the run.
"""

from __future__ import annotations

import dataclasses
import math

from dpgd import counts, selection
from dpgd.config import TrainConfig
from dpgd.counts import ClassCounts
from dpgd.errors import ConfigError
from dpgd.expert import privacy_request as expert_privacy_request
from dpgd.generators import privacy_request as generator_privacy_request
from dpgd.matching import privacy_request as matcher_privacy_request
from dpgd.pool_networks import snapshot_count
from dpgd.privacy import ComponentRequest, NoisePlan, PrivacyNeed, plan_budget
from dpgd.privacy.analysis import rdp_epsilon, rdp_sigma

# How to switch off a component that has a need but no share of the budget.
SWITCH_OFF = {"generator": "generator=none", "expert": "expert=none", "matcher": "matcher=none"}


def component_needs(cfg: TrainConfig) -> list[tuple[PrivacyNeed, float]]:
    """Each configured DP component's need and its share (``budget.<component>``)."""
    needs = []
    for need in (generator_privacy_request(cfg.generator), expert_privacy_request(cfg.expert),
                 matcher_privacy_request(cfg.matcher, extractors=snapshot_count(cfg.pool_nets))):
        if need is None:
            continue
        share = float(getattr(cfg.budget, need.component))
        if share <= 0:
            raise ConfigError(
                f"{need.component}={getattr(cfg, need.component).name} releases DP statistics of the private data but "
                f"budget.{need.component}=0; give it a share (e.g. budget=dpgeng) or use {SWITCH_OFF[need.component]}."
            )
        needs.append((need, share))
    return needs


def selection_need(cfg: TrainConfig) -> PrivacyNeed | None:
    """The DP selection's need (None when it does not run: then its share is spent elsewhere)."""
    return selection.privacy_request(cfg.selection, cfg.matcher)


def component_requests(cfg: TrainConfig) -> list[ComponentRequest]:
    """The planner's requests: the count release takes ``budget.counts`` off the top, the
    DP selection (if it runs) ``budget.selection``, and the components that run share the
    rest in proportion to their fractions (so a preset like budget=dpgeng with expert=none
    still spends the whole target)."""
    needs = component_needs(cfg)
    if not needs:  # nothing data-dependent is released (e.g. noise init, no matching)
        return []
    requests = [counts.privacy_request().request(cfg.budget.counts)]
    rest = 1.0 - cfg.budget.counts
    chooser = selection_need(cfg)
    if chooser is not None:
        requests.append(chooser.request(cfg.budget.selection))
        rest -= cfg.budget.selection
    total = sum(share for _, share in needs)
    return [*requests, *[need.request(rest * share / total) for need, share in needs]]


def sample_rates_for(cfg: TrainConfig, released: ClassCounts, plan: NoisePlan | None = None) -> TrainConfig:
    """``cfg`` with the Poisson rates the run uses, read from the released (noisy) counts.

    At a fixed epsilon the noise multiplier of a subsampled Gaussian grows about in
    proportion to q, so a step's signal-to-noise (expected batch over noise) hardly depends
    on q while its cost grows with it (docs/performance.md: the planner's numbers). The
    matcher's rate is therefore capped so a class contributes ``matcher.group_size`` records
    per iteration on average (NDPDC's group size L), and the expert's so a DP-SGD step
    sees ``expert.batch_size`` records: q = min(sample_rate, L K / N) and min(sample_rate,
    B / N), with N the released total (public). Small data sets keep ``sample_rate``.
    ``matcher.iterations=null`` is then resolved for that rate (:func:`with_iterations`,
    reading the matcher's epsilon in ``plan``).
    """
    matcher, expert = cfg.matcher, cfg.expert
    total = max(released.total, 1.0)
    if matcher.name == "dp_feature" and matcher.release == "per_iteration" and matcher.group_size is not None:
        per_class = total / len(released.values)
        matcher = dataclasses.replace(matcher, sample_rate=min(matcher.sample_rate, matcher.group_size / per_class))
    if expert.name == "dp_sgd" and expert.batch_size is not None:
        expert = dataclasses.replace(expert, sample_rate=min(expert.sample_rate, expert.batch_size / total))
    return with_iterations(dataclasses.replace(cfg, matcher=matcher, expert=expert), plan)


def replan_without(cfg: TrainConfig, plan: NoisePlan, component: str | None) -> NoisePlan:
    """The plan after the count release changed what runs: a rule switched ``component``
    off (None: nothing dropped, e.g. only the sample rates changed). The released count
    record stays as it ran (fixed), the selection keeps its ratio to the rest, and the other
    components share the remainder in proportion to their fractions (a dropped share goes
    to them)."""
    fixed = plan.mechanisms_for(counts.COMPONENT)
    # A component an earlier rule dropped from the plan stays dropped.
    needs = [(need, share) for need, share in component_needs(cfg)
             if need.component != component and need.component in plan.multipliers]
    if not needs:
        raise ConfigError(f"switching {component} off leaves no DP component to spend the budget on.")
    requests = []
    rest = 1.0
    chooser = selection_need(cfg)
    if chooser is not None:
        share = cfg.budget.selection / (1.0 - cfg.budget.counts)
        requests.append(chooser.request(share))
        rest -= share
    total = sum(share for _, share in needs)
    return plan_budget(cfg.epsilon, cfg.delta, [*requests, *[need.request(rest * share / total) for need, share in needs]],
                       fixed=fixed)


def plan_run(cfg: TrainConfig) -> NoisePlan | None:
    """The run's noise plan before any data is read; ``None`` for a non-private run
    (``epsilon=inf``) or one that runs no DP mechanism at all. With
    ``matcher.iterations=null`` it plans ``matcher.min_iterations`` (the rule resolves
    the count after the count release, :func:`with_iterations`, and the run re-plans)."""
    if not math.isfinite(cfg.epsilon):
        return None
    requests = component_requests(cfg)
    if not requests:
        return None
    return plan_budget(cfg.epsilon, cfg.delta, requests)


def with_iterations(cfg: TrainConfig, plan: NoisePlan | None) -> TrainConfig:
    """``cfg`` with ``matcher.iterations`` resolved; ``null`` asks the information rule.

    Summed over a run, the squared signal-to-noise of the matcher's releases is
    T (L / (sigma_T C sqrt(d)))^2: how much the releases can tell about the class means.
    At a fixed epsilon sigma_T grows with T, about as sqrt(T) where sigma is large (more
    iterations then add no information, only smaller, noisier steps) and more slowly
    where it is small (subsampling amplifies less). The rule doubles T from
    ``min_iterations`` while doubling adds more than ``information_gain`` to that sum,
    ``2 sigma_T^2 / sigma_2T^2 - 1``, up to ``max_iterations``; a non-private run or a
    matcher without per-iteration releases takes ``max_iterations``. Public inputs only:
    the matcher's epsilon in ``plan`` (its records, RDP), its sample rate and delta.
    """
    matcher = cfg.matcher
    if matcher.iterations is not None:
        return cfg
    if matcher.name == "none":
        chosen = 0
    elif (matcher.name != "dp_feature" or matcher.release != "per_iteration" or plan is None
          or "matcher" not in plan.multipliers):
        chosen = matcher.max_iterations
    else:
        epsilon = rdp_epsilon(plan.mechanisms_for("matcher"), plan.delta)
        chosen = information_rule(epsilon, plan.delta, matcher.sample_rate, matcher.min_iterations,
                                  matcher.max_iterations, matcher.information_gain)
    return dataclasses.replace(cfg, matcher=dataclasses.replace(matcher, iterations=chosen))


def information_rule(epsilon: float, delta: float, sample_rate: float, first: int, most: int, gain: float) -> int:
    """:func:`with_iterations`'s rule for a subsampled Gaussian spending ``epsilon``."""
    steps, current = first, rdp_sigma(epsilon, delta, sample_rate, first)
    while 2 * steps <= most:
        doubled = rdp_sigma(epsilon, delta, sample_rate, 2 * steps)
        if 2 * current**2 / doubled**2 - 1 <= gain:
            break
        steps, current = 2 * steps, doubled
    return steps


def matching_information(cfg: TrainConfig, plan: NoisePlan | None, released: ClassCounts, dimension: int) -> float:
    """The run's summed squared signal-to-noise of the matcher's releases,
    ``sum_t (q N_c / (sigma_t sqrt(d)))^2`` averaged over classes: a clipped class sum has
    norm at most C and its noise norm sigma C sqrt(d). Public: the plan's sigmas, the
    released counts, the embedding size ``d``. Infinite without noise (no plan)."""
    if plan is None or "matcher" not in plan.multipliers:
        return math.inf
    sigmas = plan.schedule_for("matcher")
    expected = cfg.matcher.sample_rate * released.values.double()
    per_class = sum(1.0 / (sigma**2 * dimension) for sigma in sigmas) * expected.pow(2)
    return float(per_class.mean())

"""The ``budget`` group: turn the config into a noise plan before any data is read.

Each component that runs a DP mechanism (generator, matcher, expert) asks for a share of
the total epsilon; :func:`dpgd.privacy.plan_budget` calibrates every noise multiplier and
checks the composed total with the numerical accountant. A plan that cannot meet the
target raises :class:`~dpgd.errors.BudgetError` here, at the start of the run.
"""

from __future__ import annotations

import dataclasses
import math

from omegaconf import DictConfig

from dpgd import counts
from dpgd.errors import ConfigError
from dpgd.expert import privacy_request as expert_privacy_request
from dpgd.generators import privacy_request as generator_privacy_request
from dpgd.privacy import ComponentRequest, NoisePlan, plan_budget, schedule_from_config

MATCHER_SENSITIVITY = "L2 clip C of each real embedding: one record moves one class sum by at most C"


def _schedule(component_cfg: DictConfig, steps: int):
    """Relative noise schedule of a component (None = constant, the planner's default)."""
    schedule_cfg = component_cfg.get("noise_schedule")
    if schedule_cfg is None or steps < 1:
        return None
    pieces = schedule_from_config(schedule_cfg, steps)
    return None if len(pieces) == 1 else pieces


def component_requests(cfg: DictConfig) -> list[ComponentRequest]:
    """What each configured DP component will run: sample rate and number of releases."""
    requests = []
    generator_need = generator_privacy_request(cfg.generator)
    if generator_need is not None:
        if cfg.budget.generator <= 0:
            raise ConfigError(
                f"generator={cfg.generator.name} releases a DP statistic but budget.generator=0; "
                "give it a share (e.g. budget=dpgeng) or use generator=none."
            )
        requests.append(generator_need.component_request(float(cfg.budget.generator)))
    expert_need = expert_privacy_request(cfg.expert)
    if expert_need is not None:
        if cfg.budget.expert <= 0:
            raise ConfigError(
                "expert=dp_sgd fine-tunes on the private data but budget.expert=0; "
                "give it a share (e.g. budget=dpgeng) or use expert=none."
            )
        requests.append(ComponentRequest("expert", float(cfg.budget.expert), expert_need.sample_rate,
                                         expert_need.steps, expert_need.sensitivity,
                                         _schedule(cfg.expert, expert_need.steps)))
    if cfg.matcher.name == "dp_feature" and cfg.budget.matcher > 0:
        requests.append(
            ComponentRequest(
                name="matcher",
                fraction=float(cfg.budget.matcher),
                sample_rate=float(cfg.matcher.sample_rate),
                steps=int(cfg.matcher.iterations),
                sensitivity=MATCHER_SENSITIVITY,
                schedule=_schedule(cfg.matcher, int(cfg.matcher.iterations)),
            )
        )
    return requests


def plan_run(cfg: DictConfig) -> NoisePlan | None:
    """The run's noise plan; ``None`` for a non-private run (``epsilon=inf``) or one that
    runs no DP mechanism at all."""
    if not math.isfinite(float(cfg.epsilon)):
        return None
    requests = component_requests(cfg)
    if not requests:  # nothing data-dependent is released (e.g. noise init, no matching)
        return None
    # Shares of components that do not run are handed to the ones that do, so a preset
    # like budget=dpgeng with expert=none still spends the whole target. The class-count
    # release (dpgd.counts) takes budget.counts off the top: every private run uses it.
    counts_share = float(cfg.budget.counts)
    total = sum(request.fraction for request in requests)
    requests = [dataclasses.replace(r, fraction=(1.0 - counts_share) * r.fraction / total) for r in requests]
    requests.insert(0, ComponentRequest(counts.COMPONENT, counts_share, 1.0, 1, counts.SENSITIVITY_TEXT))
    return plan_budget(float(cfg.epsilon), float(cfg.delta), requests)

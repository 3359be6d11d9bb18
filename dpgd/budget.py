"""The ``budget`` group: turn the config into a noise plan before any data is read.

Each component that runs a DP mechanism (generator, matcher, expert) asks for a share of
the total epsilon; :func:`dpgd.privacy.plan_budget` calibrates every noise multiplier and
checks the composed total with the numerical accountant. A plan that cannot meet the
target raises :class:`~dpgd.errors.BudgetError` here, at the start of the run.
"""

from __future__ import annotations

import math

from omegaconf import DictConfig

from dpgd.privacy import ComponentRequest, NoisePlan, plan_budget

MATCHER_SENSITIVITY = "L2 clip C of each real embedding: one record moves one class sum by at most C"


def component_requests(cfg: DictConfig) -> list[ComponentRequest]:
    """What each configured DP component will run: sample rate and number of releases."""
    requests = []
    if cfg.matcher.name == "dp_feature" and cfg.budget.matcher > 0:
        requests.append(
            ComponentRequest(
                name="matcher",
                fraction=float(cfg.budget.matcher),
                sample_rate=float(cfg.matcher.sample_rate),
                steps=int(cfg.matcher.iterations),
                sensitivity=MATCHER_SENSITIVITY,
            )
        )
    return requests


def plan_run(cfg: DictConfig) -> NoisePlan | None:
    """The run's noise plan, or ``None`` for a non-private run (``epsilon=inf``)."""
    if not math.isfinite(float(cfg.epsilon)):
        return None
    requests = component_requests(cfg)
    # Shares of components that do not run are handed to the ones that do, so a preset
    # like budget=dpgeng with expert=none still spends the whole target.
    total = sum(request.fraction for request in requests)
    requests = [
        ComponentRequest(r.name, r.fraction / total, r.sample_rate, r.steps, r.sensitivity) for r in requests
    ]
    return plan_budget(float(cfg.epsilon), float(cfg.delta), requests)

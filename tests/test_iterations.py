"""The information rule that chooses the matching iterations (dpgd.budget.with_iterations)."""

from __future__ import annotations

import dataclasses

import pytest

from dpgd.budget import information_rule, plan_run, with_iterations
from dpgd.config import typed
from dpgd.privacy.analysis import rdp_epsilon, rdp_sigma
from dpgd.privacy.mechanisms import SubsampledGaussian


def test_rdp_sigma_spends_the_asked_epsilon():
    sigma = rdp_sigma(2.0, 1e-5, 0.05, 300)
    spent = rdp_epsilon([SubsampledGaussian("matcher", sigma, 0.05, 300)], 1e-5)
    assert spent == pytest.approx(2.0, rel=0.03)  # integer orders and a 1 % tolerance on sigma


def test_more_iterations_only_where_they_add_information():
    # cifar10-mini at epsilon ~1 (q = 0.1): sigma ~5.5 grows as sqrt(T), doubling adds nothing
    assert information_rule(0.9, 1e-5, 0.1, 200, 1600, 0.25) == 200
    # the same budget over 4,000 records a class (q = 0.0125): sigma ~1, amplification weak
    assert information_rule(0.9, 1e-5, 0.0125, 200, 1600, 0.25) == 400
    # a large budget at a small rate: every doubling pays, up to the cap
    assert information_rule(9.0, 1e-5, 0.0125, 200, 1600, 0.25) == 1600
    assert information_rule(9.0, 1e-5, 0.0125, 200, 1000, 0.25) == 800  # doubling stays under the cap


def test_the_rule_reads_the_plan_and_leaves_a_set_count(compose):
    cfg = typed(compose("dataset=cifar10_mini", "experiment=ndpdc", "epsilon=1"))
    assert cfg.matcher.iterations is None
    plan = plan_run(cfg)
    [record] = plan.mechanisms_for("matcher")
    assert record.steps == cfg.matcher.min_iterations  # planned before the count release
    assert with_iterations(cfg, plan).matcher.iterations == 200
    fixed = dataclasses.replace(cfg, matcher=dataclasses.replace(cfg.matcher, iterations=321))
    assert with_iterations(fixed, plan) is fixed
    # epsilon=inf (no plan) and the non-private DM take the cap; no matcher takes none
    assert with_iterations(cfg, None).matcher.iterations == cfg.matcher.max_iterations
    assert with_iterations(typed(compose("experiment=dm")), None).matcher.iterations == cfg.matcher.max_iterations
    assert with_iterations(typed(compose("experiment=dpgeng_init_only")), None).matcher.iterations == 0


def test_matching_information_is_the_summed_squared_snr_of_the_planned_releases(compose):
    import math

    import torch

    from dpgd.budget import matching_information
    from dpgd.counts import ClassCounts

    cfg = typed(compose("dataset=cifar10_mini", "experiment=ndpdc", "epsilon=1", "matcher.iterations=200"))
    plan = plan_run(cfg)
    sigma = plan.multipliers["matcher"]
    counts = ClassCounts(torch.tensor([400.0, 600.0]), noisy=True, noise_std=18.0)
    expected = 200 * ((0.1 * 400) ** 2 + (0.1 * 600) ** 2) / 2 / (sigma**2 * 2048)
    assert matching_information(cfg, plan, counts, 2048) == pytest.approx(expected, rel=1e-9)
    assert matching_information(cfg, None, counts, 2048) == math.inf

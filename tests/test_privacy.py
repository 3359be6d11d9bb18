"""Privacy accounting: records, ledger, analysis and the budget planner.

Independent checks call the libraries' public accountants directly (dp-accounting's
``PLDAccountant`` on DpEvents, a plain opacus ``PRVAccountant``), never our helpers, and the
analytic Gaussian mechanism is computed here with scipy.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import time

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.stats import norm

from dpgd.errors import BudgetError, ConfigError, DpgdError
from dpgd.privacy import (
    AccountingError,
    ComponentRequest,
    NoisePlan,
    PrivacyLedger,
    SubsampledGaussian,
    check_delta,
    compose_epsilon,
    plan_budget,
)
from dpgd.privacy import analysis
from dpgd.privacy.summary import ledger_document
from reference_accountants import dp_accounting_pld, opacus_prv_upper

DELTA = 1e-5


def analytic_gaussian_epsilon(sigma: float, delta: float, sensitivity: float = 1.0) -> float:
    """Balle & Wang (2018), Theorem 8: the exact epsilon of one Gaussian release."""

    def delta_of(eps: float) -> float:
        a = sensitivity / (2 * sigma)
        b = eps * sigma / sensitivity
        return norm.cdf(a - b) - math.exp(eps) * norm.cdf(-a - b)

    return brentq(lambda e: delta_of(e) - delta, 1e-9, 200.0, xtol=1e-12)


def request(name, fraction, q, steps):
    return ComponentRequest(name=name, fraction=fraction, sample_rate=q, steps=steps, sensitivity="L2 clip C")


# --- planner ---------------------------------------------------------------------------

SPLITS = {"single": (("matcher", 1.0),), "three": (("generator", 0.2), ("matcher", 0.6), ("expert", 0.2))}


@pytest.mark.parametrize(
    "epsilon,steps,q,split",
    list(itertools.product([0.5, 1.0, 10.0], [10, 200, 1000], [0.01, 0.1, 1.0], sorted(SPLITS))),
)
def test_plan_meets_target_and_matches_dp_accounting(epsilon, steps, q, split):
    rel_tol = 0.02
    plan = plan_budget(epsilon, DELTA, [request(n, f, q, steps) for n, f in SPLITS[split]], rel_tol=rel_tol)
    assert epsilon * (1 - rel_tol) <= plan.epsilon <= epsilon
    assert set(plan.multipliers) == {n for n, _ in SPLITS[split]}
    assert [m.component for m in plan.mechanisms] == [n for n, _ in SPLITS[split]]
    for m in plan.mechanisms:
        assert m.noise_multiplier == plan.for_component(m.component) > 0
        assert plan.mechanisms_for(m.component) == (m,)
        assert (m.sample_rate, m.steps) == (q, steps)
    # dp-accounting's own accountant interface, at a fine discretisation, agrees to 0.1 %.
    reference = dp_accounting_pld(plan.mechanisms, DELTA, interval=1e-4 * epsilon)
    assert reference == pytest.approx(plan.epsilon, rel=1e-3)
    assert reference <= epsilon


def test_plan_shares_set_per_component_epsilon_ratios():
    plan = plan_budget(2.0, DELTA, [request("generator", 0.25, 1.0, 1), request("matcher", 0.75, 0.1, 500)])
    alone = {m.component: dp_accounting_pld([m], DELTA) for m in plan.mechanisms}
    assert alone["matcher"] / alone["generator"] == pytest.approx(3.0, rel=0.02)
    assert alone["matcher"] < 2.0 and plan.scale > 1  # composition is sub-additive


def test_plan_ledger_reports_the_plan_epsilon():
    plan = plan_budget(1.0, DELTA, [request("g", 0.3, 1.0, 5), request("m", 0.7, 0.05, 300)])
    report = PrivacyLedger(plan.mechanisms).report(DELTA)
    assert report.epsilon == pytest.approx(plan.epsilon, abs=1e-9)
    assert report.accountant == "pld" and report.pld_interval == pytest.approx(plan.pld_interval)


def test_zero_fraction_component_gets_no_mechanism():
    plan = plan_budget(1.0, DELTA, [request("generator", 0.0, 1.0, 500), request("matcher", 1.0, 0.1, 100)])
    assert [m.component for m in plan.mechanisms] == ["matcher"]
    assert plan.skipped == ("generator",)
    with pytest.raises(ConfigError, match="generator"):
        plan.for_component("generator")


def test_impossible_plan_raises_budget_error_naming_component():
    with pytest.raises(BudgetError, match="matcher") as info:
        plan_budget(1e-4, DELTA, [request("matcher", 1.0, 1.0, 100_000)])
    assert "100000 steps" in str(info.value) and "fewer iterations" in str(info.value)
    with pytest.raises(BudgetError, match="expert"):
        plan_budget(1e-4, DELTA, [request("generator", 0.0, 1.0, 10), request("expert", 1.0, 1.0, 100_000)])


@pytest.mark.parametrize("fractions", [(0.2, 0.6, 0.4), (0.2, 0.2, 0.2), (0.5, 0.5, 0.0001)])
def test_fractions_must_sum_to_one(fractions):
    reqs = [request(n, f, 0.1, 100) for n, f in zip(("generator", "matcher", "expert"), fractions)]
    with pytest.raises(ConfigError, match=r"budget\.generator \+ budget\.matcher \+ budget\.expert = .*sum to 1"):
        plan_budget(1.0, DELTA, reqs)


@pytest.mark.parametrize("epsilon", [0.0, -1.0, math.nan, math.inf, 1e6])
def test_epsilon_must_be_positive_and_finite(epsilon):
    with pytest.raises(ConfigError, match="epsilon"):
        plan_budget(epsilon, DELTA, [request("matcher", 1.0, 0.1, 100)])


@pytest.mark.parametrize("bad", [dict(fraction=1.2), dict(fraction=-0.1), dict(sample_rate=0.0), dict(steps=0)])
def test_invalid_requests_are_config_errors(bad):
    fields = dict(name="matcher", fraction=1.0, sample_rate=0.1, steps=10, sensitivity="s") | bad
    with pytest.raises(ConfigError, match="matcher"):
        plan_budget(1.0, DELTA, [ComponentRequest(**fields)])


def test_check_delta():
    check_delta(1e-5, 50_000)
    with pytest.raises(ConfigError, match=r"delta=0\.001 is not below 1/N=0\.001 for N=1000 training records"):
        check_delta(1e-3, 1000)
    with pytest.raises(ConfigError, match="e.g. 1e-07"):
        check_delta(1e-5, 1_000_000)
    with pytest.raises(ConfigError):
        plan_budget(1.0, 1.0, [request("matcher", 1.0, 0.1, 10)])


def test_planner_speed_three_components_10k_steps():
    reqs = [request("generator", 0.2, 0.01, 10_000), request("matcher", 0.6, 1.0, 10_000), request("expert", 0.2, 0.1, 10_000)]
    start = time.perf_counter()
    plan = plan_budget(1.0, DELTA, reqs)
    elapsed = time.perf_counter() - start
    assert 0.98 <= plan.epsilon <= 1.0
    assert elapsed < 10.0  # ~1 s measured on 2 cores; generous for a shared machine


def test_noise_plan_is_frozen_and_serialisable():
    plan = plan_budget(1.0, DELTA, [request("matcher", 1.0, 0.1, 100)])
    assert isinstance(plan, NoisePlan)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.epsilon = 2.0  # type: ignore[misc]
    assert json.loads(json.dumps(plan.to_dict()))["multipliers"] == plan.multipliers


# --- mechanisms ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad", [dict(noise_multiplier=0.0), dict(noise_multiplier=math.nan), dict(sample_rate=1.5), dict(sample_rate=0.0), dict(steps=0), dict(steps=2.5)]
)
def test_mechanism_validation_names_component(bad):
    fields = dict(component="expert", noise_multiplier=1.0, sample_rate=0.1, steps=10) | bad
    with pytest.raises(ConfigError, match="expert"):
        SubsampledGaussian(**fields)


def test_mechanism_roundtrip_and_immutability():
    m = SubsampledGaussian("matcher", np.float64(2.0), 0.1, np.int64(50), "L2 clip C of each record's embedding")
    assert type(m.noise_multiplier) is float and type(m.steps) is int
    assert SubsampledGaussian.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    assert m.noise_std(0.5) == 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.steps = 3  # type: ignore[misc]
    with pytest.raises(ConfigError, match="unknown keys"):
        SubsampledGaussian.from_dict(m.to_dict() | {"sigma": 1.0})


# --- analysis --------------------------------------------------------------------------------


def test_compose_epsilon_sample_rate_one_is_exact_gaussian_composition():
    # T Gaussian releases with multiplier sigma compose to one with sigma / sqrt(T).
    mechs = [SubsampledGaussian("matcher", 20.0, 1.0, 100)]
    eps = compose_epsilon(mechs, DELTA)
    exact = analytic_gaussian_epsilon(20.0 / math.sqrt(100), DELTA)
    assert exact - 1e-9 <= eps <= exact * (1 + 1e-3)


def test_compose_epsilon_independent_of_split_and_order():
    a = SubsampledGaussian("matcher", 3.0, 0.1, 100)
    b = SubsampledGaussian("expert", 5.0, 0.05, 300)
    split = [SubsampledGaussian("matcher", 3.0, 0.1, 60), b, SubsampledGaussian("matcher", 3.0, 0.1, 40)]
    assert compose_epsilon([a, b], DELTA) == compose_epsilon(split, DELTA) == compose_epsilon([b, a], DELTA)
    assert compose_epsilon([], DELTA) == 0.0
    assert compose_epsilon([a, b], DELTA, "rdp") >= compose_epsilon([a, b], DELTA)


def test_compose_epsilon_matches_dp_accounting_and_opacus_prv():
    mechs = [SubsampledGaussian("g", 50.0, 1.0, 200), SubsampledGaussian("m", 2.0, 0.01, 2000), SubsampledGaussian("e", 8.0, 0.2, 300)]
    ours = compose_epsilon(mechs, DELTA)
    assert ours == pytest.approx(dp_accounting_pld(mechs, DELTA, interval=1e-5), rel=1e-3)
    # A second implementation: opacus PRV's bracket [upper - 2 eps_error, upper] holds ours.
    eps_error = 0.01
    upper = opacus_prv_upper(mechs, DELTA, eps_error)
    assert upper - 2 * eps_error <= ours <= upper


def test_pld_discretisation_is_fine_and_pessimistic():
    """The default interval's bound is within 0.05 % of a 100x finer one, and never below it
    (a coarser pessimistic grid only rounds towards more privacy loss)."""
    mechs = [SubsampledGaussian("g", 3.0, 1.0, 1), SubsampledGaussian("m", 4.0, 0.1, 300)]
    interval = analysis.pld_interval(mechs, DELTA)
    assert 1e-5 < interval <= analysis.INTERVAL_MAX
    default = compose_epsilon(mechs, DELTA)
    fine = compose_epsilon(mechs, DELTA, interval=interval / 100)
    coarse = compose_epsilon(mechs, DELTA, interval=0.05)
    assert fine <= default <= fine * (1 + 5e-4)
    assert coarse > default


def test_plan_with_many_steps_meets_the_target():
    """The pessimistic rounding of every step adds up (excess ~1.2 T interval^2): with 10^5
    matching steps a search on a fixed coarse grid overestimated epsilon by >10 % and could
    not reach the target. Intervals shrink with sqrt(T), so the plan meets it exactly."""
    plan = plan_budget(1.0, DELTA, [request("counts", 0.1, 1.0, 1), request("matcher", 0.9, 0.1, 100_000)])
    assert 0.98 <= plan.epsilon <= 1.0
    assert plan.pld_interval <= analysis.INTERVAL_STEPS / math.sqrt(100_001)
    assert dp_accounting_pld(plan.mechanisms, DELTA, interval=1e-5) == pytest.approx(plan.epsilon, rel=1e-3)


def test_pld_failure_is_reported_not_hidden():
    tiny = [SubsampledGaussian("matcher", 0.05, 1.0, 1000)]  # epsilon in the hundreds of thousands
    with pytest.raises(AccountingError, match="matcher|0.05"):
        compose_epsilon(tiny, DELTA)
    report = PrivacyLedger(tiny).report(DELTA)
    assert report.accountant == "rdp" and report.epsilon == report.epsilon_rdp > 1000
    assert "PLD unavailable" in report.note


def test_unknown_accountant_and_bad_delta():
    m = [SubsampledGaussian("m", 1.0, 0.1, 10)]
    with pytest.raises(ConfigError, match="accountant"):
        compose_epsilon(m, DELTA, "gdp")
    with pytest.raises(ConfigError, match="delta"):
        compose_epsilon(m, 0.0)


# --- ledger ------------------------------------------------------------------------------------


def ledger_of(*mechs):
    ledger = PrivacyLedger()
    for m in mechs:
        ledger.declare(m)
    return ledger


def test_ledger_json_roundtrip_reproduces_report(tmp_path):
    ledger = ledger_of(
        SubsampledGaussian("generator", 4.0, 1.0, 1, "L2 norm of each record's feature embedding"),
        SubsampledGaussian("matcher", 6.0, 0.1, 200, "L2 clip C of each record's embedding"),
        SubsampledGaussian("matcher", 8.0, 0.1, 100, "L2 clip C of each record's embedding"),
        SubsampledGaussian("expert", 1.1, 0.02, 500, "per-sample gradient clip"),
    )
    path = tmp_path / "privacy_ledger.json"
    # What a run writes: the report with the ledger's format keys.
    path.write_text(json.dumps(ledger_document(ledger, ledger.report(DELTA).to_dict())))
    loaded = PrivacyLedger.load_json(path)
    assert loaded.mechanisms == ledger.mechanisms
    assert loaded.components() == ("generator", "matcher", "expert")
    assert loaded.report(DELTA).to_dict() == ledger.report(DELTA).to_dict()
    assert json.loads(path.read_text())["adjacency"] == "add/remove one record"
    report = ledger.report(DELTA)
    assert report.accountant == "pld" and report.delta == DELTA
    assert [r["component"] for r in report.mechanisms] == ["generator", "matcher", "matcher", "expert"]
    assert set(report.mechanisms[0]) == {"component", "noise_multiplier", "sample_rate", "steps", "sensitivity",
                                         "release_id"}
    assert {r["release_id"] for r in report.mechanisms} == {ledger.release_id} == {loaded.release_id}


def test_empty_ledger_reports_zero():
    report = PrivacyLedger().report(DELTA)
    assert report.epsilon == 0.0 and report.epsilon_rdp == 0.0 and report.mechanisms == []


@pytest.mark.parametrize(
    "mech",
    [
        SubsampledGaussian("m", 1.0, 1.0, 1),
        SubsampledGaussian("m", 0.8, 0.01, 1000),
        SubsampledGaussian("m", 30.0, 0.5, 2000),
        SubsampledGaussian("m", 5.0, 0.001, 10_000),
    ],
)
def test_rdp_never_below_pld(mech):
    report = PrivacyLedger([mech]).report(DELTA)
    assert report.accountant == "pld"
    assert report.epsilon_rdp >= report.epsilon > 0


def test_two_mechanisms_cost_more_than_either():
    a = SubsampledGaussian("generator", 3.0, 1.0, 1)
    b = SubsampledGaussian("matcher", 5.0, 0.1, 500)
    both = ledger_of(a, b).report(DELTA).epsilon
    assert both > ledger_of(a).report(DELTA).epsilon
    assert both > ledger_of(b).report(DELTA).epsilon


@pytest.mark.parametrize("sigma", [0.7, 1.0, 2.0, 5.0])
def test_single_gaussian_matches_analytic_gaussian(sigma):
    report = ledger_of(SubsampledGaussian("generator", sigma, 1.0, 1)).report(DELTA)
    exact = analytic_gaussian_epsilon(sigma, DELTA)
    assert report.epsilon == pytest.approx(exact, rel=1e-3)
    assert report.epsilon >= exact - 1e-9  # an upper bound


def test_accountant_disagreement_is_a_bug(monkeypatch):
    ledger = ledger_of(SubsampledGaussian("matcher", 2.0, 0.1, 100))
    monkeypatch.setattr(analysis, "rdp_epsilon", lambda mechanisms, delta: 0.01)
    with pytest.raises(RuntimeError, match="accountant disagreement") as info:
        ledger.report(DELTA)
    assert not isinstance(info.value, DpgdError)


def test_declare_rejects_non_records():
    with pytest.raises(TypeError):
        PrivacyLedger().declare({"component": "m"})  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        PrivacyLedger.from_dict({"adjacency": "replace one", "mechanisms": []})


def test_a_replan_keeps_fixed_records_and_composes_them():
    """plan_budget(fixed=...): the released record keeps its noise, the rest is calibrated so
    that everything together still meets the target."""
    from dpgd.privacy import SubsampledGaussian, plan_budget
    from dpgd.privacy.analysis import pld_epsilon

    first = plan_budget(1.0, DELTA, [request("counts", 0.1, 1.0, 1), request("generator", 0.5, 1.0, 1),
                                     request("expert", 0.2, 0.05, 200), request("matcher", 0.2, 0.1, 200)])
    counts = first.mechanisms_for("counts")
    again = plan_budget(1.0, DELTA, [request("generator", 0.5 / 0.7, 1.0, 1), request("matcher", 0.2 / 0.7, 0.1, 200)],
                        fixed=counts)
    assert again.mechanisms_for("counts") == counts and again.multipliers["counts"] == first.multipliers["counts"]
    assert "expert" not in again.multipliers
    assert again.multipliers["generator"] < first.multipliers["generator"]  # the dropped share went here
    assert again.multipliers["matcher"] < first.multipliers["matcher"]
    assert 0.98 <= pld_epsilon(again.mechanisms, DELTA) <= 1.0
    assert isinstance(counts[0], SubsampledGaussian)
    with pytest.raises(ConfigError, match="both fixed and requested"):
        plan_budget(1.0, DELTA, [request("counts", 1.0, 1.0, 1)], fixed=counts)

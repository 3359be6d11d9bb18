"""End-to-end runs through ``dpgd.train.run`` on digits: privacy contract and utility order."""

from __future__ import annotations

import json
import math

import pytest

import dpgd
import dpgd.results
import dpgd.train as train
from dpgd.errors import BudgetError, ConfigError
from dpgd.privacy import PrivacyLedger
from reference_accountants import dp_accounting_pld

# matcher.max_iterations=200: the iterations rule resolves to 200 here (its ladder is
# tested in test_iterations.py); 800 non-private iterations would triple these runs.
FAST = ["logger=none", "evaluation.epochs=100", "evaluation.runs=2", "matcher.max_iterations=200"]


@pytest.fixture(scope="module")
def run_with(tmp_path_factory):
    from dpgd.config import compose

    cache = {}

    def _run(*overrides: str):
        if overrides not in cache:
            cfg = compose(*FAST, *overrides)
            cache[overrides] = train.run(cfg, tmp_path_factory.mktemp("run"))
        return cache[overrides]

    return _run


def test_ledger_recomputes_to_the_reported_epsilon(run_with):
    result = run_with("experiment=ndpdc", "epsilon=2", "matcher.iterations=100")
    ledger = json.loads((result.release_dir / "privacy_ledger.json").read_text())
    assert ledger["mechanisms"] == result.results["privacy"]["mechanisms"]
    assert PrivacyLedger.from_dict(ledger).report(ledger["delta"]).epsilon == pytest.approx(ledger["epsilon"])
    counts, mechanism = ledger["mechanisms"]
    assert counts["component"] == "counts" and counts["steps"] == 1 and counts["sample_rate"] == 1.0
    assert mechanism["component"] == "matcher" and mechanism["steps"] == 100
    assert mechanism["sample_rate"] == pytest.approx(0.1)
    # An independent accountant call on the listed mechanisms, not through dpgd.privacy.
    assert ledger["accountant"] == "pld" and 0 < ledger["pld_interval"] <= 1e-3
    assert ledger["epsilon"] == pytest.approx(dp_accounting_pld(ledger["mechanisms"], ledger["delta"]), rel=1e-3)
    assert 2 * 0.98 <= ledger["epsilon"] <= 2.0
    assert ledger["epsilon_rdp"] >= ledger["epsilon"]
    assert result.results["privacy"]["adjacency"] == "add/remove one record"


def test_results_contract_and_artifacts(run_with):
    result = run_with("experiment=ndpdc", "epsilon=2", "matcher.iterations=100")
    on_disk = json.loads((result.release_dir / "results.json").read_text())
    assert on_disk["dataset"] == "digits" and on_disk["method"] == "ndpdc"
    assert on_disk["epsilon_target"] == 2.0 and on_disk["delta"] == 1e-5
    assert len(on_disk["test_acc_runs"]) == 2
    assert on_disk["test_acc_mean"] == pytest.approx(sum(on_disk["test_acc_runs"]) / 2)
    private = json.loads((result.private_dir / "diagnostics.json").read_text())
    assert set(private["timings_s"]) >= {"plan", "data", "counts", "init", "match", "eval"}
    assert private["peak_memory_mb"] > 0 and "timings_s" not in on_disk
    distilled = dpgd.load_distilled(result.output_dir)
    assert len(distilled) == 100 and distilled.class_names[0] == "0"
    assert distilled.config["epsilon"] == 2.0
    assert (result.release_dir / "distilled.png").stat().st_size > 100


@pytest.mark.slow
def test_non_private_run_records_infinity_as_strict_json(run_with):
    result = run_with("experiment=dm", "matcher.iterations=100")
    text = (result.release_dir / "results.json").read_text()
    strict = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))
    assert strict["privacy"]["epsilon"] == "inf" and strict["epsilon_target"] == "inf"
    assert float(strict["privacy"]["epsilon"]) == math.inf
    assert dpgd.results.read_results(result.release_dir)["privacy"]["epsilon"] == math.inf
    assert result.results["method"] == "dm"  # non-private by definition: no "(non-private)" suffix


@pytest.mark.slow
def test_dm_beats_noise_initialisation(run_with):
    dm = run_with("experiment=dm", "matcher.iterations=100")
    noise = run_with("experiment=dm", "matcher=none")
    assert noise.test_acc_mean < 20  # chance is 10%
    assert dm.test_acc_mean > noise.test_acc_mean + 40


@pytest.mark.slow
def test_more_budget_gives_better_ndpdc(run_with):
    high = run_with("experiment=ndpdc", "epsilon=10")
    low = run_with("experiment=ndpdc", "epsilon=0.1")
    assert high.test_acc_mean > low.test_acc_mean + 15


def test_impossible_plan_stops_before_reading_data(tmp_path, monkeypatch, compose):
    def must_not_load(*args, **kwargs):
        raise AssertionError("private data was read before the plan was checked")

    monkeypatch.setattr(train, "load_dataset", must_not_load)
    cfg = compose("logger=none", "experiment=ndpdc", "epsilon=0.05", "matcher.iterations=100000",
                  "matcher.sample_rate=1.0")
    with pytest.raises(BudgetError, match="matcher"):
        train.run(cfg, tmp_path)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["budget.matcher=0.9"], "sum to 1"),
        (["epsilon=0"], "epsilon=0"),
        (["matcher=dm"], "epsilon=inf"),
        (["experiment=ndpdc", "expert=dp_sgd", "generator=dp_merf"], "budget.generator=0"),
        (["init=kmeans", "generator=none", "expert=none", "matcher.extractors=random"], "needs a generator"),
        (["generator=none", "init=noise", "budget.generator=0", "budget.expert=0.5", "budget.matcher=0.5"],
         "expert=dp_sgd is pre-trained on the generated pool"),
        (["generator=none", "init=noise", "expert=none", "budget=ndpdc"], "pool_trained needs a generated pool"),
        (["pool_nets.epochs=2"], "epochs >= snapshots"),
    ],
)
def test_bad_settings_are_refused_before_any_stage(tmp_path, compose, overrides, message, monkeypatch):
    def must_not_load(*args, **kwargs):
        raise AssertionError("private data was read before the settings were judged")

    monkeypatch.setattr(train, "load_dataset", must_not_load)
    cfg = compose("logger=none", *overrides)
    with pytest.raises(ConfigError, match=message):
        train.run(cfg, tmp_path)
    assert not list(tmp_path.rglob("results.json"))


def test_dpgeng_ledger_composes_generator_matcher_and_expert(run_with):
    # configs/debug/short.yaml: the default method shortened (pool 100 per class, 50 iterations).
    # expert.finetune=all: the DP-SGD expert runs whatever its predicted noise-to-signal.
    result = run_with("epsilon=1", "debug=short", "expert.finetune=all")
    privacy = result.results["privacy"]
    assert result.results["method"] == "dpgeng"
    assert sorted(m["component"] for m in privacy["mechanisms"]) == ["counts", "expert", "generator", "matcher",
                                                                     "selection"]
    assert result.results["stages"]["expert"]["finetune"] == "all"
    generator = next(m for m in privacy["mechanisms"] if m["component"] == "generator")
    assert generator["sample_rate"] == 1.0 and generator["steps"] == 1  # DP-MERF: one release
    assert 0.98 <= privacy["epsilon"] <= 1.0
    stages = result.results["stages"]
    assert stages["generate"]["pool_size"] == 1000
    assert stages["generate"]["pool_test_acc"] > 40  # a DP-MERF pool at epsilon 0.5 or so
    assert set(result.diagnostics["timings_s"]) >= {"generate", "init", "expert", "match", "select", "eval"}
    assert result.test_acc_mean > 40


def test_auto_expert_skips_fine_tuning_at_epsilon_1_and_replans_its_share(run_with):
    """Digits at epsilon 1: a DP-SGD step's predicted noise-to-signal is ~40 (all) / ~8 (head),
    above expert.max_noise_to_signal=4, so the expert is pool network 0 and its share goes to
    the generator and the matcher; the released counts keep the noise they were drawn with."""
    from dpgd.budget import plan_run, replan_without
    from dpgd.config import compose, typed

    # expert.steps=200 (the default; debug=short's 50 put the head's ratio at ~4.2, so the
    # secret count noise flipped the choice to head in ~1 run of 10). Not trained: no cost.
    result = run_with("epsilon=1", "debug=short", "expert.steps=200")
    privacy = result.results["privacy"]
    assert sorted(m["component"] for m in privacy["mechanisms"]) == ["counts", "generator", "matcher", "selection"]
    assert 0.98 <= privacy["epsilon"] <= 1.0
    expert = result.results["stages"]["expert"]
    assert expert["finetune"] == "none" and expert["noise_to_signal_head"] > 4
    assert expert["noise_to_signal_all"] == pytest.approx(
        expert["noise_to_signal_head"] * math.sqrt(154506 / 5130), rel=1e-6)  # same sigma, q, N
    assert expert["test_acc"] == pytest.approx(result.results["stages"]["generate"]["pool_test_acc"])
    before = plan_run(typed(compose(*FAST, "epsilon=1", "debug=short", "expert.steps=200")))  # the plan before data
    sigma = {m["component"]: m["noise_multiplier"] for m in privacy["mechanisms"]}
    assert sigma["counts"] == before.multipliers["counts"]
    assert sigma["generator"] < before.multipliers["generator"] and sigma["matcher"] < before.multipliers["matcher"]
    # The selection keeps its fraction of what the counts left; the expert's share went to the
    # generator and the matcher only: the run used exactly the re-planned sigma.
    replanned = replan_without(typed(compose(*FAST, "epsilon=1", "debug=short", "expert.steps=200")), before, "expert")
    assert sigma["selection"] == pytest.approx(replanned.multipliers["selection"], rel=1e-12)


def test_once_matching_with_pool_expert_ledger_and_snr(run_with):
    """DP-GenG v2's parts: targets released once per pool extractor (q=1), the pool network as
    the expert (no DP-SGD, no expert record), SNR of the targets in the public results."""
    result = run_with("epsilon=1", "debug=short", "matcher.release=once", "matcher.embedding=pooled",
                      "expert=pool")
    privacy = result.results["privacy"]
    assert sorted(m["component"] for m in privacy["mechanisms"]) == ["counts", "generator", "matcher", "selection"]
    [matcher] = [m for m in privacy["mechanisms"] if m["component"] == "matcher"]
    assert matcher["sample_rate"] == 1.0 and matcher["steps"] == 1 * 3  # pool_nets.count x snapshots
    assert 0.98 <= privacy["epsilon"] <= 1.0
    stages = result.results["stages"]
    # the expert is pool network 0 itself: the same test accuracy as the pool report's network
    assert stages["expert"]["test_acc"] == pytest.approx(stages["generate"]["pool_test_acc"])
    match = stages["match"]
    # SNR bound = N_c / (sigma sqrt(d)) averaged over classes, d = 128 pooled channels
    counts = result.results["class_counts"]["per_class"]  # rounded: hence the tolerance
    per_class = [c / (matcher["noise_multiplier"] * math.sqrt(128)) for c in counts]
    assert match["snr_bound"] == pytest.approx(sum(per_class) / len(per_class), rel=5e-3)
    assert 0 <= match["shrinkage_weight"] <= 1 and match["snr"] >= 0
    assert result.test_acc_mean > 40


def test_delta_is_judged_on_the_released_count_before_any_other_stage(tmp_path, compose, monkeypatch):
    """delta < 1/N needs N, which is private: it is checked on the noisy count, right after
    the count release and before the generator runs."""
    import dpgd.pipeline as pipeline

    def must_not_generate(*args, **kwargs):
        raise AssertionError("the generator ran before delta was judged")

    monkeypatch.setattr(pipeline, "generate_pool", must_not_generate)
    with pytest.raises(ConfigError, match="delta=0.01 is not below 1/N"):
        train.run(compose("logger=none", "delta=0.01"), tmp_path)


def test_epsilon_inf_runs_the_same_pipeline_without_noise(tmp_path, compose, monkeypatch):
    """epsilon=inf is the non-private upper bound of the SAME method: every stage runs,
    matching keeps Poisson sampling and clipping with sigma 0, nothing is recorded."""
    import dpgd.matching.loop as loop

    sigmas = []
    real_release = loop.release_noisy_class_sums

    def spy(embeddings, labels, num_classes, clip_norm, noise_multiplier, noise_generator):
        sigmas.append(noise_multiplier)
        return real_release(embeddings, labels, num_classes, clip_norm, noise_multiplier, noise_generator)

    monkeypatch.setattr(loop, "release_noisy_class_sums", spy)
    result = train.run(compose("logger=none", "debug=tiny", "epsilon=inf"), tmp_path)
    privacy = result.results["privacy"]
    assert privacy["non_private"] and not privacy["dp"] and privacy["mechanisms"] == []
    assert math.isinf(privacy["epsilon"]) and not result.results["class_counts"]["noisy"]
    assert sigmas and set(sigmas) == {0.0}
    assert result.diagnostics["match"]["iterations"] == len(sigmas)
    assert "match" not in result.results["stages"]  # no noise: no signal-to-noise (and no Infinity)
    assert result.results["stages"]["expert"]["finetune"] == "all"  # sigma 0: nothing to fear


def test_sample_rates_cap_the_expected_batch_read_from_the_released_counts(compose):
    """At 4,000 records a class the matcher samples group_size records a class per iteration
    and the expert batch_size per step; a small data set keeps the configured rates."""
    import torch

    from dpgd.budget import plan_run, replan_without, sample_rates_for
    from dpgd.config import typed
    from dpgd.counts import ClassCounts

    cfg = typed(compose("epsilon=1"))
    large = ClassCounts(torch.full((10,), 4000.0), noisy=True, noise_std=18.0)
    rated = sample_rates_for(cfg, large)
    assert rated.matcher.sample_rate == pytest.approx(cfg.matcher.group_size * 10 / 40000)
    assert rated.expert.sample_rate == pytest.approx(cfg.expert.batch_size / 40000)
    small = sample_rates_for(cfg, ClassCounts(torch.full((10,), 144.0), noisy=True, noise_std=18.0))
    assert (small.matcher.sample_rate, small.expert.sample_rate) == (cfg.matcher.sample_rate, cfg.expert.sample_rate)
    unset = typed(compose("epsilon=1", "matcher.group_size=null", "expert.batch_size=null"))
    kept = sample_rates_for(unset, large)
    assert (kept.matcher.sample_rate, kept.expert.sample_rate) == (unset.matcher.sample_rate, unset.expert.sample_rate)
    # Re-planned for the smaller rates: the same epsilon with less noise per release.
    before = plan_run(cfg)
    after = replan_without(rated, before, None)
    assert after.multipliers["counts"] == before.multipliers["counts"]
    assert after.multipliers["matcher"] < before.multipliers["matcher"] / 3
    assert after.epsilon == pytest.approx(before.epsilon, rel=0.02) and after.epsilon <= 1.0


def test_the_ledger_records_the_matcher_rate_derived_from_the_released_counts(run_with):
    result = run_with("experiment=ndpdc", "epsilon=1", "matcher.iterations=100", "matcher.group_size=5")
    [matcher] = [m for m in result.results["privacy"]["mechanisms"] if m["component"] == "matcher"]
    released_total = result.results["class_counts"]["total"]  # rounded: hence the tolerance
    assert matcher["sample_rate"] == pytest.approx(5 * 10 / released_total, rel=1e-3)
    assert 0.98 <= result.results["privacy"]["epsilon"] <= 1.0

"""The DP selection along the matching trajectory: its release, its ledger record, its choice."""

from __future__ import annotations

import math

import pytest
import torch

import dpgd.train as train
from dpgd import selection
from dpgd.config import EvaluationConfig, MatcherConfig, ModelConfig, SelectionConfig
from dpgd.counts import release_class_counts
from dpgd.distilled import DistilledSet
from dpgd.errors import ConfigError
from dpgd.evaluation import train_fresh_network
from dpgd.privacy import ReleaseLog

TINY = ["logger=none", "debug=tiny"]


@pytest.fixture
def run_cfg(compose, tmp_path, one_torch_thread):
    def _run(*overrides: str, folder: str = "run"):
        return train.run(compose(*TINY, *overrides), tmp_path / folder)

    return _run


def test_candidates_are_evenly_spaced_from_the_start_to_the_end():
    assert selection.candidate_iterations(200, 3) == [0, 100, 200]
    assert selection.candidate_iterations(200, 5) == [0, 50, 100, 150, 200]
    assert selection.candidate_iterations(10, 2) == [0, 10]
    assert selection.candidate_iterations(3, 8) == [0, 1, 2, 3]  # more candidates than iterations
    with pytest.raises(ConfigError, match="at least 2"):
        selection.candidate_iterations(200, 1)


def test_declared_sensitivity_counts_the_deduplicated_candidates():
    short = selection.privacy_request(SelectionConfig(candidates=8), MatcherConfig(iterations=3))
    assert "sqrt(3)" in short.sensitivity and "sqrt(7)" not in short.sensitivity
    assert "sqrt(1)" in selection.privacy_request(SelectionConfig(), MatcherConfig()).sensitivity


def test_gain_release_adds_noise_of_std_sigma_sqrt_k_minus_1_once_to_the_differences():
    generator = torch.Generator().manual_seed(0)
    draws = []
    for _ in range(4000):
        correct = torch.tensor([100.0, 200.0, 350.0], dtype=torch.float64)
        releases = ReleaseLog(selection.COMPONENT)
        gains, std = selection.release_gains(correct, 5.0, generator, releases)
        assert releases.sigmas == [5.0]
        assert correct.tolist() == [0.0, 0.0, 0.0]  # the exact counts are wiped
        assert gains[0] == 0.0  # the start's own gain: exact by definition, no noise
        draws.append(gains[1:])
    draws = torch.stack(draws)
    assert std == pytest.approx(5.0 * math.sqrt(2))
    assert torch.allclose(draws.mean(0), torch.tensor([100.0, 250.0], dtype=torch.float64), atol=0.6)
    assert torch.allclose(draws.std(0), torch.full((2,), 5.0 * math.sqrt(2), dtype=torch.float64), rtol=0.05)
    # Two candidates (the default): one difference with noise std sigma, not 2 sigma.
    _, two = selection.release_gains(torch.tensor([1.0, 2.0], dtype=torch.float64), 5.0, generator)
    assert two == pytest.approx(5.0)
    exact, none = selection.release_gains(torch.tensor([7.0, 2.0], dtype=torch.float64), None, generator)
    assert none == 0.0 and exact.tolist() == [0.0, -5.0]


def test_one_record_moves_each_gain_by_at_most_one(digits, one_torch_thread):
    """The sensitivity the noise is scaled to: removing any one record from the private
    split changes every gain over the start by -1, 0 or +1 (real networks, all records)."""
    good, wrong = _sets(digits)
    networks = [train_fresh_network(*s.expanded(), digits, ModelConfig(), EvaluationConfig(), epochs=5,
                                              init_seed=0, generator=torch.Generator().manual_seed(0),
                                              device=torch.device("cpu")) for s in (wrong, good)]
    with torch.no_grad():
        hits = torch.stack([(net(digits.train_images).argmax(1) == digits.train_labels).double() for net in networks])
    whole = hits.sum(1)[1:] - hits.sum(1)[0]
    without_each = (hits.sum(1, keepdim=True) - hits)  # column i: the counts without record i
    moves = (without_each[1:] - without_each[0]) - whole[:, None]
    assert moves.abs().max() == 1.0 and set(moves.unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert (moves == 0).any()  # records both networks classify alike move nothing


def _sets(digits):
    """A set that teaches the classes (10 real train images per class) and the same images
    with every label shifted by one (teaches them wrong): a test input, not a release."""
    index = torch.cat([torch.nonzero(digits.train_labels == c).flatten()[:10] for c in range(digits.num_classes)])
    images, labels = digits.train_images[index], digits.train_labels[index]
    return DistilledSet(images, labels), DistilledSet(images, (labels + 1) % digits.num_classes)


@pytest.mark.parametrize("noise_multiplier", [None, 2.0])
def test_selection_keeps_the_candidate_that_classifies_the_train_split(digits, one_torch_thread, noise_multiplier):
    good, wrong = _sets(digits)
    counts = release_class_counts(digits.train_labels, digits.num_classes, None, torch.Generator())
    releases = ReleaseLog(selection.COMPONENT)
    chosen_set, chosen = selection.select(
        {0: wrong, 7: good}, digits, SelectionConfig(epochs=30), ModelConfig(), EvaluationConfig(),
        noise_multiplier=noise_multiplier, counts=counts, seed=0, device=torch.device("cpu"),
        noise_generator=torch.Generator().manual_seed(1), releases=releases, progress=False,
    )
    assert chosen.iterations == [0, 7] and chosen.chosen_iteration == 7 and chosen_set is good
    start_gain, good_gain = chosen.noisy_gain
    assert start_gain == 0.0 and good_gain > 50  # gain noise std 2 of ~1,400 records: 0.14 points
    assert releases.sigmas == ([] if noise_multiplier is None else [noise_multiplier])
    assert chosen.noise_std == (0.0 if noise_multiplier is None else pytest.approx(2.0))


def test_private_run_declares_one_selection_release_and_publishes_its_choice(run_cfg):
    result = run_cfg("experiment=dpgeng")
    records = [r for r in result.results["privacy"]["mechanisms"] if r["component"] == "selection"]
    [record] = records
    assert (record["sample_rate"], record["steps"]) == (1.0, 1)
    published = result.results["stages"]["select"]
    assert published["iterations"] == [0, 10]  # debug=tiny: 10 matching iterations
    assert published["chosen_iteration"] in published["iterations"]
    assert published["gain_noise_std"] == pytest.approx(record["noise_multiplier"])  # one gain: sensitivity 1
    assert published["noisy_gain"][0] == 0.0 and len(published["noisy_gain"]) == 2
    assert record["noise_multiplier"] > 5  # a small share of epsilon 1
    privacy = result.results["privacy"]
    assert privacy["epsilon"] <= result.results["epsilon_target"] + 1e-9


@pytest.mark.parametrize("overrides", [["selection=none"], ["experiment=ndpdc"], ["experiment=dpgeng_init_only"]])
def test_no_selection_record_without_selection_or_matching(run_cfg, overrides):
    result = run_cfg(*overrides)
    components = {r["component"] for r in result.results["privacy"]["mechanisms"]}
    assert "selection" not in components and "select" not in result.results["stages"]
    assert result.results["privacy"]["epsilon"] > 0.9  # its share is spent by the others


@pytest.mark.parametrize("overrides, message", [
    (["selection.candidates=1"], "selection.candidates=1"),
    (["budget.selection=0"], "budget.selection=0"),
    (["budget.selection=0.95"], "their sum below 1"),
    (["selection.name=best"], "selection=best is unknown"),
])
def test_bad_selection_settings_fail_before_any_budget_is_spent(compose, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        train.run(compose(*TINY, *overrides), tmp_path / "run")

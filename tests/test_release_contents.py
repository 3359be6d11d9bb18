"""Whole private runs, read against what really ran: every Gaussian release drawn, every
DP stream's seed, every matching batch, the released files.

Tiny DP-GenG runs (every DP component: counts, DP-MERF, expert DP-SGD, matching,
selection) with secret noise and one public seed, made once for the module (two at
most); spies wrap the real functions and only read their arguments and results.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest
import torch

import dpgd.train as train
from binomial_fit import assert_binomial
from dpgd import counts as class_counts
from dpgd import expert as expert_module
from dpgd import selection
from dpgd.errors import ConfigError
from dpgd.generators import dp_merf
from dpgd.matching import loop
from dpgd.privacy.components import ReleaseLog
from dpgd.results import release_dir
from reference_accountants import dp_accounting_pld
from release_scan import assert_counts_published_noisy

pytestmark = pytest.mark.privacy

RUN = ["logger=none", "debug=tiny", "experiment=dpgeng", "expert.finetune=all", "generator.cache=false",
       "pool_nets.cache=false", "evaluation.epochs=1", "pool_nets.epochs=1", "pool_nets.snapshots=1",
       "selection.epochs=1"]
# The DP streams of a DP-GenG run: each must be drawn from the run's secret noise source.
STREAMS = ("counts", "dp_merf noise", "expert noise", "expert sampling", "match noise", "match sampling",
           "selection noise")


class Spies:
    """What one run drew: releases (component, sigma), stream seeds, matching batches."""

    def __init__(self) -> None:
        self.releases: list[tuple[str, float]] = []
        self.seeds: dict[str, set[int]] = {}
        self.batches: list[torch.Tensor] = []  # per matching iteration: the batch's class sizes
        self.noisy_counts: torch.Tensor | None = None

    def seed(self, stream: str, generator: torch.Generator) -> None:
        self.seeds.setdefault(stream, set()).add(int(generator.initial_seed()))


def install_spies(monkeypatch: pytest.MonkeyPatch, current: list[Spies]) -> None:
    """Wrap the release functions (looked up where the pipeline calls them)."""
    real_record = ReleaseLog.record
    real_counts = class_counts.release_class_counts
    real_embedding = dp_merf.release_embedding
    real_sums = loop.release_noisy_class_sums
    real_batches = loop.poisson_batches
    real_gains = selection.release_gains
    real_optimizer, real_loader = expert_module.DPOptimizer, expert_module.DPDataLoader

    def record(self, noise_multiplier):
        current[-1].releases.append((self.component, float(noise_multiplier)))
        return real_record(self, noise_multiplier)

    def counts(labels, num_classes, noise_multiplier, generator, releases=None):
        current[-1].seed("counts", generator)
        released = real_counts(labels, num_classes, noise_multiplier, generator, releases)
        current[-1].noisy_counts = released.values.clone()
        return released

    def embedding(sums, noise_multiplier, generator):
        current[-1].seed("dp_merf noise", generator)
        return real_embedding(sums, noise_multiplier, generator)

    def class_sums(embeddings, labels, num_classes, clip_norm, noise_multiplier, noise_generator):
        current[-1].seed("match noise", noise_generator)
        return real_sums(embeddings, labels, num_classes, clip_norm, noise_multiplier, noise_generator)

    def batches(labels, sample_rate, generator):
        current[-1].seed("match sampling", generator)
        for index in real_batches(labels, sample_rate, generator):
            current[-1].batches.append(torch.bincount(labels[index], minlength=int(labels.max()) + 1))
            yield index

    def gains(correct, noise_multiplier, generator, releases=None):
        current[-1].seed("selection noise", generator)
        return real_gains(correct, noise_multiplier, generator, releases)

    class Optimizer(real_optimizer):
        def __init__(self, *args, generator=None, **kwargs):
            current[-1].seed("expert noise", generator)
            super().__init__(*args, generator=generator, **kwargs)

    def loader(dataset, sample_rate, generator):
        current[-1].seed("expert sampling", generator)
        return real_loader(dataset, sample_rate=sample_rate, generator=generator)

    monkeypatch.setattr(ReleaseLog, "record", record)
    monkeypatch.setattr(class_counts, "release_class_counts", counts)
    monkeypatch.setattr(dp_merf, "release_embedding", embedding)
    monkeypatch.setattr(loop, "release_noisy_class_sums", class_sums)
    monkeypatch.setattr(loop, "poisson_batches", batches)
    monkeypatch.setattr(selection, "release_gains", gains)
    monkeypatch.setattr(expert_module, "DPOptimizer", Optimizer)
    monkeypatch.setattr(expert_module, "DPDataLoader", loader)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``runs(k)``: the first k secret-noise runs of one config and seed, each (spies,
    results, run folder), made on first use (a test that needs one run pays for one)."""
    from dpgd.config import compose

    folder = tmp_path_factory.mktemp("runs")
    done: list[tuple[Spies, dict, Path]] = []

    def get(count: int) -> list[tuple[Spies, dict, Path]]:
        while len(done) < count:
            current = [Spies()]
            before = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                with pytest.MonkeyPatch.context() as monkeypatch:
                    install_spies(monkeypatch, current)
                    result = train.run(compose(*RUN), folder / f"run{len(done)}")
            finally:
                torch.set_num_threads(before)
            done.append((current[0], result.results, result.output_dir))
        return done[:count]

    return get


def test_every_dp_stream_is_secret_and_fresh_per_run(runs):
    """The public seed is the same: a stream drawn from it repeats across the two runs."""
    (first, results, _), (second, _, _) = runs(2)
    assert results["privacy"]["dp"] is True
    for stream in STREAMS:
        assert len(first.seeds.get(stream, ())) == 1 == len(second.seeds.get(stream, ())), stream
        assert first.seeds[stream] != second.seeds[stream], f"{stream} repeats across runs: not secret"


def test_a_run_composes_to_the_accountant_value_of_what_ran(runs):
    """The reported epsilon is dp-accounting's for the releases that were drawn (sample rates
    from the ledger; the Poisson tests check them), so an undeclared release or an
    understated step count cannot hide."""
    for spies, results, _ in runs(1):
        ledger = results["privacy"]["mechanisms"]
        rates = {record["component"]: record["sample_rate"] for record in ledger}
        drawn = Counter(spies.releases)
        assert {component for component, _ in drawn} == set(rates) == {
            "counts", "generator", "expert", "matcher", "selection"}
        ran = [{"noise_multiplier": sigma, "sample_rate": rates[component], "steps": steps}
               for (component, sigma), steps in drawn.items()]
        epsilon = results["privacy"]["epsilon"]
        assert epsilon == pytest.approx(dp_accounting_pld(ran, results["delta"], interval=1e-4 * epsilon), rel=1e-3)
        assert epsilon <= results["epsilon_target"]


def test_matching_samples_at_the_ledgers_rate(runs, digits):
    """Matching's batches follow Binomial(N_c, q) with q the ledger's matcher sample rate."""
    for spies, results, _ in runs(1):
        [record] = [r for r in results["privacy"]["mechanisms"] if r["component"] == "matcher"]
        assert len(spies.batches) == record["steps"]
        assert_binomial(torch.stack(spies.batches), digits.class_counts(), record["sample_rate"], level=1e-6)


def test_no_private_image_is_in_the_release(runs, digits):
    """No released image lies within a tenth of the typical distance between two private
    records of any private record (a copy, even slightly moved, would)."""
    train_images = digits.train_images.flatten(1)
    distances = torch.cdist(train_images, train_images)
    distances.fill_diagonal_(math.inf)
    typical = float(distances.min(1).values.median())
    for _, _, run_dir in runs(1):
        released = torch.load(release_dir(run_dir) / "distilled.pt", weights_only=True)["images"].flatten(1)
        assert float(torch.cdist(released, train_images).min()) > 0.1 * typical


def test_release_numbers_hold_no_exact_count(runs, digits):
    """The published counts are the released noisy ones, rounded; the exact N appears nowhere
    under release/, as an int or a float (:func:`release_scan.assert_counts_published_noisy`)."""
    for spies, _, run_dir in runs(1):
        assert_counts_published_noisy(release_dir(run_dir), spies.noisy_counts, digits.num_train)


def test_an_ipc_larger_than_a_class_is_refused_after_the_count_release_only(compose, tmp_path, monkeypatch):
    """Class sizes are private, so the check reads the released counts: the refusal has
    drawn the count release and nothing else, and wrote no release."""
    current = [Spies()]
    install_spies(monkeypatch, current)
    with pytest.raises(ConfigError, match=r"ipc=5000 is larger than class .* which has about \d+ training images.*"
                                          r"spent the count release \(budget.counts"):
        train.run(compose(*RUN, "ipc=5000"), tmp_path)
    assert [component for component, _ in current[0].releases] == ["counts"]
    assert not release_dir(tmp_path).exists()

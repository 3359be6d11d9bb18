"""The guarantee holds for what is published: secret noise, noisy counts, release vs private.

These tests attack the release the way a reader of the published files could: regenerate
noise from the public seed, look for exact counts, timings, attack results or cache paths
in ``release/``, and compose a sweep.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import dpgd.train as train
from dpgd import counts as class_counts
from dpgd.generators import dp_merf
from dpgd.privacy import PrivacyLedger
from dpgd.privacy.ledger import split_record
from dpgd.privacy.randomness import NoiseSource
from dpgd.report import composed_privacy, find_runs
from dpgd.results import RELEASE_DIR, release_dir
from dpgd.seeding import stage_generator

# Tiny settings (configs/debug/tiny.yaml): every stage runs, in seconds.
TINY = ["logger=none", "debug=tiny"]


@pytest.fixture
def run_cfg(compose, tmp_path, one_torch_thread):
    def _run(*overrides: str, folder: str = "run"):
        cfg = compose(*TINY, *overrides)
        return train.run(cfg, tmp_path / folder)

    return _run


# --- secret noise ------------------------------------------------------------------------


def test_secret_sources_differ_and_public_ones_repeat():
    first, second = NoiseSource.secret(), NoiseSource.secret()
    a = torch.randn(1000, generator=first.generator("match", "noise"))
    b = torch.randn(1000, generator=second.generator("match", "noise"))
    assert not torch.equal(a, b) and abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1])) < 0.15
    public = [torch.randn(1000, generator=NoiseSource.from_public_seed(0).generator("match", "noise")) for _ in range(2)]
    assert torch.equal(*public)
    # Streams of one source are independent of each other, and the key never shows.
    other = torch.randn(1000, generator=first.generator("match", "sampling"))
    assert not torch.equal(a, other)
    assert "key" not in repr(first) and first._key.hex() not in repr(first)
    assert NoiseSource.for_run(0, private=True, reproducible=False).is_secret
    assert not NoiseSource.for_run(0, private=True, reproducible=True).is_secret
    assert not NoiseSource.for_run(0, private=False, reproducible=False).is_secret


def _capture_dp_merf_release(monkeypatch, digits, noise: NoiseSource, sigma: float = 3.0):
    """Fit DP-MERF once, keeping the clean and the released class sums (wrapping the real
    release function, which still runs)."""
    from dpgd.config import GeneratorConfig, DpMerfConfig
    from dpgd.generators.registry import build_generator

    captured = {}
    real_release = dp_merf.release_embedding

    def spy(sums, noise_multiplier, generator):
        captured["clean"] = sums.clone()
        captured["released"] = real_release(sums, noise_multiplier, generator).clone()
        return sums

    monkeypatch.setattr(dp_merf, "release_embedding", spy)
    cfg = GeneratorConfig(name="dp_merf", pool_per_class=5, dp_merf=DpMerfConfig(steps=1, num_features=200))
    counts = class_counts.release_class_counts(digits.train_labels, digits.num_classes, None, torch.Generator())
    build_generator(cfg, progress=False).fit_and_sample(digits, sigma, 0, torch.device("cpu"), noise=noise,
                                                        counts=counts)
    return captured["clean"], captured["released"]


def _recover(released: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """The attack: subtract the noise regenerated from public information."""
    return released - sigma * torch.randn(released.shape, generator=generator)


def test_seed_recovery_attack_fails_on_secret_noise(monkeypatch, digits):
    sigma = 3.0
    clean, released = _capture_dp_merf_release(monkeypatch, digits, NoiseSource.secret(), sigma)
    # Everything public: the seed (0) and the stream names in the source code, both the old
    # seed-derived stream and the reproducible one.
    guesses = [stage_generator(0, "generator", "dp_merf", "noise"),
               NoiseSource.from_public_seed(0).generator("generator", "dp_merf", "noise")]
    for guess in guesses:
        error = (_recover(released, sigma, guess) - clean).std()
        # Wrong noise subtracted: the error is two independent noises, std sigma*sqrt(2).
        assert float(error) == pytest.approx(sigma * math.sqrt(2), rel=0.05)


def test_seed_recovery_attack_succeeds_on_reproducible_noise(monkeypatch, digits):
    """The same attack recovers the clean sums when noise comes from the seed: the test above can fail."""
    sigma = 3.0
    clean, released = _capture_dp_merf_release(monkeypatch, digits, NoiseSource.from_public_seed(0), sigma)
    guess = NoiseSource.from_public_seed(0).generator("generator", "dp_merf", "noise")
    assert float((_recover(released, sigma, guess) - clean).abs().max()) < 1e-4


def test_two_runs_with_one_seed_release_different_noise(run_cfg):
    first = run_cfg("experiment=ndpdc", folder="a")
    second = run_cfg("experiment=ndpdc", folder="b")
    assert first.results["seed"] == second.results["seed"] == 0
    assert not torch.equal(first.distilled.images, second.distilled.images)
    assert first.results["release_id"] != second.results["release_id"]
    assert first.results["privacy"]["dp"] and "secret" in first.results["privacy"]["noise"]


def test_reproducible_noise_repeats_and_is_marked_not_dp(run_cfg):
    first = run_cfg("experiment=ndpdc", "reproducible_noise=true", folder="a")
    second = run_cfg("experiment=ndpdc", "reproducible_noise=true", folder="b")
    assert torch.equal(first.distilled.images, second.distilled.images)
    assert first.results["class_counts"] == second.results["class_counts"]
    # Determinism: the saved sets and the ledgers (up to the per-run release id) are identical.
    saved = [torch.load(r.release_dir / "distilled.pt", weights_only=True) for r in (first, second)]
    assert torch.equal(saved[0]["images"], saved[1]["images"]) and torch.equal(saved[0]["labels"], saved[1]["labels"])

    def records(result):
        return [{k: v for k, v in m.items() if k != "release_id"} for m in result.results["privacy"]["mechanisms"]]

    assert records(first) == records(second) and records(first)
    privacy = first.results["privacy"]
    assert privacy["dp"] is False and "NOT differentially private" in privacy["noise"]


def test_expert_dp_sgd_draws_masks_and_noise_from_the_noise_source(digits, dp_inputs):
    """Same public seed and pool, two secret sources: different experts; one reproducible
    source twice: the same expert (so the difference comes from the source, not chance)."""
    from omegaconf import OmegaConf

    from dpgd.config import ExpertConfig, ModelConfig
    from dpgd.expert import train_expert

    from dpgd.models import seeded_model

    cfg = OmegaConf.structured(ExpertConfig(name="dp_sgd", steps=3, sample_rate=0.05, finetune="all"))
    start = seeded_model(ModelConfig(width=8), digits.channels, digits.num_classes, digits.image_size, 0)

    def weights(noise):
        expert = train_expert(cfg, start, digits, 2.0, torch.device("cpu"), progress=False, noise=noise,
                              counts=dp_inputs["counts"])
        return torch.cat([p.flatten() for p in expert.model.parameters()])

    assert not torch.equal(weights(NoiseSource.secret()), weights(NoiseSource.secret()))
    assert torch.equal(weights(NoiseSource.from_public_seed(0)), weights(NoiseSource.from_public_seed(0)))


# --- counts --------------------------------------------------------------------------------


def test_count_release_is_gaussian_with_sensitivity_one():
    labels = torch.arange(4).repeat_interleave(torch.tensor([50, 80, 120, 200]))
    generator = torch.Generator().manual_seed(0)
    draws = torch.stack([class_counts.release_class_counts(labels, 4, 10.0, generator).values for _ in range(2000)])
    assert torch.allclose(draws.mean(0), torch.tensor([50.0, 80.0, 120.0, 200.0]), atol=1.0)
    assert torch.allclose(draws.std(0), torch.full((4,), 10.0), rtol=0.06)
    [record] = class_counts.privacy_request().mechanisms(10.0)
    assert (record.component, record.sample_rate, record.steps) == ("counts", 1.0, 1)
    exact = class_counts.release_class_counts(labels, 4, None, generator)
    assert not exact.noisy and exact.values.tolist() == [50.0, 80.0, 120.0, 200.0]


def test_private_run_declares_and_publishes_noisy_counts(run_cfg, digits):
    result = run_cfg("experiment=dpgeng")
    records = result.results["privacy"]["mechanisms"]
    [counts_record] = [r for r in records if r["component"] == "counts"]
    assert counts_record["sample_rate"] == 1.0 and counts_record["steps"] == 1
    assert counts_record["noise_multiplier"] > 5  # a small share of epsilon 1: sigma in the tens
    published = result.results["class_counts"]
    exact = digits.class_counts().tolist()
    assert published["noisy"] and len(published["per_class"]) == digits.num_classes
    assert published["per_class"] != exact
    # The published counts are the released ones: within a few sigma of the truth.
    sigma = counts_record["noise_multiplier"]
    assert all(abs(p - e) < 5 * sigma + 1 for p, e in zip(published["per_class"], exact))
    assert "num_train" not in result.results


def test_non_private_run_uses_exact_counts_and_records_nothing(run_cfg, digits):
    result = run_cfg("experiment=dm", "matcher.iterations=5")
    assert result.results["privacy"]["mechanisms"] == []
    assert result.results["class_counts"] == {"per_class": digits.class_counts().tolist(),
                                              "total": digits.num_train, "noisy": False}


# --- release vs private ---------------------------------------------------------------------


def _release_text(run_dir: Path) -> str:
    return "\n".join(path.read_text() for path in sorted(release_dir(run_dir).glob("*.json")))


@pytest.mark.privacy
def test_release_folder_holds_no_attack_result_exact_count_timing_or_cache_path(run_cfg, digits, monkeypatch):
    from release_scan import assert_counts_published_noisy

    released_counts = []  # the run's count release first, then the attack's shadow runs'
    real_release = class_counts.release_class_counts

    def spy(*args, **kwargs):
        released_counts.append(real_release(*args, **kwargs))
        return released_counts[-1]

    monkeypatch.setattr(class_counts, "release_class_counts", spy)
    result = run_cfg("experiment=dpgeng", "mia=loss", "mia.population=100")
    run_dir = result.output_dir
    assert sorted(p.name for p in release_dir(run_dir).iterdir()) == [
        "distilled.png", "distilled.pt", "privacy_ledger.json", "results.json"]
    released = json.loads((release_dir(run_dir) / "results.json").read_text())
    forbidden = ("mia", "timings_s", "peak_memory_mb", "num_train", "cache_hit", "device", "seconds")
    assert not [key for key in forbidden if key in json.dumps(released)]
    text = _release_text(run_dir)
    cache_dir = str(Path(__import__("os").environ["DPGD_CACHE_DIR"]))
    assert cache_dir not in text and "pool-" not in text
    # The exact N nowhere, as an int or a float; the published counts are the noisy release.
    assert_counts_published_noisy(release_dir(run_dir), released_counts[0].values, digits.num_train)
    # The owner's files: attack results, ROC, per-record shadow scores, timings.
    private = run_dir / "private"
    assert (private / "mia.json").is_file() and (private / "mia_roc.png").is_file()
    assert (private / "mia_shadows").is_dir()
    diagnostics = json.loads((private / "diagnostics.json").read_text())
    assert diagnostics["num_train"] == digits.num_train and "match" in diagnostics["timings_s"]
    # The distilled set's stored config is the resolved (public) config, nothing more.
    payload = torch.load(release_dir(run_dir) / "distilled.pt", weights_only=True)
    assert set(payload) == {"factor", "images", "labels", "class_names", "mean", "std", "config"}


def test_mia_reaches_wandb_only_when_asked(compose, tmp_path, one_torch_thread):
    from wandb_records import iter_records, run_contents

    def keys(*overrides):
        out = tmp_path / "_".join(o.replace("=", "-") for o in overrides)
        cfg = compose(*[o for o in TINY if o != "logger=none"], "logger=wandb", "logger.mode=offline",
                      "experiment=ndpdc", "mia=loss", "mia.population=100", *overrides)
        train.run(cfg, out)
        [run_dir] = list((out / "wandb").glob("offline-run-*"))
        contents = run_contents(run_dir)
        logged = set(contents["summary"]) | {k for row in contents["history"] for k in row}
        # No console capture, no system metrics (memory and CPU time depend on N): with them
        # on, even a 2-second offline run writes a "stats" record.
        kinds = {record.WhichOneof("record_type") for record in iter_records(next(run_dir.glob("run-*.wandb")))}
        assert not kinds & {"stats", "output", "output_raw"}
        assert not list(run_dir.rglob("output.log"))
        return logged

    assert not [k for k in keys() if k.startswith("mia/")]
    assert "mia/auc" in keys("mia.log_to_wandb=true")


# --- sweeps ---------------------------------------------------------------------------------


def test_sweep_over_epsilon_composes_independent_releases(run_cfg, tmp_path):
    for epsilon in (1, 2):
        run_cfg("experiment=ndpdc", f"epsilon={epsilon}", folder=f"sweep/eps{epsilon}")
    runs = find_runs(tmp_path / "sweep")
    assert len(runs) == 2 and all(run.folder.name == RELEASE_DIR for run in runs)
    [info] = composed_privacy(runs).values()
    assert info["releases"] == 2 and info["shared_records_counted_once"] == 0
    ledger = PrivacyLedger()
    for run in runs:
        for record in run.results["privacy"]["mechanisms"]:
            ledger.declare(*split_record(record))
    assert info["epsilon"] == pytest.approx(ledger.report(1e-5).epsilon, rel=1e-3)
    assert info["epsilon"] > 2.0  # more than either run alone


def test_sweep_counts_a_shared_cached_pool_once(run_cfg, tmp_path):
    # Same epsilon and seed, other ipc: the second run reuses the first run's pool release.
    cache = f"generator.cache_dir={tmp_path / 'pools'}"
    first = run_cfg("experiment=dpgeng_init_only", "ipc=2", cache, folder="sweep/ipc2")
    second = run_cfg("experiment=dpgeng_init_only", "ipc=3", cache, folder="sweep/ipc3")

    def pool_release(result):
        [record] = [r for r in result.results["privacy"]["mechanisms"] if r["component"] == "generator"]
        return record["release_id"]

    # The pool belongs to the first run's release; the second run re-declares it under that id.
    assert pool_release(second) == pool_release(first) == first.results["release_id"]
    assert first.diagnostics["pool_cache_hit"] is False and second.diagnostics["pool_cache_hit"] is True
    [info] = composed_privacy(find_runs(tmp_path / "sweep")).values()
    assert info["shared_records_counted_once"] == 1 and info["releases"] == 2
    records = [*first.results["privacy"]["mechanisms"], *second.results["privacy"]["mechanisms"]]
    distinct = {json.dumps(record, sort_keys=True): record for record in records}.values()
    ledger = PrivacyLedger()
    for record in distinct:
        ledger.declare(*split_record(record))
    # The generator once, the two count releases each.
    assert sorted(r["component"] for r in ledger.records) == ["counts", "counts", "generator"]
    assert info["epsilon"] == pytest.approx(ledger.report(1e-5).epsilon, rel=1e-3)


def test_sweep_of_reproducible_runs_is_not_dp(run_cfg, tmp_path):
    for epsilon in (1, 2):
        run_cfg("experiment=ndpdc", f"epsilon={epsilon}", "reproducible_noise=true", folder=f"sweep/eps{epsilon}")
    [info] = composed_privacy(find_runs(tmp_path / "sweep")).values()
    assert math.isinf(info["epsilon"]) and "reproducible" in info["note"]


# --- the DP-component seam: what ran equals what was declared --------------------------------


def test_release_log_checks_each_release_against_the_declared_records():
    from dpgd.privacy import ReleaseLog, SubsampledGaussian

    declared = [SubsampledGaussian("matcher", 3.0, 0.1, 2, "C"), SubsampledGaussian("matcher", 2.0, 0.1, 1, "C")]
    log = ReleaseLog("matcher")
    for sigma in (3.0, 3.0, 2.0):
        log.record(sigma)
    log.check(declared)
    for ran in ([3.0, 3.0], [3.0, 3.0, 2.0, 2.0], [3.0, 2.0, 2.0], [3.0, 3.0, 0.2]):
        wrong = ReleaseLog("matcher", list(ran))
        with pytest.raises(RuntimeError, match="privacy bug: component 'matcher'"):
            wrong.check(declared)


def test_a_skipped_noisy_step_of_the_expert_fails_the_run(run_cfg, monkeypatch):
    """Inject a bug: opacus skips adding noise at one step; the run must stop, not report eps."""
    from opacus.optimizers import DPOptimizer

    real_skip = DPOptimizer._check_skip_next_step
    calls = []

    def skip_third(self, pop_next=True):
        calls.append(1)
        return len(calls) == 3 or real_skip(self, pop_next)

    monkeypatch.setattr(DPOptimizer, "_check_skip_next_step", skip_third)
    with pytest.raises(RuntimeError, match="privacy bug: component 'expert' ran 4 Gaussian releases"):
        run_cfg("experiment=dpgeng", "expert.finetune=all")

"""Noise schedules across iterations: planning, ledger records, matcher and expert use."""

from __future__ import annotations

import json

import pytest
import torch

from dpgd.errors import ConfigError
from dpgd.privacy import ComponentRequest, plan_budget, relative_schedule
from dpgd.privacy.schedules import expand
from reference_accountants import dp_accounting_pld

DELTA = 1e-5
KINDS = ("constant", "linear", "exponential", "step")
STEPS = 200


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def dp_inputs_for(dataset, sampling: bool = False) -> dict:
    """Reproducible noise (public seed: fine in a unit test) and exact counts for a stage."""
    from dpgd.counts import release_class_counts
    from dpgd.privacy.randomness import NoiseSource

    counts = release_class_counts(dataset.train_labels, dataset.num_classes, None, torch.Generator())
    if sampling:
        return {"sampling_generator": torch.Generator().manual_seed(2), "counts": counts}
    return {"noise": NoiseSource.from_public_seed(0), "counts": counts}


@pytest.mark.parametrize("kind", KINDS)
def test_relative_schedule_shapes(kind):
    pieces = relative_schedule(kind, STEPS, ratio=3.0, phases=3, pieces=20)
    assert sum(n for _, n in pieces) == STEPS
    values = expand(pieces)
    assert values[-1] == 1.0 and len(values) == STEPS
    assert all(a >= b for a, b in zip(values, values[1:]))  # never increasing
    if kind == "constant":
        assert pieces == ((1.0, STEPS),)
    else:
        assert values[0] == pytest.approx(3.0)
        assert len(pieces) == (3 if kind == "step" else 20)


def test_short_runs_and_bad_settings():
    assert len(relative_schedule("exponential", 5, 3.0, pieces=20)) == 5
    assert relative_schedule("linear", 1, 3.0) == ((1.0, 1),)
    for kwargs in ({"kind": "cosine"}, {"kind": "linear", "ratio": 0.5}, {"kind": "step", "phases": 0}):
        with pytest.raises(ConfigError):
            relative_schedule(steps=10, **kwargs)
    bad = ComponentRequest("matcher", 1.0, 0.1, 100, "C", ((2.0, 50), (1.0, 40)))
    with pytest.raises(ConfigError, match="cover 90 steps"):
        plan_budget(1.0, DELTA, [bad])


@pytest.mark.parametrize("kind", KINDS)
def test_planned_schedule_meets_the_budget_and_recomputes(kind):
    schedule = relative_schedule(kind, STEPS, ratio=3.0, phases=3, pieces=20)
    requests = [
        ComponentRequest("matcher", 0.7, 0.1, STEPS, "clip C", None if kind == "constant" else schedule),
        ComponentRequest("expert", 0.3, 0.05, 100, "clip C"),
    ]
    plan = plan_budget(1.0, DELTA, requests)
    assert 0.98 <= plan.epsilon <= 1.0
    # Independent recompute: dp-accounting's own accountant on the listed records.
    assert plan.epsilon == pytest.approx(dp_accounting_pld(plan.mechanisms, DELTA), rel=1e-3)
    records = plan.mechanisms_for("matcher")
    assert 1 <= len(records) <= 20 and sum(m.steps for m in records) == STEPS
    sigmas = plan.schedule_for("matcher")
    assert len(sigmas) == STEPS and sigmas[-1] == pytest.approx(plan.multipliers["matcher"])
    assert plan.for_component("expert") > 0  # constant components keep the float accessor
    if kind == "constant":
        assert plan.for_component("matcher") == sigmas[0] == sigmas[-1]
    else:
        assert sigmas[0] > sigmas[-1] and sigmas[0] == pytest.approx(3.0 * sigmas[-1])
        with pytest.raises(ConfigError, match="schedule"):
            plan.for_component("matcher")
    json.dumps(plan.to_dict())


def test_match_uses_and_logs_the_per_iteration_sigma(monkeypatch):
    from dpgd import matching
    from dpgd.config import DatasetConfig, MatcherConfig, ModelConfig
    from dpgd.data import load_dataset
    from dpgd.initialisation import initialise

    dataset = load_dataset(DatasetConfig(name="digits", max_train_per_class=30))
    used = []
    real_release = matching.release_noisy_class_sums

    def spy(embeddings, labels, num_classes, clip_norm, noise_multiplier, noise_generator):
        used.append(noise_multiplier)
        return real_release(embeddings, labels, num_classes, clip_norm, noise_multiplier, noise_generator)

    monkeypatch.setattr(matching.loop, "release_noisy_class_sums", spy)
    cfg = MatcherConfig(name="dp_feature", iterations=4, lr_images=10.0, sample_rate=0.2, dsa=False)
    start = initialise("noise", dataset, 1, 1.0, torch.Generator().manual_seed(0))
    logged = []
    schedule = [8.0, 6.0, 4.0, 2.0]
    for spec, expected in ((schedule, schedule), (lambda t: 5.0 - t, [5.0, 4.0, 3.0, 2.0]), (3.0, [3.0] * 4)):
        used.clear()
        logged.clear()
        extractors = matching.RandomExtractors(ModelConfig(width=8), 1, 10, (8, 8), torch.Generator().manual_seed(0),
                                               torch.device("cpu"))
        matching.match(start.images, start.labels, dataset, cfg, extractors=extractors, noise_multiplier=spec,
                       generator=torch.Generator().manual_seed(0), noise_generator=torch.Generator().manual_seed(1),
                       device=torch.device("cpu"),
                       on_iteration=lambda t, values: logged.append(values["sigma"]), progress=False,
                       **dp_inputs_for(dataset, sampling=True))
        assert used == expected and logged == expected
    with pytest.raises(ConfigError, match="entries"):
        matching.match(start.images, start.labels, dataset, cfg, extractors=extractors, noise_multiplier=[1.0, 2.0],
                       generator=torch.Generator(), noise_generator=torch.Generator(), device=torch.device("cpu"),
                       progress=False,
                       **dp_inputs_for(dataset, sampling=True))


def test_expert_sets_the_optimiser_sigma_every_step(monkeypatch):
    from omegaconf import OmegaConf
    from opacus.optimizers import DPOptimizer

    from dpgd.config import DatasetConfig, ExpertConfig, ModelConfig
    from dpgd.data import load_dataset
    from dpgd.expert import train_expert

    dataset = load_dataset(DatasetConfig(name="digits", max_train_per_class=20))
    seen = []
    real_add_noise = DPOptimizer.add_noise

    def spy(self):
        seen.append(self.noise_multiplier)
        return real_add_noise(self)

    monkeypatch.setattr(DPOptimizer, "add_noise", spy)
    from dpgd.models import seeded_model

    expert_cfg = OmegaConf.structured(ExpertConfig(name="dp_sgd", steps=5, sample_rate=0.2, finetune="all"))
    sigmas = [5.0, 4.0, 3.0, 2.0, 1.0]
    start = seeded_model(ModelConfig(width=8), dataset.channels, dataset.num_classes, dataset.image_size, 0)
    train_expert(expert_cfg, start, dataset, sigmas, torch.device("cpu"), progress=False, **dp_inputs_for(dataset))
    assert seen == sigmas


def test_scheduled_run_end_to_end(tmp_path, compose):
    import dpgd.train as train

    cfg = compose("experiment=ndpdc", "logger=none", "matcher.iterations=50", "matcher.noise_schedule.kind=exponential",
                  "matcher.noise_schedule.pieces=10", "evaluation.epochs=20", "evaluation.runs=1",
                  "dataset.max_train_per_class=60")
    result = train.run(cfg, tmp_path)
    privacy = json.loads((result.release_dir / "results.json").read_text())["privacy"]
    records = [m for m in privacy["mechanisms"] if m["component"] == "matcher"]
    assert len(records) == 10 and sum(m["steps"] for m in records) == 50
    assert records[0]["noise_multiplier"] > records[-1]["noise_multiplier"]
    assert privacy["epsilon"] <= 1.0
    ledger = json.loads((result.release_dir / "privacy_ledger.json").read_text())
    assert ledger["mechanisms"] == privacy["mechanisms"]


def test_head_finetuning_changes_only_the_classifier_and_still_adds_noise(monkeypatch, one_torch_thread):
    from omegaconf import OmegaConf
    from opacus.optimizers import DPOptimizer

    from dpgd.config import DatasetConfig, ExpertConfig, ModelConfig
    from dpgd.data import load_dataset
    from dpgd.expert import train_expert

    dataset = load_dataset(DatasetConfig(name="digits", max_train_per_class=20))
    from dpgd.config import PoolNetsConfig
    from dpgd.pool_networks import train_pool_networks

    pool_images, pool_labels = dataset.train_images[:50], dataset.train_labels[:50]
    start = train_pool_networks(PoolNetsConfig(epochs=1, snapshots=1, cache=False), 1, ModelConfig(width=8),
                                pool_images, pool_labels, dataset, seed=0, device=torch.device("cpu"),
                                cache_dir=None, progress=False).final()
    noisy_steps = []
    real_add_noise = DPOptimizer.add_noise
    monkeypatch.setattr(DPOptimizer, "add_noise", lambda self: (noisy_steps.append(self.noise_multiplier), real_add_noise(self)))

    def expert(finetune: str, steps: int):
        cfg = OmegaConf.structured(ExpertConfig(name="dp_sgd", steps=steps, sample_rate=0.2, finetune=finetune))
        return train_expert(cfg, start, dataset, 2.0, torch.device("cpu"), progress=False, **dp_inputs_for(dataset))

    pretrained = expert("head", 0).model.state_dict()
    head = expert("head", 4)
    assert noisy_steps == [2.0] * 4
    assert head.info["trained_weights"] == sum(p.numel() for p in head.model.classifier.parameters())
    for name, value in head.model.state_dict().items():
        if name.startswith("classifier."):
            assert not torch.equal(value, pretrained[name]), name
        else:
            assert torch.equal(value, pretrained[name]), name
    full = expert("all", 4)
    assert full.info["trained_weights"] == sum(p.numel() for p in full.model.parameters())
    assert not torch.equal(full.model.state_dict()["features.0.weight"], pretrained["features.0.weight"])


def test_unknown_finetune_choice_is_refused_by_the_plan(compose):
    """The plan is made before any data is read (tested in test_pipeline), so this fails early."""
    from dpgd.budget import plan_run

    cfg = compose("expert.finetune=last")
    with pytest.raises(ConfigError, match="expert.finetune=last is unknown"):
        plan_run(cfg)


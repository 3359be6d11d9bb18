"""Presets and the config layout: composition only (no data, no training)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from dpgd.config import SCHEMAS

CONFIGS = Path(str(files("dpgd.configs")))

PRESETS = {
    "paper_cifar10": ("cifar10", 32, 3),
    "paper_cifar100": ("cifar100", 32, 3),
    "paper_tinyimagenet": ("tinyimagenet", 64, 4),
    "paper_celeba": ("celeba", 32, 3),
}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_paper_preset_matches_the_published_protocol(compose, preset):
    dataset, size, depth = PRESETS[preset]
    cfg = compose(f"experiment={preset}")
    assert cfg.dataset.name == dataset
    assert cfg.dataset.image_size == size
    assert cfg.model.name == "convnet" and cfg.model.depth == depth and cfg.model.width == 128
    assert cfg.model.norm == "instancenorm"
    assert cfg.ipc == 50
    assert cfg.delta == pytest.approx(1e-5)
    ev = cfg.evaluation
    assert ev.name == "paper"
    assert (ev.lr, ev.momentum, ev.weight_decay, ev.batch_size, ev.epochs) == (0.01, 0.9, 5e-4, 256, 1000)
    assert ev.lr_drop_at_half and ev.dsa
    assert cfg.mia.name == "lira"
    # The DP-GenG pipeline from the dpgeng preset underneath; CIFAR's generator is PE over
    # public knowledge (the paper's route), the others' DP-MERF (no public data assumed).
    generator = "pe" if dataset.startswith("cifar") else "dp_merf"
    assert cfg.public.name == ("folder" if generator == "pe" else "none")
    assert (cfg.generator.name, cfg.init.name, cfg.matcher.name, cfg.expert.name) == (
        generator, "kmeans", "dp_feature", "dp_sgd")
    assert cfg.matcher.extractors == "pool_trained" and cfg.budget.name == "dpgeng"
    # k-means needs ipc * multi_formation^2 pool images per class.
    assert cfg.generator.pool_per_class >= cfg.ipc * cfg.init.multi_formation**2


def test_paper_preset_takes_command_line_overrides(compose):
    cfg = compose("experiment=paper_cifar10", "epsilon=10", "matcher.noise_schedule.kind=exponential")
    assert cfg.epsilon == 10 and cfg.matcher.noise_schedule.kind == "exponential"
    assert cfg.ipc == 50


def test_the_defaults_are_dpgeng_and_experiment_dpgeng_changes_nothing(compose):
    cfg = compose()
    assert (cfg.generator.name, cfg.init.name, cfg.budget.name, cfg.matcher.name, cfg.expert.name) == (
        "dp_merf", "kmeans", "dpgeng", "dp_feature", "dp_sgd")
    assert cfg.matcher.extractors == "pool_trained" and cfg.method == "dpgeng"
    assert compose("experiment=dpgeng") == cfg


@pytest.mark.parametrize("group", sorted(SCHEMAS))
def test_group_options_state_only_what_differs_from_the_schema(group):
    """One home for each default: an option file sets its name and its differences only."""
    schema = OmegaConf.to_container(OmegaConf.structured(SCHEMAS[group]))
    for path in sorted((CONFIGS / group).glob("*.yaml")):
        option = OmegaConf.to_container(OmegaConf.load(path))
        option.pop("defaults", None)
        restated = sorted(key for key, value in option.items() if key != "name" and value == schema[key])
        assert not restated, f"configs/{group}/{path.name} restates schema defaults: {restated}"


def test_debug_presets_shorten_any_preset_and_yield_to_the_command_line(compose):
    cfg = compose("experiment=paper_cifar10", "debug=tiny")
    assert (cfg.matcher.iterations, cfg.evaluation.epochs, cfg.generator.pool_per_class) == (10, 10, 30)
    assert cfg.ipc == 50 and cfg.evaluation.name == "paper"
    assert compose("debug=short", "matcher.iterations=7").matcher.iterations == 7


def test_cifar10_mini_preset_is_an_imagefolder_on_the_shared_slice(compose, monkeypatch):
    monkeypatch.setenv("DPGD_CIFAR10_MINI", "/data/slice")
    dataset = compose("dataset=cifar10_mini").dataset
    assert (dataset.name, dataset.root, dataset.image_size, dataset.channels) == ("imagefolder", "/data/slice", 32, 3)
    monkeypatch.delenv("DPGD_CIFAR10_MINI")
    assert compose("dataset=cifar10_mini").dataset.root == "../shared/data/cifar10-mini"


def test_compose_works_inside_an_initialised_hydra(compose):
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    with initialize_config_module(config_module="dpgd.configs", version_base="1.3"):
        outer = GlobalHydra.instance().hydra
        assert compose("experiment=ndpdc").method == "ndpdc"
        assert GlobalHydra.instance().hydra is outer


def test_public_presets_separate_what_public_knowledge_buys(compose):
    public = compose("experiment=dpgeng_public", "public.root=/pub")
    assert (public.public.name, public.public.root, public.generator.name, public.generator.pe.source) == (
        "folder", "/pub", "pe", "public")
    assert (public.init.name, public.matcher.extractors, public.expert.name) == ("kmeans", "pool_trained", "dp_sgd")
    ablation = compose("experiment=dpgeng_public_init_only", "public.root=/pub")
    assert (ablation.generator.name, ablation.matcher.name, ablation.expert.name) == ("pe", "none", "none")
    ndpdc = compose("experiment=ndpdc_public", "public.root=/pub")
    assert (ndpdc.generator.name, ndpdc.init.name, ndpdc.budget.name, ndpdc.matcher.extractors) == (
        "none", "noise", "ndpdc", "public")
    # The presets without public data stay as they are.
    assert compose("experiment=ndpdc").public.name == "none" and compose().public.name == "none"

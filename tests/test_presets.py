"""Paper-scale presets: composition only (no data, no training)."""

from __future__ import annotations

import pytest

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
    # The DP-GenG pipeline from the dpgeng preset underneath.
    assert (cfg.generator.name, cfg.init.name, cfg.matcher.name, cfg.expert.name) == (
        "dp_merf", "kmeans", "dp_feature", "dp_sgd")
    assert cfg.matcher.extractors == "pool_trained" and cfg.budget.name == "dpgeng"
    # k-means needs ipc * multi_formation^2 pool images per class.
    assert cfg.generator.pool_per_class >= cfg.ipc * cfg.init.multi_formation**2


def test_paper_preset_takes_command_line_overrides(compose):
    cfg = compose("experiment=paper_cifar10", "epsilon=10", "matcher.noise_schedule.kind=exponential")
    assert cfg.epsilon == 10 and cfg.matcher.noise_schedule.kind == "exponential"
    assert cfg.ipc == 50

"""The expert's fine-tuning rule (``expert.finetune=auto``): public inputs, three outcomes."""

from __future__ import annotations

import math

import pytest
import torch


def exact_counts_and_noise(dataset) -> dict:
    """Reproducible noise (public seed: fine in a unit test) and exact counts."""
    from dpgd.counts import release_class_counts
    from dpgd.privacy.randomness import NoiseSource

    counts = release_class_counts(dataset.train_labels, dataset.num_classes, None, torch.Generator())
    return {"noise": NoiseSource.from_public_seed(0), "counts": counts}


def test_auto_finetuning_follows_the_predicted_noise_to_signal():
    """sigma sqrt(weights) / (q N): all weights when low enough, else the head, else nothing;
    an explicit choice is kept whatever the prediction."""
    from omegaconf import OmegaConf

    from dpgd.config import ExpertConfig, ModelConfig
    from dpgd.expert import choose_finetuning
    from dpgd.models import seeded_model

    model = seeded_model(ModelConfig(width=8), 1, 10, (8, 8), 0)
    weights = sum(p.numel() for p in model.parameters())
    head = sum(p.numel() for p in model.classifier.parameters())

    def choice(sigma, records, finetune="auto"):
        cfg = OmegaConf.structured(ExpertConfig(sample_rate=0.1, finetune=finetune, max_noise_to_signal=4.0))
        return choose_finetuning(cfg, [sigma, sigma], model, records)

    low = choice(1.0, 10 * math.sqrt(weights))  # ratio exactly 1 for all weights
    assert low.finetune == "all" and low.noise_to_signal["all"] == pytest.approx(1.0)
    assert low.noise_to_signal["head"] == pytest.approx(math.sqrt(head / weights))
    assert choice(5.0, 10 * math.sqrt(weights)).finetune == "head"  # all: 5, head: 5 sqrt(head/weights) < 4
    assert choice(50.0, 10 * math.sqrt(weights)).finetune == "none"
    assert choice(50.0, 10 * math.sqrt(weights), finetune="all").finetune == "all"
    assert choice(0.0, 10.0).finetune == "all"  # epsilon=inf: no noise


def test_train_expert_refuses_an_unresolved_auto():
    from omegaconf import OmegaConf

    from dpgd.config import DatasetConfig, ExpertConfig, ModelConfig
    from dpgd.data import load_dataset
    from dpgd.errors import ConfigError
    from dpgd.expert import train_expert
    from dpgd.models import seeded_model

    dataset = load_dataset(DatasetConfig(name="digits", max_train_per_class=5))
    start = seeded_model(ModelConfig(width=8), 1, 10, (8, 8), 0)
    with pytest.raises(ConfigError, match="finetune=all or head"):
        train_expert(OmegaConf.structured(ExpertConfig(steps=1)), start, dataset, 1.0, torch.device("cpu"),
                     progress=False, **exact_counts_and_noise(dataset))

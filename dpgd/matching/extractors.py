"""Where matching's feature extractors come from: fresh random networks, or pool-trained ones.

Neither reads private data: random networks come from the public seed, pool-trained ones
(trained in :mod:`dpgd.pool_networks`) from the DP-generated pool (post-processing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn as nn

from dpgd.config import ModelConfig
from dpgd.errors import ConfigError
from dpgd.models import seeded_model


class ExtractorSource(Protocol):
    """Hands out the network to match through at each iteration."""

    def __call__(self, iteration: int) -> nn.Module: ...


@dataclass
class RandomExtractors:
    """A fresh randomly initialised network every iteration (NDPDC, DM)."""

    model_cfg: ModelConfig
    channels: int
    num_classes: int
    image_size: tuple[int, int]
    generator: torch.Generator
    device: torch.device

    def __call__(self, iteration: int) -> nn.Module:
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        net = seeded_model(self.model_cfg, self.channels, self.num_classes, self.image_size, seed)
        net.to(self.device)
        for parameter in net.parameters():
            parameter.requires_grad_(False)
        return net


class PoolTrainedExtractors:
    """Every snapshot of the pool networks (:mod:`dpgd.pool_networks`, DP-GenG): free by
    post-processing. Each iteration picks one at random from the run's generator, so
    matching draws from early (generic) and late (class-specific) features."""

    def __init__(self, networks: list[nn.Module], generator: torch.Generator) -> None:
        if not networks:
            raise ConfigError("matcher.extractors=pool_trained needs at least one pool network.")
        self.networks = list(networks)
        self.generator = generator

    def pick(self, iteration: int) -> int:
        """Index of the network to match through at ``iteration`` (one draw of the generator)."""
        return int(torch.randint(len(self.networks), (1,), generator=self.generator))

    def __call__(self, iteration: int) -> nn.Module:
        return self.networks[self.pick(iteration)]

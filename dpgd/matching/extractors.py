"""Where matching's feature extractors come from: fresh random networks, or pool-trained ones.

Neither reads private data: random networks come from the public seed, pool-trained ones
from the DP-generated pool (post-processing).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Protocol

import torch
import torch.nn as nn

from dpgd.config import ModelConfig
from dpgd.data import ImageDataset
from dpgd.errors import ConfigError
from dpgd.models import seeded_model
from dpgd.progress import progress_bar
from dpgd.seeding import derive_seed, stage_generator
from dpgd.training import POOL_RECIPE, train_on_pool

# Extractors train in checkpoint chunks, each a separate call: a constant lr, so a chunk
# boundary does not drop it.
EXTRACTOR_RECIPE = replace(POOL_RECIPE, lr_drop_at_half=False)


class ExtractorSource(Protocol):
    """Hands out the network to match through at each iteration."""

    def __call__(self, iteration: int) -> nn.Module: ...


def check_extractor_settings(num_extractors: int, checkpoints: int, epochs: int) -> None:
    """The pool-trained extractors' sizes (judged before any data is read, and again here)."""
    if num_extractors < 1 or checkpoints < 1 or epochs < checkpoints:
        raise ConfigError(
            "matcher.extractors=pool_trained needs num_extractors >= 1, extractor_checkpoints >= 1 and "
            f"extractor_epochs >= extractor_checkpoints (got {num_extractors}, {checkpoints}, {epochs})."
        )


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
    """Networks trained on the DP-generated pool (DP-GenG): free by post-processing.

    ``num_extractors`` networks with different seeds, each snapshotted at
    ``checkpoints`` evenly spaced epochs, so matching draws from early (generic) and late
    (class-specific) features. Each iteration picks one at random from the run's generator.
    """

    def __init__(
        self,
        model_cfg: ModelConfig,
        pool_images: torch.Tensor,
        pool_labels: torch.Tensor,
        dataset: ImageDataset,
        *,
        num_extractors: int,
        epochs: int,
        checkpoints: int,
        seed: int,
        generator: torch.Generator,
        device: torch.device,
        progress: bool = True,
    ) -> None:
        check_extractor_settings(num_extractors, checkpoints, epochs)
        self.generator = generator
        self.networks: list[nn.Module] = []
        bar = progress_bar(total=num_extractors * epochs, desc="extractors (pool)", disable=not progress, leave=False)
        for k in range(num_extractors):
            net = seeded_model(model_cfg, dataset.channels, dataset.num_classes, dataset.image_size,
                               derive_seed(seed, "extractors", k, "init"))
            train_gen = stage_generator(seed, "extractors", k, "train")
            chunk = epochs // checkpoints
            for c in range(checkpoints):
                span = chunk if c < checkpoints - 1 else epochs - chunk * (checkpoints - 1)
                train_on_pool(net, pool_images, pool_labels, epochs=span, recipe=EXTRACTOR_RECIPE,
                              generator=train_gen, device=device)
                bar.update(span)
                snapshot = copy.deepcopy(net).to(device).eval()
                for parameter in snapshot.parameters():
                    parameter.requires_grad_(False)
                self.networks.append(snapshot)
        bar.close()

    def to_payload(self) -> dict[str, object]:
        """The snapshots' weights (a run's checkpoint; post-processing of the DP pool)."""
        return {"networks": [{k: v.detach().cpu() for k, v in net.state_dict().items()} for net in self.networks]}

    @classmethod
    def from_payload(cls, data: dict, model_cfg: ModelConfig, dataset: ImageDataset, generator: torch.Generator,
                     device: torch.device) -> "PoolTrainedExtractors":
        source = cls.__new__(cls)
        source.generator = generator
        source.networks = []
        for weights in data["networks"]:
            net = seeded_model(model_cfg, dataset.channels, dataset.num_classes, dataset.image_size, 0)
            net.load_state_dict(weights)
            net.to(device).eval()
            for parameter in net.parameters():
                parameter.requires_grad_(False)
            source.networks.append(net)
        return source

    def __call__(self, iteration: int) -> nn.Module:
        return self.networks[int(torch.randint(len(self.networks), (1,), generator=self.generator))]

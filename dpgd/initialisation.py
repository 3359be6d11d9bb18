"""Starting point of the distilled set (the ``init`` group).

``noise`` draws standard Gaussian images (in normalised space), as NDPDC does; it reads no
private data. ``real`` copies a random real subset and is therefore allowed only with
``epsilon=inf`` (checked in :mod:`dpgd.validation`, and again here as a last guard).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dpgd.data import ImageDataset
from dpgd.errors import ConfigError


@dataclass
class DistilledSet:
    """The synthetic images being distilled (normalised space) and their labels."""

    images: torch.Tensor
    labels: torch.Tensor

    def for_class(self, label: int) -> torch.Tensor:
        return self.images[self.labels == label]


def class_balanced_labels(num_classes: int, ipc: int) -> torch.Tensor:
    """Labels ``[0]*ipc + [1]*ipc + ...``: the distilled set is ordered by class."""
    return torch.arange(num_classes).repeat_interleave(ipc)


def initialise(name: str, dataset: ImageDataset, ipc: int, epsilon: float, generator: torch.Generator) -> DistilledSet:
    labels = class_balanced_labels(dataset.num_classes, ipc)
    if name == "noise":
        shape = (len(labels), dataset.channels, *dataset.image_size)
        return DistilledSet(torch.randn(shape, generator=generator), labels)
    if name == "real":
        if math.isfinite(epsilon):
            raise ConfigError("init=real puts private images in the release; it needs epsilon=inf.")
        chosen = []
        for label in range(dataset.num_classes):
            index = torch.nonzero(dataset.train_labels == label).flatten()
            order = torch.randperm(len(index), generator=generator)[:ipc]
            chosen.append(index[order])
        picked = torch.cat(chosen)
        return DistilledSet(dataset.train_images[picked].clone(), labels)
    raise ConfigError(f"init={name} is unknown; choose noise or real.")

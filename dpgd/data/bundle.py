"""The one typed object every data set loader returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ImageDataset:
    """A labelled image data set held in memory as normalised float tensors.

    Images are ``float32`` of shape ``(N, C, H, W)`` already normalised with ``mean`` and
    ``std`` (per channel); labels are ``int64`` in ``[0, num_classes)``. Everything
    downstream (matching, evaluation, generators) works on these tensors, so loaders do all
    decoding and resizing once.
    """

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return int(self.train_images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.train_images.shape[2]), int(self.train_images.shape[3])

    @property
    def num_train(self) -> int:
        return int(self.train_images.shape[0])

    def class_counts(self) -> torch.Tensor:
        """Train images per class (shape ``(num_classes,)``)."""
        return torch.bincount(self.train_labels, minlength=self.num_classes)

    def denormalise(self, images: torch.Tensor) -> torch.Tensor:
        """Map normalised images back to ``[0, 1]`` pixel values (for grids and PNGs)."""
        mean = torch.tensor(self.mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        return (images * std + mean).clamp(0.0, 1.0)

"""``generator=real``: the private train set itself as the pool (non-private baseline).

It runs no DP mechanism and puts private images into everything built from the pool, so
the stage allows it only with ``epsilon=inf``; its pool is never cached or logged.
"""

from __future__ import annotations

import torch

from dpgd.counts import ClassCounts
from dpgd.data import ImageDataset
from dpgd.generators.base import Pool, PoolGenerator
from dpgd.privacy.components import ReleaseLog
from dpgd.privacy.randomness import NoiseSource


class RealPool(PoolGenerator):
    name = "real"
    non_private_only = True
    cacheable = False

    def __init__(self, cfg, progress: bool = True, curve=None) -> None:  # pool_per_class is not used
        self.cfg = cfg
        self.progress = progress
        self.curve = curve
        self.pool_per_class = 0

    def privacy_request(self) -> None:
        return None

    def fit_and_sample(
        self, dataset: ImageDataset, noise_multiplier: float | None, seed: int, device: torch.device,
        *, noise: NoiseSource, counts: ClassCounts, releases: ReleaseLog | None = None,
    ) -> Pool:
        del noise_multiplier, seed, device, noise, counts, releases
        return Pool(
            dataset.train_images.clone(), dataset.train_labels.clone(), (), synthetic=False,
            info={"fit_seconds": 0.0, "non_private": True},
        )

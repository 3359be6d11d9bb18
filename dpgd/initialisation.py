"""Starting point of the distilled set (the ``init`` group).

``noise`` draws standard Gaussian images (in normalised space), as NDPDC does; it reads no
private data. ``real`` copies a random real subset and is therefore allowed only with
``epsilon=inf`` (checked in :mod:`dpgd.validation`, and again here as a last guard).

``kmeans`` and ``random_pool`` fill the set from a DP-generated pool (DP-GenG's stage 2),
so they cost no privacy beyond the generator's (post-processing):

* ``kmeans``: per class, k-means on the pool in a feature space (the embedding of a
  ConvNet trained on the pool, or pixels); the pool image nearest each centroid is kept
  (each pool image at most once). Clusters cover the pool's modes, so the set starts
  diverse and typical.
* ``random_pool``: random pool images per class.

Multi-formation (factor m): each stored image packs m x m pool images, downscaled to
``1/m`` of the side, so ``ipc`` stored images hold ``ipc * m^2`` training images. The
stored (packed) images are what is distilled and released; :func:`expand_multi_formation`
un-packs them (upsampling each tile back to full size, differentiably) for everything
that trains or embeds on them: evaluation, and matching.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from dpgd.config import ModelConfig
from dpgd.data import ImageDataset
from dpgd.errors import ConfigError
from dpgd.evaluation import train_classifier
from dpgd.models import seeded_model
from dpgd.seeding import derive_seed, stage_generator

INIT_NAMES = ("noise", "real", "kmeans", "random_pool")
POOL_INITS = ("kmeans", "random_pool")
FEATURE_SPACES = ("pool_net", "pixels")
EMBED_BATCH = 1024


class InitSettings(Protocol):
    """The attributes of :class:`dpgd.config.InitConfig` (dataclass or DictConfig)."""

    name: str
    feature_space: str
    multi_formation: int
    kmeans_iters: int
    kmeans_restarts: int
    net_epochs: int
    net_lr: float
    net_batch_size: int


class PoolLike(Protocol):
    """What the pool inits read of :class:`dpgd.generators.Pool`."""

    images: torch.Tensor
    labels: torch.Tensor


@dataclass
class DistilledSet:
    """The synthetic images being distilled (normalised space) and their labels.

    With ``factor`` m > 1 each stored image packs m x m half-size (for m = 2) images of
    its label; :meth:`expanded` gives the m^2 full-size images per stored image.
    """

    images: torch.Tensor
    labels: torch.Tensor
    factor: int = 1

    def for_class(self, label: int) -> torch.Tensor:
        return self.images[self.labels == label]

    def expanded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) with every stored image un-packed (the identity for factor 1)."""
        return expand_multi_formation(self.images, self.labels, self.factor)


def class_balanced_labels(num_classes: int, ipc: int) -> torch.Tensor:
    """Labels ``[0]*ipc + [1]*ipc + ...``: the distilled set is ordered by class."""
    return torch.arange(num_classes).repeat_interleave(ipc)


def initialise(name: str, dataset: ImageDataset, ipc: int, epsilon: float, generator: torch.Generator) -> DistilledSet:
    """``noise`` or ``real``; pool-based inits go through :func:`initialise_from_pool`."""
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
    if name in POOL_INITS:
        raise ConfigError(
            f"init={name} builds the set from a generated pool; it needs a generator "
            "(e.g. generator=dp_merf) and initialise_from_pool."
        )
    raise ConfigError(f"init={name} is unknown; choose one of {', '.join(INIT_NAMES)}.")


def check_init(init_cfg: InitSettings, generator_name: str, image_size: Optional[tuple[int, int]] = None) -> None:
    """Settings checks that need no data (``image_size`` adds the multi-formation check)."""
    name = str(init_cfg.name)
    if name not in INIT_NAMES:
        raise ConfigError(f"init={name} is unknown; choose one of {', '.join(INIT_NAMES)}.")
    factor = int(init_cfg.multi_formation)
    if factor < 1:
        raise ConfigError(f"init.multi_formation={factor} must be 1 (off) or more (2 = four tiles per image).")
    if name in POOL_INITS:
        if str(generator_name) == "none":
            raise ConfigError(f"init={name} needs a generator; set generator=dp_merf (or dp_sgd, pe).")
        if str(init_cfg.feature_space) not in FEATURE_SPACES:
            raise ConfigError(
                f"init.feature_space={init_cfg.feature_space} is unknown; choose one of {', '.join(FEATURE_SPACES)}."
            )
    elif factor != 1:
        raise ConfigError(f"init.multi_formation={factor} applies to kmeans/random_pool only; set it to 1 for init={name}.")
    if image_size is not None and (image_size[0] % factor or image_size[1] % factor):
        raise ConfigError(
            f"init.multi_formation={factor} must divide the image size {tuple(image_size)}; use 1 or a divisor."
        )


# --- multi-formation ---------------------------------------------------------------


def pack_multi_formation(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Pack each run of ``factor^2`` consecutive images into one image (row-major tiles).

    Each image is downscaled (antialiased bilinear) to ``1/factor`` of the side.
    """
    if factor == 1:
        return images
    count, channels, height, width = images.shape
    per = factor * factor
    if count % per or height % factor or width % factor:
        raise ValueError(f"cannot pack {count} images of {height}x{width} into {factor}x{factor} tiles")
    tile_h, tile_w = height // factor, width // factor
    tiles = F.interpolate(images, size=(tile_h, tile_w), mode="bilinear", antialias=True, align_corners=False)
    tiles = tiles.view(count // per, factor, factor, channels, tile_h, tile_w)
    return tiles.permute(0, 3, 1, 4, 2, 5).reshape(count // per, channels, height, width).contiguous()


def expand_multi_formation(
    images: torch.Tensor, labels: torch.Tensor, factor: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Un-pack every stored image into ``factor^2`` full-size images (bilinear upsampling).

    Differentiable, so matching can run through it. Labels repeat per tile; the output is
    ordered stored image by stored image, tiles row-major.
    """
    if factor == 1:
        return images, labels
    count, channels, height, width = images.shape
    if height % factor or width % factor:
        raise ValueError(f"images of {height}x{width} do not split into {factor}x{factor} tiles")
    tile_h, tile_w = height // factor, width // factor
    tiles = images.reshape(count, channels, factor, tile_h, factor, tile_w).permute(0, 2, 4, 1, 3, 5)
    tiles = tiles.reshape(count * factor * factor, channels, tile_h, tile_w)
    full = F.interpolate(tiles, size=(height, width), mode="bilinear", align_corners=False)
    return full, labels.repeat_interleave(factor * factor)


# --- pool-based initialisation -----------------------------------------------------


def initialise_from_pool(
    init_cfg: InitSettings,
    pool: Optional[PoolLike],
    dataset: ImageDataset,
    ipc: int,
    model_cfg: ModelConfig,
    device: torch.device,
    seed: int,
    progress: bool = False,
) -> DistilledSet:
    """``kmeans`` or ``random_pool``: ``ipc`` stored images per class drawn from ``pool``.

    Reads only the pool (DP output) and public settings: post-processing.
    """
    name = str(init_cfg.name)
    if name not in POOL_INITS:
        raise ConfigError(f"init={name} does not use a pool; call initialise() for noise/real.")
    if pool is None:
        raise ConfigError(f"init={name} needs a generator; set generator=dp_merf (or dp_sgd, pe).")
    check_init(init_cfg, "pool", dataset.image_size)
    factor = int(init_cfg.multi_formation)
    per_class = ipc * factor * factor
    counts = torch.bincount(pool.labels, minlength=dataset.num_classes)
    if int(counts.min()) < per_class:
        cls = int(counts.argmin())
        raise ConfigError(
            f"init={name} needs ipc * multi_formation^2 = {per_class} pool images per class but class "
            f"{dataset.class_names[cls]!r} has {int(counts[cls])}; raise generator.pool_per_class."
        )
    if name == "random_pool":
        generator = stage_generator(seed, "init", "random_pool")
        picked = [
            torch.nonzero(pool.labels == c).flatten()[torch.randperm(int(counts[c]), generator=generator)[:per_class]]
            for c in range(dataset.num_classes)
        ]
    else:
        features = pool_features(init_cfg, pool, dataset, model_cfg, device, seed, progress)
        picked = []
        for c in range(dataset.num_classes):
            index = torch.nonzero(pool.labels == c).flatten()
            chosen = kmeans_nearest(
                features[index], per_class, int(init_cfg.kmeans_iters), int(init_cfg.kmeans_restarts),
                seed=_sklearn_seed(seed, c),
            )
            picked.append(index[chosen])
    images = pool.images[torch.cat(picked)].clone()
    return DistilledSet(
        pack_multi_formation(images, factor), class_balanced_labels(dataset.num_classes, ipc), factor=factor
    )


def _sklearn_seed(seed: int, label: int) -> int:
    """sklearn wants a 32-bit seed; one per class, derived from the run seed."""
    return derive_seed(seed, "init", "kmeans", label) % (2**32)


def pool_features(
    init_cfg: InitSettings,
    pool: PoolLike,
    dataset: ImageDataset,
    model_cfg: ModelConfig,
    device: torch.device,
    seed: int,
    progress: bool = False,
) -> torch.Tensor:
    """Features the k-means runs in: pixels, or the embedding of a ConvNet trained on the pool."""
    if str(init_cfg.feature_space) == "pixels":
        return pool.images.flatten(1)
    if int(init_cfg.net_epochs) < 1:
        raise ConfigError("init.net_epochs must be at least 1 for init.feature_space=pool_net.")
    model = seeded_model(
        model_cfg, dataset.channels, dataset.num_classes, dataset.image_size, derive_seed(seed, "init", "pool_net")
    )
    train_classifier(
        model, pool.images, pool.labels, epochs=int(init_cfg.net_epochs), lr=float(init_cfg.net_lr),
        momentum=0.9, weight_decay=5e-4, batch_size=int(init_cfg.net_batch_size), lr_drop_at_half=True,
        dsa=None, generator=stage_generator(seed, "init", "pool_net", "train"), device=device,
        progress=progress, desc="init pool net",
    )
    model.eval()
    with torch.no_grad():
        chunks = [model.embed(pool.images[s : s + EMBED_BATCH].to(device)).cpu()
                  for s in range(0, pool.images.shape[0], EMBED_BATCH)]
    return torch.cat(chunks)


def kmeans_nearest(features: torch.Tensor, k: int, iters: int, restarts: int, seed: int) -> torch.Tensor:
    """Indices of ``k`` distinct rows of ``features``: the row nearest each k-means centroid.

    Centroids claim rows greedily, closest pair first, so no row is chosen twice.
    """
    from sklearn.cluster import KMeans

    if iters < 1 or restarts < 1:
        raise ConfigError("init.kmeans_iters and init.kmeans_restarts must be at least 1.")
    data = features.detach().cpu().double().numpy()
    if k >= data.shape[0]:
        return torch.arange(data.shape[0])[:k]
    km = KMeans(n_clusters=k, n_init=restarts, max_iter=iters, random_state=seed).fit(data)
    distances = torch.cdist(torch.from_numpy(km.cluster_centers_), torch.from_numpy(data))  # (k, n)
    chosen = torch.full((k,), -1, dtype=torch.int64)
    taken = torch.zeros(data.shape[0], dtype=torch.bool)
    order = np.argsort(distances.flatten().numpy(), kind="stable")
    remaining = k
    for flat in order:
        centroid, row = divmod(int(flat), data.shape[0])
        if chosen[centroid] >= 0 or taken[row]:
            continue
        chosen[centroid] = row
        taken[row] = True
        remaining -= 1
        if remaining == 0:
            break
    return chosen

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

Either selection can then be matched to the whole pool (``init.pool_matching_iterations``;
:func:`dpgd.matching.to_pool.match_to_pool`, run by the pipeline): DM (random ConvNets, no
clipping, no noise) with the pool as its data, so the few stored images summarise the pool
instead of sampling it. It reads the pool and public seeds only: post-processing, free.

Multi-formation (factor m): each stored image packs m x m pool images, downscaled to
``1/m`` of the side (:func:`dpgd.distilled.pack_multi_formation`), so ``ipc`` stored
images hold ``ipc * m^2`` training images.
"""

from __future__ import annotations

import math
from typing import Optional, Protocol

import numpy as np
import torch

from dpgd.config import InitConfig
from dpgd.data import ImageDataset
from dpgd.distilled import DistilledSet, pack_multi_formation
from dpgd.errors import ConfigError
from dpgd.seeding import derive_seed, stage_generator

INIT_NAMES = ("noise", "real", "kmeans", "random_pool")
POOL_INITS = ("kmeans", "random_pool")
FEATURE_SPACES = ("pool_net", "pixels")
EMBED_BATCH = 1024


class PoolLike(Protocol):
    """What the pool inits read of :class:`dpgd.generators.Pool`."""

    images: torch.Tensor
    labels: torch.Tensor


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


def check_init(init_cfg: InitConfig, generator_name: str, image_size: Optional[tuple[int, int]] = None) -> None:
    """Settings checks that need no data (``image_size`` adds the multi-formation check)."""
    name = init_cfg.name
    if name not in INIT_NAMES:
        raise ConfigError(f"init={name} is unknown; choose one of {', '.join(INIT_NAMES)}.")
    factor = init_cfg.multi_formation
    if factor < 1:
        raise ConfigError(f"init.multi_formation={factor} must be 1 (off) or more (2 = four tiles per image).")
    if init_cfg.pool_matching_iterations < 0 or init_cfg.pool_matching_batch < 1:
        raise ConfigError("init.pool_matching_iterations must be 0 (off) or more and init.pool_matching_batch "
                          "at least 1.")
    if init_cfg.pool_matching_iterations and name not in POOL_INITS:
        raise ConfigError(f"init.pool_matching_iterations matches a pool selection to its pool; init={name} has "
                          "no pool. Use init=kmeans (with a generator) or set it to 0.")
    if name in POOL_INITS:
        if str(generator_name) == "none":
            raise ConfigError(f"init={name} needs a generator; set generator=dp_merf (or dp_sgd, pe).")
        if init_cfg.feature_space not in FEATURE_SPACES:
            raise ConfigError(
                f"init.feature_space={init_cfg.feature_space} is unknown; choose one of {', '.join(FEATURE_SPACES)}."
            )
    elif factor != 1:
        raise ConfigError(f"init.multi_formation={factor} applies to kmeans/random_pool only; set it to 1 for init={name}.")
    if image_size is not None and (image_size[0] % factor or image_size[1] % factor):
        raise ConfigError(
            f"init.multi_formation={factor} must divide the image size {tuple(image_size)}; use 1 or a divisor."
        )


# --- pool-based initialisation -----------------------------------------------------


def initialise_from_pool(
    init_cfg: InitConfig,
    pool: Optional[PoolLike],
    dataset: ImageDataset,
    ipc: int,
    seed: int,
    embedding: Optional[torch.nn.Module] = None,
) -> DistilledSet:
    """``kmeans`` or ``random_pool``: ``ipc`` stored images per class drawn from ``pool``.

    ``embedding`` is the network ``kmeans`` clusters in (``feature_space=pool_net``).

    Reads only the pool (DP output) and public settings: post-processing.
    """
    name = init_cfg.name
    if name not in POOL_INITS:
        raise ConfigError(f"init={name} does not use a pool; call initialise() for noise/real.")
    if pool is None:
        raise ConfigError(f"init={name} needs a generator; set generator=dp_merf (or dp_sgd, pe).")
    check_init(init_cfg, "pool", dataset.image_size)
    factor = init_cfg.multi_formation
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
        features = pool_features(init_cfg, pool, embedding)
        picked = []
        for c in range(dataset.num_classes):
            index = torch.nonzero(pool.labels == c).flatten()
            chosen = kmeans_nearest(
                features[index], per_class, init_cfg.kmeans_iters, init_cfg.kmeans_restarts,
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
    init_cfg: InitConfig,
    pool: PoolLike,
    embedding: Optional[torch.nn.Module],
) -> torch.Tensor:
    """Features the k-means runs in: pixels, or the embedding of a network trained on the
    pool (``embedding``: pool network 0, :mod:`dpgd.pool_networks`)."""
    if init_cfg.feature_space == "pixels":
        return pool.images.flatten(1)
    if embedding is None:
        raise ConfigError("init.feature_space=pool_net needs the pool networks (a generator).")
    device = next(embedding.parameters()).device
    with torch.no_grad():
        chunks = [embedding.embed(pool.images[s : s + EMBED_BATCH].to(device)).cpu()
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

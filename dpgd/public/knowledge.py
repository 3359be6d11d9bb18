"""The run's public knowledge: the public pool, the network pretrained on it, and its embedding.

:func:`prepare_public` builds a :class:`PublicKnowledge` from public inputs only: the folder
``public.root``, the run's architecture, and the private data set's PUBLIC shape
(:class:`PublicShape`: channels, image size, class count, normalisation constants). It is
never handed a private record, so nothing below can read one. The stages use it where the
paper uses public knowledge:

* PE (``generator=pe``, :mod:`dpgd.generators.pe_public`) draws candidates from the pool,
  varies a kept candidate into one of its nearest public neighbours, and finds every
  record's nearest candidate in :meth:`PublicKnowledge.embed`;
* the pool networks start from the pretrained features (:meth:`PublicKnowledge.weights`),
  so do the expert and the k-means embedding, which use pool network 0;
* ``matcher.extractors=public`` matches through the pretraining's snapshots;
* ``expert.finetune=lda`` releases noisy class sums in the public embedding and scores
  classes with the public labels' within- and between-class covariances
  (:func:`dpgd.expert.train_lda_expert`).

The embedding: the pretrained network's features, centred by their mean over the public
pool, scaled to unit norm, and projected on the leading principal components of the public
pool's (centred, unit) features. Every record's projection has norm at most 1. Computed
once per network and cached beside it.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from dpgd.config import ModelConfig, PublicConfig
from dpgd.models import frozen
from dpgd.public.pool import PublicPool, load_public_pool
from dpgd.public.pretrain import PublicNetwork, load_weights_file, network_for, pretrain
from dpgd.storage import atomic_torch_save, load_versioned

log = logging.getLogger("dpgd")

# Principal components kept by the embedding: neighbours and votes in 256 dimensions keep
# nearly all of the variance of a 2,048-value ConvNet feature map at an eighth of the cost.
EMBED_DIM = 256
EMBED_BATCH = 512
EMBED_VERSION = 3


@dataclass(frozen=True)
class PublicShape:
    """What public preparation may know of the private data set: its public shape."""

    channels: int
    image_size: tuple[int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def of(cls, dataset: Any) -> "PublicShape":
        return cls(int(dataset.channels), tuple(dataset.image_size), int(dataset.num_classes), tuple(dataset.mean),
                   tuple(dataset.std))


@dataclass
class PublicKnowledge:
    pool: PublicPool
    network: PublicNetwork
    shape: PublicShape
    model_cfg: ModelConfig
    device: torch.device
    # (M, EMBED_DIM) unit-norm-or-less embedding of every pool image, and the map it is in.
    embedding: torch.Tensor = field(repr=False, default_factory=lambda: torch.empty(0))
    center: torch.Tensor = field(repr=False, default_factory=lambda: torch.empty(0))
    components: torch.Tensor = field(repr=False, default_factory=lambda: torch.empty(0))
    # Variance of the public (centred, unit) features along each component.
    spectrum: torch.Tensor = field(repr=False, default_factory=lambda: torch.empty(0))
    # Median norm of the public pool's centred raw features: the public scale that turns a
    # head on raw features into one on (about) unit features (expert.finetune=lda).
    scale: float = 1.0
    # Within- and between-class covariances of the embedding over the public labels with at
    # least public.min_per_label images (both the total covariance when there are fewer
    # than two such labels, e.g. a flat folder with public.weights).
    within: torch.Tensor = field(repr=False, default_factory=lambda: torch.empty(0))
    between: torch.Tensor = field(repr=False, default_factory=lambda: torch.empty(0))
    info: dict[str, Any] = field(default_factory=dict)

    def images(self, index: torch.Tensor | None = None) -> torch.Tensor:
        """Pool images normalised like the private data set (float, CPU)."""
        return self.pool.normalised(self.shape.mean, self.shape.std, index)

    def weights(self, snapshot: int = -1) -> dict[str, torch.Tensor]:
        return self.network.snapshots[snapshot]

    def model(self, seed: int, snapshot: int = -1) -> nn.Module:
        """A network for the private classes: the pretrained features, a fresh head."""
        shape = self.shape
        return network_for(self.model_cfg, shape.channels, shape.num_classes, shape.image_size,
                           self.weights(snapshot), seed)

    def extractors(self) -> list[nn.Module]:
        """Every snapshot of the pretraining, frozen (``matcher.extractors=public``)."""
        return [frozen(self.model(0, s), self.device) for s in range(len(self.network.snapshots))]

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Raw features (the network's ``embed``) of normalised images, on the CPU."""
        net = self._feature_net()
        out = [net.embed(images[s : s + EMBED_BATCH].to(self.device)).cpu()
               for s in range(0, images.shape[0], EMBED_BATCH)]
        return torch.cat(out) if out else torch.empty(0, net.feature_dim)

    def project(self, features: torch.Tensor, dims: int | None = None) -> torch.Tensor:
        """Centred, unit-norm features on the leading ``dims`` components (norm <= 1)."""
        unit = torch.nn.functional.normalize(features - self.center, dim=1)
        components = self.components if dims is None else self.components[:dims]
        return unit @ components.T

    def embed(self, images: torch.Tensor, dims: int | None = None) -> torch.Tensor:
        return self.project(self.features(images), dims)

    def covariances(self, dims: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The public within- and between-class covariances on the first ``dims`` components."""
        return self.within[:dims, :dims], self.between[:dims, :dims]

    def neighbours(self, index: torch.Tensor, k: int) -> torch.Tensor:
        """``(len(index), k)`` pool indices: the ``k`` nearest pool images of each given pool
        image in the embedding, itself first."""
        k = max(1, min(int(k), self.embedding.shape[0]))
        out = []
        for start in range(0, index.shape[0], 1024):
            rows = self.embedding[index[start : start + 1024]]
            distance = torch.cdist(rows, self.embedding)
            distance[torch.arange(rows.shape[0]), index[start : start + 1024]] = -1.0  # itself first
            out.append(distance.topk(k, dim=1, largest=False).indices)
        return torch.cat(out) if out else torch.empty(0, k, dtype=torch.int64)

    def _feature_net(self) -> nn.Module:
        if not hasattr(self, "_net"):
            self._net = frozen(self.model(0), self.device)
        return self._net

    def describe(self) -> dict[str, Any]:
        """What results.json records (public: the files, the settings, the network's key)."""
        return {**self.pool.describe(), "network": self.network.key[:16],
                "weights_file": self.network.info.get("weights_file"),
                "pretrained_labels": len(self.network.label_names)}


def prepare_public(cfg: PublicConfig, shape: PublicShape, model_cfg: ModelConfig, *, device: torch.device,
                   cache_dir: Path | None, progress: bool = True) -> PublicKnowledge | None:
    """The run's public knowledge (None for ``public=none``), from public inputs only."""
    if cfg.name == "none":
        return None
    started = time.perf_counter()
    pool = load_public_pool(cfg.root, shape.channels, shape.image_size, cfg.min_images)
    loaded = time.perf_counter()
    if pool.skipped:
        log.warning("public pool: %d files could not be decoded and are left out", len(pool.skipped))
    if cfg.weights is not None:
        network = load_weights_file(cfg.weights, model_cfg, shape.channels, shape.image_size)
    else:
        network = pretrain(cfg, pool, model_cfg, shape.mean, shape.std, device=device,
                           cache_dir=cache_dir if cfg.cache else None, progress=progress)
    knowledge = PublicKnowledge(pool, network, shape, model_cfg, device)
    embedded = time.perf_counter()
    _fit_embedding(knowledge, cache_dir if cfg.cache else None, cfg.min_per_label)
    knowledge.info = {
        "load_seconds": round(loaded - started, 3),
        "pretrain_seconds": float(network.info.get("seconds", 0.0)) if not network.info.get("cache_hit") else 0.0,
        "pretrain_cache_hit": network.info.get("cache_hit"),
        "embed_seconds": round(time.perf_counter() - embedded, 3),
        "embed_cache_hit": knowledge.info.get("embed_cache_hit"),
    }
    log.info("public pool: %d images (%d labels used for pretraining), fingerprint %s", len(pool),
             len(network.label_names), pool.fingerprint[:16])
    return knowledge


def _fit_embedding(knowledge: PublicKnowledge, cache_dir: Path | None, min_per_label: int) -> None:
    """Centre, principal components, the pool's embedding and its class covariances (cached
    beside the network)."""
    key = hashlib.sha256(f"{EMBED_VERSION}|{knowledge.network.key}|{knowledge.pool.fingerprint}|"
                         f"{knowledge.shape}|{min_per_label}".encode()).hexdigest()
    path = None if cache_dir is None else Path(cache_dir) / "public" / f"embedding-{key[:32]}.pt"
    def restore(data: Mapping[str, Any]) -> bool:
        # A file missing a field fails here and is refitted below, which overwrites every field.
        knowledge.center, knowledge.components = data["center"], data["components"]
        knowledge.spectrum, knowledge.embedding = data["spectrum"], data["embedding"]
        knowledge.scale = float(data["scale"])
        knowledge.within, knowledge.between = data["within"], data["between"]
        return True

    if load_versioned(path, EMBED_VERSION, key, restore, "public-embedding"):
        knowledge.info["embed_cache_hit"] = True
        return
    features = []
    for start in range(0, len(knowledge.pool), 4096):
        index = torch.arange(start, min(start + 4096, len(knowledge.pool)))
        features.append(knowledge.features(knowledge.images(index)))
    raw = torch.cat(features).double()
    center = raw.mean(0)
    unit = torch.nn.functional.normalize(raw - center, dim=1)
    dims = min(EMBED_DIM, unit.shape[0], unit.shape[1])
    # Principal directions of the unit features (not re-centred: the unit vectors' mean is
    # small, and keeping the origin keeps every projection's norm at most 1).
    values, vectors = torch.linalg.eigh(unit.T @ unit / unit.shape[0])
    order = values.argsort(descending=True)[:dims]
    components = vectors[:, order].T
    knowledge.center = center.float()
    knowledge.components = components.float().contiguous()
    knowledge.spectrum = values[order].clamp(min=0.0).float()
    knowledge.embedding = (unit @ components.T).float().contiguous()
    knowledge.scale = float((raw - center).norm(dim=1).median())
    knowledge.within, knowledge.between = class_covariances(knowledge.embedding, knowledge.pool, min_per_label)
    knowledge.info["embed_cache_hit"] = False
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save({"version": EMBED_VERSION, "key": key, "center": knowledge.center, "components": knowledge.components,
                           "spectrum": knowledge.spectrum, "embedding": knowledge.embedding,
                           "scale": knowledge.scale, "within": knowledge.within, "between": knowledge.between},
                          path)


def class_covariances(embedding: torch.Tensor, pool: PublicPool, min_per_label: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Within-class covariance (pooled over the labels) and between-class covariance (of the
    label means) of the embedding, over labels with at least ``min_per_label`` images; the
    total covariance for both when fewer than two labels qualify."""
    counts = pool.label_counts()
    keep = [i for i, name in enumerate(pool.label_names) if name and int(counts[i]) >= min_per_label]
    data = embedding.double()
    if len(keep) < 2:
        centred = data - data.mean(0)
        total = (centred.T @ centred / data.shape[0]).float()
        return total, total.clone()
    rows = torch.isin(pool.labels, torch.tensor(keep))
    labels, points = pool.labels[rows], data[rows]
    means = torch.zeros(len(pool.label_names), data.shape[1], dtype=torch.float64).index_add_(0, labels, points)
    means = means / counts.clamp(min=1).double()[:, None]
    residual = points - means[labels]
    within = residual.T @ residual / points.shape[0]
    label_means = means[torch.tensor(keep)]
    centred = label_means - label_means.mean(0)
    between = centred.T @ centred / len(keep)
    return within.float(), between.float()

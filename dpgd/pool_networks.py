"""One family of networks trained on the DP pool, trained once per pool and shared.

DP-GenG needs networks that know the pool in four places: matching's pool-trained
extractors, the k-means embedding of the initialisation, the DP expert's starting point
and the pool report. Training each separately cost ~85 network-epochs per default run;
the family is ``count`` networks (different seeds) trained ``epochs`` epochs each and
snapshotted at ``snapshots`` evenly spaced epochs, and:

* matching draws from all the snapshots (early: generic features, late: class-specific);
* the k-means embedding, the expert's starting point and the pool report use the last
  snapshot of network 0 (:meth:`PoolNetworks.final`).

Everything here reads only the pool (a DP output): post-processing, free. Networks are
cached beside the pool (``pool_nets.cache``), keyed by an HMAC of the pool under the cache
folder's local secret, the recipe, the model, the seed and this code's version, so a sweep
over later stages (matcher, expert, evaluation, their seeds... with the same public seed)
trains them once. Network ``k`` does not depend on ``count``: a run that needs only
network 0 trains only it, and a later run needing three reuses nothing but agrees with it.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import hmac
import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from dpgd.config import ModelConfig, PoolNetsConfig
from dpgd.data import ImageDataset
from dpgd.errors import ConfigError
from dpgd.models import frozen, model_from_weights, seeded_model, weights_of
from dpgd.progress import progress_bar
from dpgd.public.pretrain import network_for
from dpgd.seeding import derive_seed, stage_generator
from dpgd.storage import atomic_torch_save, load_versioned
from dpgd.training import POOL_RECIPE, train_on_pool

log = logging.getLogger("dpgd")

# Snapshots are taken between chunks of training, each a separate call: a constant lr, so
# a chunk boundary does not drop it.
FAMILY_RECIPE = replace(POOL_RECIPE, lr_drop_at_half=False)
CACHE_VERSION = 1


def snapshot_count(cfg: PoolNetsConfig) -> int:
    """How many networks matching draws from (every snapshot of every pool network): with
    ``matcher.release=once``, one DP release each."""
    return cfg.count * cfg.snapshots


def check_pool_nets_settings(cfg: PoolNetsConfig) -> None:
    """The family's sizes (judged before any data is read)."""
    if cfg.count < 1 or cfg.snapshots < 1 or cfg.epochs < cfg.snapshots:
        raise ConfigError(
            "pool_nets needs count >= 1, snapshots >= 1 and epochs >= snapshots "
            f"(got count={cfg.count}, snapshots={cfg.snapshots}, epochs={cfg.epochs})."
        )


@dataclass
class PoolNetworks:
    """``snapshots[k][s]``: network k after the s-th chunk of training (eval mode, frozen)."""

    snapshots: list[list[nn.Module]]

    def final(self, network: int = 0) -> nn.Module:
        """The fully trained network ``network`` (the k-means embedding, expert start, report)."""
        return self.snapshots[network][-1]

    def all_snapshots(self) -> list[nn.Module]:
        return [snapshot for network in self.snapshots for snapshot in network]

    def to_payload(self) -> dict[str, Any]:
        return {"snapshots": [[weights_of(s) for s in network] for network in self.snapshots]}

    @classmethod
    def from_payload(cls, data: Mapping[str, Any], model_cfg: ModelConfig, dataset: ImageDataset,
                     device: torch.device) -> "PoolNetworks":
        shape = (dataset.channels, dataset.num_classes, dataset.image_size)
        return cls([[frozen(model_from_weights(model_cfg, *shape, weights), device) for weights in network]
                    for network in data["snapshots"]])


def train_pool_networks(
    cfg: PoolNetsConfig,
    count: int,
    model_cfg: ModelConfig,
    pool_images: torch.Tensor,
    pool_labels: torch.Tensor,
    dataset: ImageDataset,
    *,
    seed: int,
    device: torch.device,
    cache_dir: Path | None,
    cache_secret: bytes | None = None,
    progress: bool = True,
    start: Mapping[str, torch.Tensor] | None = None,
    start_key: str | None = None,
) -> PoolNetworks:
    """Networks 0..count-1 of the family (from the cache when it holds them).

    ``start``: public pretrained weights (:mod:`dpgd.public`) every network starts from
    (its features; the head is fresh), identified by ``start_key`` in the cache key."""
    check_pool_nets_settings(cfg)
    if start is not None and not start_key:
        raise ConfigError("pool networks with a public start need the start's key (its cache identity).")
    path = None
    if cache_dir is not None and cache_secret is not None:
        key = cache_key(cfg, count, model_cfg, pool_images, pool_labels, seed, cache_secret, start_key)
        path = Path(cache_dir) / "pool_nets" / f"{key}.pt"
        cached = load_versioned(path, CACHE_VERSION, key,
                                lambda data: PoolNetworks.from_payload(data, model_cfg, dataset, device), "pool-network")
        if cached is not None:
            log.info("pool networks: reusing %d cached networks", count)
            return cached
    snapshots = []
    bar = progress_bar(total=count * cfg.epochs, desc="pool networks", disable=not progress, leave=False)
    chunk = cfg.epochs // cfg.snapshots
    for k in range(count):
        init_seed = derive_seed(seed, "extractors", k, "init")
        if start is None:
            net = seeded_model(model_cfg, dataset.channels, dataset.num_classes, dataset.image_size, init_seed)
        else:
            net = network_for(model_cfg, dataset.channels, dataset.num_classes, dataset.image_size, start, init_seed)
        train_gen = stage_generator(seed, "extractors", k, "train")
        network = []
        for c in range(cfg.snapshots):
            span = chunk if c < cfg.snapshots - 1 else cfg.epochs - chunk * (cfg.snapshots - 1)
            train_on_pool(net, pool_images, pool_labels, epochs=span, recipe=FAMILY_RECIPE,
                          generator=train_gen, device=device)
            bar.update(span)
            network.append(frozen(copy.deepcopy(net), device))
        snapshots.append(network)
    bar.close()
    networks = PoolNetworks(snapshots)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save({"version": CACHE_VERSION, "key": path.stem, **networks.to_payload()}, path)
    return networks


def cache_key(cfg: PoolNetsConfig, count: int, model_cfg: ModelConfig, pool_images: torch.Tensor,
              pool_labels: torch.Tensor, seed: int, secret: bytes, start_key: str | None = None) -> str:
    """HMAC of the pool (a generator=real pool is private data: never a plain hash) plus
    everything else that determines the networks."""
    pool_mac = hmac.new(secret, digestmod=hashlib.sha256)
    pool_mac.update(pool_images.detach().cpu().contiguous().numpy().tobytes())
    pool_mac.update(pool_labels.detach().cpu().contiguous().numpy().tobytes())
    payload = {
        "version": CACHE_VERSION, "code": _code_version(), "pool": pool_mac.hexdigest(), "count": count,
        "epochs": cfg.epochs, "snapshots": cfg.snapshots, "model": asdict(model_cfg),
        "recipe": asdict(FAMILY_RECIPE), "seed": seed, "shape": list(pool_images.shape),
    }
    if start_key is not None:  # networks started from public weights (absent: keys as before)
        payload["start"] = start_key
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@functools.lru_cache(maxsize=1)
def _code_version() -> str:
    """A hash of the code that trains the networks: a change never reuses old networks."""
    import dpgd.augment
    import dpgd.models
    import dpgd.training

    digest = hashlib.sha256()
    for module in (dpgd.models, dpgd.training, dpgd.augment):
        digest.update(Path(module.__file__).read_bytes())
    digest.update(Path(__file__).read_bytes())
    return digest.hexdigest()

"""Public pretraining: a network of the run's architecture trained on the public pool's labels.

No private record and no budget: the inputs are the public pool (:mod:`dpgd.public.pool`),
the run's architecture and the private data's public shape and normalisation constants.
Supervised on the folder labels (each subfolder path is a class; labels with fewer than
``public.min_per_label`` images are left out of the classes but stay in the pool), with
random flips and shifts. Supervised, not self-supervised: the folder labels of an
ImageNet-style tree are the public knowledge the paper's pretrained models carry, and a
supervised ConvNet reaches useful features in minutes of CPU (a contrastive method needs
many more epochs and large batches). A flat folder has no labels: it needs
``public.weights``.

The result is cached under ``<cache>/public/`` keyed by the pool's fingerprint, the
architecture, the settings, the normalisation and this code's version: a sweep over seeds,
epsilons and methods pretrains once. ``public.weights`` loads a user's own state dict
instead (its classifier, if any, is dropped).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from dpgd.config import ModelConfig, PublicConfig
from dpgd.errors import ConfigError, DataNotFoundError
from dpgd.models import seeded_model, weights_of
from dpgd.progress import progress_bar
from dpgd.public.pool import PublicPool
from dpgd.seeding import derive_seed, stage_generator
from dpgd.storage import atomic_torch_save, load_versioned
from dpgd.training import train_classifier

log = logging.getLogger("dpgd")

CACHE_VERSION = 1
# Parameters of the classifier: replaced by a fresh head for the private classes.
HEAD_PREFIX = "classifier."
# Random shifts of up to 1/8 of the side (DSA's crop range) with reflection padding.
SHIFT_FRACTION = 0.125
# Pretraining SGD: the evaluation protocol's momentum and weight decay.
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4


@dataclass
class PublicNetwork:
    """Snapshots of the pretrained network (full state dicts, public head included; the last
    one is the pretrained network), the public labels it was trained on, and its identity
    (``key``: the cache key or a hash of the weights file) for the caches built on it."""

    snapshots: list[dict[str, torch.Tensor]]
    label_names: tuple[str, ...]
    key: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> dict[str, torch.Tensor]:
        return self.snapshots[-1]


class FlipShift:
    """Per-image random horizontal flips and one random shift per batch (reflection padded).

    Called as ``augment(batch, generator)`` by :func:`dpgd.training.train_classifier`."""

    def __call__(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        flip = torch.rand(batch.shape[0], generator=generator) < 0.5
        batch = torch.where(flip.to(batch.device).view(-1, 1, 1, 1), batch.flip(3), batch)
        height, width = batch.shape[-2:]
        pad = max(1, round(SHIFT_FRACTION * min(height, width)))
        dy, dx = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,), generator=generator))
        padded = torch.nn.functional.pad(batch, (pad, pad, pad, pad), mode="reflect")
        return padded[..., dy : dy + height, dx : dx + width].contiguous()


def training_labels(pool: PublicPool, min_per_label: int) -> tuple[torch.Tensor, tuple[str, ...]]:
    """Indices of the pool images used as pretraining examples and their class indices'
    names: labelled images of labels with at least ``min_per_label`` images. The returned
    tensor is ``(index, class)`` pairs as two rows."""
    counts = pool.label_counts()
    classes = [i for i, name in enumerate(pool.label_names) if name and int(counts[i]) >= min_per_label]
    if len(classes) < 2:
        raise ConfigError(
            f"public pretraining needs at least 2 labels (subfolders) with public.min_per_label={min_per_label} or more "
            f"images; public.root={pool.root} has {len(classes)}. Organise it in class subfolders, lower "
            "public.min_per_label, or pass your own pretrained weights with public.weights=<file>."
        )
    remap = torch.full((len(pool.label_names),), -1, dtype=torch.int64)
    remap[torch.tensor(classes)] = torch.arange(len(classes))
    mapped = remap[pool.labels]
    index = torch.nonzero(mapped >= 0).flatten()
    return torch.stack([index, mapped[index]]), tuple(pool.label_names[i] for i in classes)


def settings_of(cfg: PublicConfig) -> dict[str, Any]:
    """The settings that determine the pretrained network."""
    return {"epochs": cfg.epochs, "lr": cfg.lr, "batch_size": cfg.batch_size, "snapshots": cfg.snapshots,
            "seed": cfg.seed, "min_per_label": cfg.min_per_label}


def check_pretrain_settings(cfg: PublicConfig) -> None:
    if cfg.min_per_label < 1 or cfg.batch_size < 1 or not cfg.lr > 0:
        raise ConfigError("public.min_per_label and public.batch_size must be at least 1 and public.lr positive.")
    if cfg.snapshots < 1 or cfg.epochs < cfg.snapshots:
        raise ConfigError(f"public.epochs={cfg.epochs} must be at least public.snapshots={cfg.snapshots} (>= 1).")
    if cfg.weights is not None and not Path(cfg.weights).expanduser().is_file():
        raise DataNotFoundError(f"public.weights={cfg.weights} is not a file (a state dict saved with torch.save).")


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """A hash of the code that pretrains: any change retrains instead of reusing."""
    import dpgd.models
    import dpgd.training

    digest = hashlib.sha256()
    for module in (dpgd.models, dpgd.training):
        digest.update(Path(module.__file__).read_bytes())
    digest.update(Path(__file__).read_bytes())
    return digest.hexdigest()


def cache_key(cfg: PublicConfig, pool: PublicPool, model_cfg: ModelConfig, mean: tuple[float, ...],
              std: tuple[float, ...]) -> str:
    payload = {
        "version": CACHE_VERSION, "code": code_version(), "pool": pool.fingerprint, "model": asdict(model_cfg),
        "settings": settings_of(cfg), "shape": list(pool.pixels.shape[1:]), "mean": list(mean), "std": list(std),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def pretrain(cfg: PublicConfig, pool: PublicPool, model_cfg: ModelConfig, mean: tuple[float, ...],
             std: tuple[float, ...], *, device: torch.device, cache_dir: Path | None,
             progress: bool = True) -> PublicNetwork:
    """The network pretrained on ``pool``'s labels (from the cache when it holds it)."""
    check_pretrain_settings(cfg)
    pairs, names = training_labels(pool, cfg.min_per_label)
    key = cache_key(cfg, pool, model_cfg, mean, std)
    path = None if cache_dir is None else Path(cache_dir) / "public" / f"net-{key[:32]}.pt"
    if path is not None:
        cached = _load(path, key)
        if cached is not None:
            log.info("public pretraining: reusing the cached network (%d labels)", len(cached.label_names))
            cached.info["cache_hit"] = True
            return cached
    started = time.perf_counter()
    channels, height, width = pool.pixels.shape[1:]
    model = seeded_model(model_cfg, int(channels), len(names), (int(height), int(width)),
                         derive_seed(cfg.seed, "public", "init"))
    images = pool.normalised(mean, std, pairs[0])
    labels = pairs[1].clone()
    generator = stage_generator(cfg.seed, "public", "train")
    chunk = cfg.epochs // cfg.snapshots
    ends = {chunk * (s + 1) if s < cfg.snapshots - 1 else cfg.epochs for s in range(cfg.snapshots)}
    augment = FlipShift()
    snapshots = []
    bar = progress_bar(range(cfg.epochs), desc="public pretraining", disable=not progress, leave=False)
    for epoch in bar:
        # The evaluation protocol's schedule (lr/10 at half-time), one epoch per call.
        lr = cfg.lr * (0.1 if epoch >= cfg.epochs // 2 else 1.0)
        train_classifier(model, images, labels, epochs=1, lr=lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY,
                         batch_size=cfg.batch_size, lr_drop_at_half=False, dsa=augment,  # type: ignore[arg-type]
                         generator=generator, device=device)
        if epoch + 1 in ends:
            snapshots.append(weights_of(model))
    bar.close()
    info = {"seconds": round(time.perf_counter() - started, 3), "examples": int(labels.shape[0]),
            "labels": len(names), "cache_hit": False}
    log.info("public pretraining: %d epochs on %d images of %d labels in %.0f s", cfg.epochs, info["examples"],
             len(names), info["seconds"])
    network = PublicNetwork(snapshots, names, key, info)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save({"version": CACHE_VERSION, "key": key, "snapshots": snapshots, "label_names": list(names),
                           "info": info}, path)
    return network


def _load(path: Path, key: str) -> PublicNetwork | None:
    return load_versioned(path, CACHE_VERSION, key, lambda data: PublicNetwork(
        list(data["snapshots"]), tuple(data["label_names"]), key, dict(data["info"])), "public-network")


def features_of(weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict without the classifier (the part that transfers to the private task)."""
    return {k: v for k, v in weights.items() if not k.startswith(HEAD_PREFIX)}


def load_weights_file(path: str, model_cfg: ModelConfig, channels: int, image_size: tuple[int, int]) -> PublicNetwork:
    """``public.weights``: a user's state dict for the run's architecture (checked against it
    before any budget is spent; the classifier is dropped)."""
    file = Path(path).expanduser()
    try:
        data = torch.load(file, map_location="cpu", weights_only=True)
    except (OSError, EOFError, RuntimeError, ValueError) as exc:
        raise ConfigError(f"public.weights={file} could not be loaded as a state dict ({type(exc).__name__}).") from None
    if isinstance(data, Mapping) and "state_dict" in data:
        data = data["state_dict"]
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ConfigError(f"public.weights={file} is not a state dict (a mapping of names to tensors).")
    weights = features_of({str(k): v for k, v in data.items()})
    expected = features_of(weights_of(seeded_model(model_cfg, channels, 2, image_size, 0)))
    missing = sorted(set(expected) - set(weights))
    wrong = sorted(k for k in expected if k in weights and tuple(weights[k].shape) != tuple(expected[k].shape))
    if missing or wrong:
        raise ConfigError(
            f"public.weights={file} does not fit model={model_cfg.name} (width {model_cfg.width}) at "
            f"{channels}x{image_size[0]}x{image_size[1]}: "
            + (f"missing {', '.join(missing[:3])}" if missing else f"shape of {', '.join(wrong[:3])}") + "."
        )
    digest = hashlib.sha256()
    for name in sorted(expected):
        digest.update(name.encode() + weights[name].detach().cpu().contiguous().numpy().tobytes())
    weights = {k: weights[k] for k in expected}
    return PublicNetwork([weights], (), "weights-" + digest.hexdigest(), {"seconds": 0.0, "cache_hit": None,
                                                                         "weights_file": str(file)})


def network_for(model_cfg: ModelConfig, channels: int, num_classes: int, image_size: tuple[int, int],
                weights: Mapping[str, torch.Tensor], seed: int) -> nn.Module:
    """A network for the private task: the public features and a fresh head (from ``seed``)."""
    model = seeded_model(model_cfg, channels, num_classes, image_size, seed)
    missing, unexpected = model.load_state_dict(features_of(weights), strict=False)
    if unexpected or any(not k.startswith(HEAD_PREFIX) for k in missing):
        raise ConfigError("the public network does not fit the run's architecture "
                          f"(missing {missing[:3]}, unexpected {unexpected[:3]}).")
    return model

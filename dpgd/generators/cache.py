"""On-disk cache of fitted pools, keyed by everything that determines them.

Key: sha256 of (cache format version, data set fingerprint, the generator's name,
``pool_per_class`` and ITS OWN settings section, the noise multiplier, the seed). Settings
of other generators, ``cache``/``cache_dir`` and ``report_epochs`` are not in the key:
they do not change the pool. A file stores the pool and the mechanisms that produced it;
the stage re-declares those to the run's ledger on every hit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from omegaconf import DictConfig, OmegaConf

from dpgd.errors import ConfigError
from dpgd.generators.base import GeneratorSettings, Pool
from dpgd.privacy import SubsampledGaussian

log = logging.getLogger("dpgd")

CACHE_ENV = "DPGD_CACHE_DIR"
# Bump when a generator's code changes what it produces for the same settings.
CACHE_VERSION = 1


def default_cache_dir() -> Path:
    """``$DPGD_CACHE_DIR`` when set, else ``~/.cache/dpgd/pools``."""
    env = os.environ.get(CACHE_ENV, "").strip()
    return Path(env or "~/.cache/dpgd/pools").expanduser()


def resolve_cache_dir(cache_dir: str | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir else default_cache_dir()


def _plain(node: Any) -> Any:
    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True)
    if is_dataclass(node) and not isinstance(node, type):
        return asdict(node)
    return node


def key_settings(cfg: GeneratorSettings) -> dict[str, Any]:
    """The part of the generator config that determines its pool."""
    name = str(cfg.name)
    own = getattr(cfg, name, None)
    return {"name": name, "pool_per_class": int(cfg.pool_per_class), name: _plain(own)}


def cache_key(fingerprint: str, cfg: GeneratorSettings, noise_multiplier: float | None, seed: int) -> str:
    payload = {
        "version": CACHE_VERSION,
        "dataset": fingerprint,
        "generator": key_settings(cfg),
        # repr keeps every bit of the float: a different multiplier is a different pool.
        "noise_multiplier": None if noise_multiplier is None else repr(float(noise_multiplier)),
        "seed": int(seed),
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def cache_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / f"pool-{key[:32]}.pt"


def save_pool(path: Path, pool: Pool, key: str) -> None:
    """Write atomically (a crash never leaves a half-written pool)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(
        {
            "version": CACHE_VERSION,
            "key": key,
            "images": pool.images.detach().cpu(),
            "labels": pool.labels.detach().cpu(),
            "mechanisms": [m.to_dict() for m in pool.mechanisms],
            "synthetic": pool.synthetic,
            "info": json.loads(json.dumps(pool.info, default=str)),
        },
        tmp,
    )
    os.replace(tmp, path)


def load_pool(path: Path, key: str) -> Pool | None:
    """The cached pool, or None when absent, unreadable or written under another key."""
    if not path.is_file():
        return None
    try:
        data: Mapping[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
        if data.get("version") != CACHE_VERSION or data.get("key") != key:
            return None
        mechanisms = tuple(SubsampledGaussian.from_dict(m) for m in data["mechanisms"])
        return Pool(data["images"], data["labels"], mechanisms, bool(data["synthetic"]), dict(data["info"]))
    except (OSError, EOFError, RuntimeError, KeyError, TypeError, ValueError, pickle.UnpicklingError, ConfigError) as exc:
        # A corrupt or foreign file is a miss, never a crash: the pool is refitted.
        log.warning("ignoring unreadable pool cache %s: %s", path, exc)
        return None

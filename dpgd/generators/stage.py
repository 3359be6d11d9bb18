"""The generation stage of a run: build the pool (or reuse a cached one) and account for it.

Order of events in :func:`generate_pool`: the generator's records are computed from its
privacy request and the planned noise multiplier, declared to the run's ledger, and only
then is the generator fitted (or its cached pool loaded). A run that reuses a cached pool
declares the same records: the pool was built from the private data, so the release it
feeds is accounted for whether or not this process fitted it.

:func:`pool_report` measures the pool for the logs only (test accuracy of pool network 0,
a ConvNet trained on the pool alone, and an image grid): nothing is selected on it.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn as nn

from dpgd.config import GeneratorConfig
from dpgd.counts import ClassCounts
from dpgd.data import ImageDataset
from dpgd.errors import ConfigError
from dpgd.generators.base import GENERATOR_COMPONENT, Pool
from dpgd.generators.cache import (
    cache_key, cache_path, keyed_fingerprint, load_pool, local_secret, resolve_cache_dir, save_pool,
)
from dpgd.generators.registry import build_generator
from dpgd.privacy import PrivacyLedger
from dpgd.privacy.components import ReleaseLog
from dpgd.privacy.randomness import NoiseSource
from dpgd.tracking import Curve
from dpgd.training import test_accuracy

log = logging.getLogger("dpgd")

REPORT_TEST_BATCH = 2048
# Images per class in the logged pool grid.
GRID_PER_CLASS = 10


def generate_pool(
    gen_cfg: GeneratorConfig,
    dataset: ImageDataset,
    noise_multiplier: float | None,
    ledger: PrivacyLedger,
    *,
    private: bool,
    seed: int,
    device: torch.device,
    noise: NoiseSource,
    counts: ClassCounts,
    progress: bool = True,
    curve: Curve | None = None,
    public: Any = None,
) -> Pool | None:
    """The run's pool (None for ``generator=none``), its mechanisms declared to ``ledger``.

    ``noise_multiplier`` is the plan's multiplier for the ``generator`` component, or None
    in a non-private run (``private`` false: ``epsilon=inf``), where DP generators run
    without noise. ``seed`` is the public seed (initial weights, latents, the cache key).
    """
    generator = build_generator(gen_cfg, progress=progress, curve=curve)
    if generator is not None:
        generator.public = public  # the run's public knowledge (dpgd.public), or None
    name = gen_cfg.name
    if generator is None:
        if noise_multiplier is not None:
            raise ConfigError("generator=none runs no DP mechanism but was planned a noise multiplier; "
                              "set budget.generator=0 or pick a generator.")
        return None
    if generator.non_private_only and private:
        raise ConfigError(
            f"generator={name} uses the private images as the pool; it needs epsilon=inf "
            "in this private run. Use a DP generator such as generator=dp_merf."
        )
    need = generator.privacy_request()
    if need is not None and private and noise_multiplier is None:
        raise ConfigError(
            f"generator={name} runs a DP mechanism but has no noise multiplier: give it a share "
            "of the budget (budget.generator > 0)."
        )
    if need is None and noise_multiplier is not None:
        raise ConfigError(f"generator={name} runs no DP mechanism; set budget.generator=0.")
    mechanisms = generator.mechanisms(noise_multiplier)

    use_cache = gen_cfg.cache and generator.cacheable
    path = key = None
    if use_cache:
        # The key holds a keyed hash of the data (never logged: see dpgd.generators.cache) and
        # the noise mode, so a pool made with reproducible noise never serves a secret-noise run.
        cache_dir = resolve_cache_dir(gen_cfg.cache_dir)
        key = cache_key(gen_cfg, noise_multiplier, seed,
                        fingerprint=keyed_fingerprint(dataset, local_secret(cache_dir)), noise_mode=noise.mode,
                        public=None if public is None else f"{public.pool.fingerprint}/{public.network.key}")
        path = cache_path(cache_dir, key)
        cached = load_pool(path, key)
        if cached is not None and cached.mechanisms == mechanisms:
            declare_pool(ledger, cached)
            cached.info["cache_hit"] = True
            log.info("generator %s: reusing a cached pool", name)
            return cached
        if cached is not None:
            log.warning("generator %s: a cached pool records other mechanisms; refitting", name)

    for mechanism in mechanisms:
        ledger.declare(mechanism)
    log.info("generator %s: fitting (noise multiplier %s)", name,
             "none: non-private" if noise_multiplier is None else f"{noise_multiplier:.4g}")
    releases = ReleaseLog(GENERATOR_COMPONENT)
    pool = generator.fit_and_sample(dataset, noise_multiplier, seed, device, noise=noise, counts=counts,
                                    releases=releases)
    releases.check(mechanisms)  # the releases that ran, one by one, against the declared records
    if pool.mechanisms != mechanisms:
        raise RuntimeError(
            f"privacy bug: generator {name} ran {pool.mechanisms} but declared {mechanisms}"
        )
    pool.info["cache_hit"] = False
    pool.info["release_id"] = ledger.release_id
    if use_cache and path is not None and key is not None:
        save_pool(path, pool, key)
    return pool


def declare_pool(ledger: PrivacyLedger, pool: Pool) -> None:
    """Declare the records of a pool made earlier (cache, or an interrupted process of this
    run): the same noisy release as the run that fitted it, under its release id, so a sweep
    over runs sharing the pool composes it once."""
    for mechanism in pool.mechanisms:
        ledger.declare(mechanism, pool.info.get("release_id"))


def pool_report(pool: Pool, dataset: ImageDataset, network: nn.Module | None) -> dict[str, Any]:
    """Test accuracy (percent) of pool network 0 (``network``, trained on the pool only), and
    a pool grid.

    Keys: ``pool_test_acc`` (None without a network), ``pool_size``, ``grid`` ((K * n, C, H,
    W) in [0, 1], ``n`` images per class, class-major; None for a pool of private images)
    and ``grid_nrow`` (= n). Reporting only: never select on it.
    """
    accuracy = None if network is None else test_accuracy(network, dataset.test_images, dataset.test_labels,
                                                          REPORT_TEST_BATCH)
    grid, nrow = None, 0
    if pool.synthetic:
        counts = pool.class_counts(dataset.num_classes)
        nrow = int(min(GRID_PER_CLASS, int(counts.min()))) if len(counts) else 0
        if nrow > 0:
            picked = torch.cat([pool.for_class(c)[:nrow] for c in range(dataset.num_classes)])
            grid = dataset.denormalise(picked)
    return {
        "pool_test_acc": accuracy,
        "pool_size": len(pool),
        "grid": grid,
        "grid_nrow": nrow,
    }

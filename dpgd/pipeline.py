"""The release pipeline: DP generation -> initialisation -> feature matching.

:func:`distill` turns a private data set into a distilled set under a noise plan, declaring
every DP mechanism to the run's ledger before it runs. ``train.run`` calls it once; the
membership-inference attack calls it once per shadow run on a member subset, so the
attack measures exactly the pipeline that is released.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from omegaconf import DictConfig

from dpgd.data import ImageDataset
from dpgd.errors import DpgdError
from dpgd.initialisation import DistilledSet, initialise
from dpgd.matching import RandomExtractors, match
from dpgd.privacy import PrivacyLedger
from dpgd.seeding import stage_generator
from dpgd.tracking import Tracker

log = logging.getLogger("dpgd")


@dataclass
class StageTimer:
    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        log.info("stage %s ...", name)
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - start, 3)
            log.info("stage %s done in %.1f s", name, self.seconds[name])


def distill(
    cfg: DictConfig,
    dataset: ImageDataset,
    plan: Any,
    ledger: PrivacyLedger,
    device: torch.device,
    tracker: Tracker | None = None,
    timer: StageTimer | None = None,
    progress: bool = True,
) -> DistilledSet:
    """Run the release stages of ``cfg`` on ``dataset`` (the private train split)."""
    tracker = tracker or Tracker()
    timer = timer or StageTimer()
    with timer.stage("init"):
        distilled = initialise(cfg.init.name, dataset, cfg.ipc, float(cfg.epsilon), stage_generator(cfg.seed, "init"))
    tracker.log_images("init/images", dataset.denormalise(distilled.images), cfg.ipc, "initialisation")
    if cfg.matcher.name != "none":
        with timer.stage("match"):
            distilled = run_matching(cfg, dataset, distilled, plan, ledger, device, tracker, progress)
    return distilled


def run_matching(
    cfg: DictConfig,
    dataset: ImageDataset,
    distilled: DistilledSet,
    plan: Any,
    ledger: PrivacyLedger,
    device: torch.device,
    tracker: Tracker,
    progress: bool = True,
) -> DistilledSet:
    noise_multiplier = None
    if cfg.matcher.name == "dp_feature":
        if plan is None:
            raise DpgdError(
                "matcher=dp_feature with epsilon=inf has no noise plan; use matcher=dm for a non-private run."
            )
        for mechanism in plan.mechanisms_for("matcher"):
            ledger.declare(mechanism)
        noise_multiplier = plan.for_component("matcher")
        log.info("matcher: noise multiplier %.4f for %d iterations at q=%.4f",
                 noise_multiplier, cfg.matcher.iterations, cfg.matcher.sample_rate)
    extractors = RandomExtractors(
        cfg.model, dataset.channels, dataset.num_classes, dataset.image_size,
        stage_generator(cfg.seed, "match", "extractors"), device,
    )
    log_every = max(1, cfg.matcher.iterations // 100)

    def on_iteration(iteration: int, metrics: dict[str, float]) -> None:
        if iteration % log_every == 0 or iteration == cfg.matcher.iterations - 1:
            tracker.log("match", metrics, step=iteration)

    images, stats = match(
        distilled.images, distilled.labels, dataset, cfg.matcher, extractors, noise_multiplier,
        generator=stage_generator(cfg.seed, "match", "sampling"),
        noise_generator=stage_generator(cfg.seed, "match", "noise"),
        device=device, on_iteration=on_iteration, progress=progress,
    )
    tracker.log("match", {"seconds_per_iteration": stats.seconds / max(1, stats.iterations),
                          "images_per_second": stats.images_per_second}, step=stats.iterations)
    return DistilledSet(images, distilled.labels)

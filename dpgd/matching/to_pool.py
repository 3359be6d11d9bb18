"""Matching a pool selection to the whole DP pool (``init.pool_matching_iterations``).

The initialisation keeps ``ipc`` pool images a class; the pool it chose them from trains
better networks than they do (PE over public32 at epsilon 1: ~32 % for 200 a class, ~25 %
for ten medoids). Distribution matching with the pool as its data set compresses the
pool into the stored images instead of sampling it. The matcher sees the pool alone and
every draw comes from public seeds, so this is post-processing of the pool: free.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from dpgd.config import InitConfig, MatcherConfig, ModelConfig
from dpgd.data import ImageDataset
from dpgd.distilled import DistilledSet
from dpgd.matching.extractors import RandomExtractors
from dpgd.matching.loop import match
from dpgd.seeding import stage_generator


def match_to_pool(
    distilled: DistilledSet,
    pool_images: torch.Tensor,
    pool_labels: torch.Tensor,
    dataset: ImageDataset,
    init_cfg: InitConfig,
    model_cfg: ModelConfig,
    seed: int,
    device: torch.device,
    *,
    progress: bool = False,
    on_iteration: Callable[[int, dict[str, float | torch.Tensor]], None] | None = None,
) -> DistilledSet:
    """``distilled`` after ``init_cfg.pool_matching_iterations`` of DM against the pool
    (``pool_images``, normalised like ``dataset``, and their ``pool_labels``).

    The matcher's data set is the pool alone (``dataset`` lends only its class names and
    normalisation; its private splits are left out), the extractors are fresh random
    networks and every draw comes from the public seed: post-processing of the pool.
    """
    iterations = init_cfg.pool_matching_iterations
    if iterations == 0:
        return distilled
    pool_data = dataclasses.replace(
        dataset, name="pool", train_images=pool_images, train_labels=pool_labels,
        test_images=pool_images[:0], test_labels=pool_labels[:0],
    )
    matcher_cfg = MatcherConfig(name="dm", iterations=iterations, batch_real=init_cfg.pool_matching_batch,
                                extractors="random")
    extractors = RandomExtractors(model_cfg, dataset.channels, dataset.num_classes, dataset.image_size,
                                  stage_generator(seed, "init", "pool_matching", "extractors"), device)
    images, _ = match(
        distilled.images, distilled.labels, pool_data, matcher_cfg, extractors=extractors, noise_multiplier=None,
        generator=stage_generator(seed, "init", "pool_matching", "augment"),
        noise_generator=stage_generator(seed, "init", "pool_matching", "unused"), device=device,
        on_iteration=on_iteration, progress=progress, factor=distilled.factor,
    )
    return DistilledSet(images, distilled.labels, factor=distilled.factor)

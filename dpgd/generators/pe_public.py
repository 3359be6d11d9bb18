"""Private Evolution over the public pool, guided by the public network (``pe.source=public``).

A data simulator in the sense of Sim-PE and DPSDA's ``NearestImage``: with no generative
model, the public APIs are

* random API: public images (``pe.initial=clusters``: the image nearest each of
  ``population`` k-means centres of the public embedding, the same cover of the pool for
  every class; ``random``: uniform draws per class);
* variation API: one of the ``k`` nearest public neighbours of a kept candidate in the
  public network's embedding (:class:`~dpgd.public.PublicKnowledge`), ``k`` shrinking
  geometrically from ``pe.neighbours_start`` to ``pe.neighbours_end`` over the rounds
  (coarse to fine: early rounds move between regions, late rounds between near
  duplicates). Children are deduplicated, so a population that concentrates gets fewer,
  better-voted bins.

Votes: every private record of class c votes once per round for its nearest candidate of
class c in the same embedding; the histograms of all classes get ``N(0, sigma^2)`` per bin
in ONE release per round (L2 sensitivity 1, :mod:`dpgd.generators.pe`), counts under
``threshold * sigma`` are zeroed. Few bins matter: 500 votes over the ~20,000 images of a
pool drown in the noise (a probe scored chance), over a population of tens they do not.

After the last round, the pool of class c is ``pool_per_class`` public images drawn from
the neighbourhoods (``neighbours_end``) of the candidates in proportion to their noisy
counts, each under a mild random flip, shift, rotation and pixel noise (strength
``pe.strength_end``: a few pixels and degrees). Everything but the histograms is public or
post-processing; the candidate source reads no private record.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from dpgd.config import PeConfig
from dpgd.data import ImageDataset
from dpgd.errors import ConfigError
from dpgd.generators.pe_sources import affine_variation
from dpgd.privacy.components import ReleaseLog
from dpgd.progress import progress_bar
from dpgd.public import PublicKnowledge
from dpgd.seeding import derive_seed, stage_generator

INITIAL = ("clusters", "random")
KMEANS_ITERS = 50


class PublicPoolSource:
    """The candidate source: indices into the public pool and their embedding. Built from
    public knowledge alone (it is never handed the private data set)."""

    def __init__(self, knowledge: PublicKnowledge, seed: int) -> None:
        self.knowledge = knowledge
        self.embedding = knowledge.embedding
        self.seed = seed

    def __len__(self) -> int:
        return int(self.embedding.shape[0])

    def random_api(self, num: int, initial: str, generator: torch.Generator) -> torch.Tensor:
        """``num`` distinct pool indices: k-means medoids of the embedding, or uniform draws."""
        num = min(num, len(self))
        if initial == "random":
            return torch.randperm(len(self), generator=generator)[:num]
        if initial != "clusters":
            raise ConfigError(f"generator.pe.initial={initial} is unknown; choose {' or '.join(INITIAL)}.")
        return self.medoids(num)

    def medoids(self, num: int) -> torch.Tensor:
        """The pool image nearest each of ``num`` k-means centres (public seed; distinct)."""
        from sklearn.cluster import KMeans

        data = self.embedding.double().numpy()
        km = KMeans(n_clusters=num, n_init=1, max_iter=KMEANS_ITERS,
                    random_state=derive_seed(self.seed, "generator", "pe", "clusters") % 2**32).fit(data)
        centres = torch.from_numpy(km.cluster_centers_).float()
        distance = torch.cdist(centres, self.embedding)
        chosen: list[int] = []
        for row in distance:
            for index in row.argsort().tolist():
                if index not in chosen:
                    chosen.append(index)
                    break
        return torch.tensor(chosen, dtype=torch.int64)

    def variation_api(self, parents: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
        """One of the ``k`` nearest pool images of each parent (itself included)."""
        table = self.knowledge.neighbours(parents, k)
        pick = torch.randint(table.shape[1], (table.shape[0],), generator=generator)
        return table[torch.arange(table.shape[0]), pick]


def neighbour_schedule(start: int, end: int, steps: int) -> list[int]:
    """``steps`` neighbourhood sizes from ``start`` down to ``end`` (geometric)."""
    if start < 1 or end < 1 or end > start:
        raise ConfigError(f"generator.pe.neighbours_start={start} and neighbours_end={end} need 1 <= end <= start.")
    if steps == 1:
        return [end]
    ratio = (end / start) ** (1.0 / (steps - 1))
    return [max(1, round(start * ratio**i)) for i in range(steps)]


def evolve(opts: PeConfig, pool_per_class: int, knowledge: PublicKnowledge, dataset: ImageDataset, sigma: float,
           *, noise_generator: torch.Generator, seed: int, releases: ReleaseLog,
           progress: bool) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """The rounds of PE over the public pool; returns the pool's images, labels and info."""
    if opts.population < 1:
        raise ConfigError(f"generator.pe.population={opts.population} must be at least 1.")
    from dpgd.generators.pe import release_histogram, selection_weights  # pe imports this module

    started = time.perf_counter()
    source = PublicPoolSource(knowledge, seed)
    rounds = opts.rounds
    ks = neighbour_schedule(opts.neighbours_start, opts.neighbours_end, rounds)
    threshold = opts.threshold * sigma
    num_classes = dataset.num_classes
    # The private records' embeddings: read here, used only inside the votes.
    private = [knowledge.embed(dataset.train_images[dataset.train_labels == c]) for c in range(num_classes)]
    random_gen = stage_generator(seed, "generator", "pe", "random")
    vary_gen = stage_generator(seed, "generator", "pe", "variation")
    select_gen = stage_generator(seed, "generator", "pe", "select")
    if opts.initial == "clusters":
        shared = source.random_api(opts.population, "clusters", random_gen)
        candidates = [shared.clone() for _ in range(num_classes)]
    else:
        candidates = [source.random_api(opts.population, opts.initial, random_gen) for _ in range(num_classes)]
    rounds_info = []
    weights: list[torch.Tensor] = []
    bar = progress_bar(range(rounds), desc="pe rounds", disable=not progress, leave=False, dynamic_ncols=True)
    for round_index in bar:
        # --- one Gaussian release over all classes ------------------------------------
        clean = torch.cat([
            torch.bincount(torch.cdist(private[c], source.embedding[candidates[c]]).argmin(dim=1),
                           minlength=candidates[c].shape[0]).to(torch.float32)
            for c in range(num_classes)
        ])
        noisy = release_histogram(clean, sigma, noise_generator)
        if sigma > 0:
            releases.record(sigma)
        del clean
        # --- post-processing ------------------------------------------------------------
        weights, offset = [], 0
        for c in range(num_classes):
            count = candidates[c].shape[0]
            weights.append(selection_weights(noisy[offset : offset + count], threshold))
            offset += count
        survivors = [int((w > 0).sum()) for w in weights]
        info = {"round": round_index, "neighbours": ks[round_index], "population": [int(c.shape[0]) for c in candidates],
                "selected_bins": sum(survivors)}
        if round_index < rounds - 1:
            next_candidates = []
            for c in range(num_classes):
                parents = candidates[c][torch.multinomial(weights[c], opts.population, replacement=True,
                                                          generator=select_gen)]
                children = source.variation_api(parents, ks[round_index], vary_gen)
                next_candidates.append(torch.unique(children))
            candidates = next_candidates
        rounds_info.append(info)
        bar.set_postfix(selected=sum(survivors))
    # --- the pool: neighbourhoods of the last candidates, in proportion to their counts ---
    chosen, labels = [], []
    for c in range(num_classes):
        draws = torch.multinomial(weights[c], pool_per_class, replacement=True, generator=select_gen)
        per_parent = torch.bincount(draws, minlength=candidates[c].shape[0])
        table = source.knowledge.neighbours(candidates[c], max(ks[-1], int(per_parent.max())))
        picked = []
        for j in torch.nonzero(per_parent).flatten().tolist():
            k = max(ks[-1], int(per_parent[j]))
            order = torch.randperm(k, generator=vary_gen)[: int(per_parent[j])]
            picked.append(table[j, order])
        chosen.append(torch.cat(picked))
        labels.append(torch.full((pool_per_class,), c, dtype=torch.int64))
    index = torch.cat(chosen)
    images = knowledge.images(index)
    images = _mild_variation(images, dataset, opts, stage_generator(seed, "generator", "pe", "augment"))
    distinct = [int(torch.unique(part).numel()) for part in chosen]
    info = {"fit_seconds": round(time.perf_counter() - started, 3), "rounds": rounds_info,
            "source": "public", "distinct_per_class": distinct, "non_private": sigma == 0}
    return images, torch.cat(labels), info


def _mild_variation(images: torch.Tensor, dataset: ImageDataset, opts: PeConfig,
                    generator: torch.Generator) -> torch.Tensor:
    """A random horizontal flip, then :func:`affine_variation` at ``pe.strength_end``."""
    mean = torch.tensor(dataset.mean).view(1, -1, 1, 1)
    std = torch.tensor(dataset.std).view(1, -1, 1, 1)
    pixels = (images * std + mean).clamp(0.0, 1.0)
    flip = torch.rand(pixels.shape[0], generator=generator) < 0.5
    pixels = torch.where(flip.view(-1, 1, 1, 1), pixels.flip(3), pixels)
    if opts.strength_end > 0 and not math.isclose(opts.strength_end, 0.0):
        pixels = affine_variation(pixels, opts.strength_end, opts.pixel_noise, generator)
    return (pixels - mean) / std

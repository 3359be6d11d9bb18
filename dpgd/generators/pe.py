"""Private Evolution (Lin et al., ICLR 2024): evolve public candidates by noisy private votes.

Per class c, a population of candidates starts from the public ``random_api``. Each
round: every private record of class c votes once for its nearest candidate of class c
(in a fixed embedding, see :class:`VotingEmbedding`), giving a histogram per class; the
histograms of ALL classes get Gaussian noise ``N(0, sigma^2)`` per bin in one release;
noisy counts under ``threshold * sigma`` are zeroed; the next population is drawn from
the candidates with probability proportional to the noisy counts and passed through
``variation_api`` at a strength that decreases over rounds. After the last round the pool
is ``pool_per_class`` variations of candidates drawn from the last noisy histogram.

Sensitivity. Adding or removing one record adds or removes one vote: one bin of one
class's histogram changes by 1, so the L2 sensitivity of the concatenated histograms is 1
(classes are disjoint, and a record votes only within its own class). One round is one
Gaussian mechanism on all records (sample rate 1); ``rounds`` rounds compose:
``SubsampledGaussian(sample_rate=1, steps=rounds)``. Class labels of the records are
part of the private data; which class a record votes in is covered by the same bound.
Everything else (candidates, variations, resampling) is post-processing of the noisy
histograms and public inputs. Clean histograms never leave :func:`vote_histogram`'s
caller; only the output of :func:`release_histogram` is used.
"""

from __future__ import annotations

import time

import torch

from dpgd.config import ModelConfig
from dpgd.counts import ClassCounts
from dpgd.data import ImageDataset
from dpgd.errors import ConfigError
from dpgd.generators.base import GENERATOR_COMPONENT, Pool, PoolGenerator, check_multiplier
from dpgd.generators import pe_public
from dpgd.generators.pe_sources import CandidateSource, build_source
from dpgd.models import seeded_model
from dpgd.privacy.components import PrivacyNeed, ReleaseLog
from dpgd.privacy.randomness import NoiseSource
from dpgd.progress import progress_bar
from dpgd.public import PublicKnowledge
from dpgd.seeding import derive_seed, stage_generator

SENSITIVITY = 1.0
SENSITIVITY_TEXT = (
    "one vote per record for its nearest candidate of its class: one record changes one "
    "histogram bin by 1, L2 sensitivity 1"
)
EMBEDDINGS = ("auto", "public_net", "random_convnet", "pixels")
# The voting ConvNet: narrow (64) to keep embedding cheap; fixed random weights from the seed.
VOTING_NET = ModelConfig(name="convnet", width=64, depth=None, norm="instancenorm")
EMBED_BATCH = 512


class VotingEmbedding:
    """A fixed, data-independent map where nearest neighbours are found."""

    def __init__(self, name: str, dataset: ImageDataset, seed: int, device: torch.device,
                 public: PublicKnowledge | None = None) -> None:
        name = resolved_embedding(name, public is not None)
        self.name = name
        self.device = device
        self.net = None
        self.public = public
        if name == "random_convnet":
            self.net = seeded_model(
                VOTING_NET, dataset.channels, dataset.num_classes, dataset.image_size,
                derive_seed(seed, "generator", "pe", "embedding"),
            ).to(device).eval()

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.name == "public_net":
            assert self.public is not None  # resolved_embedding
            return self.public.embed(images.cpu())
        out = []
        for start in range(0, images.shape[0], EMBED_BATCH):
            batch = images[start : start + EMBED_BATCH].to(self.device)
            out.append(batch.flatten(1) if self.net is None else self.net.embed(batch))
        return torch.cat(out)


def resolved_embedding(name: str, has_public: bool) -> str:
    """``pe.embedding`` with ``auto`` resolved (the public network when there is one)."""
    if name not in EMBEDDINGS:
        raise ConfigError(f"generator.pe.embedding={name} is unknown; choose one of {', '.join(EMBEDDINGS)}.")
    if name == "auto":
        return "public_net" if has_public else "random_convnet"
    if name == "public_net" and not has_public:
        raise ConfigError("generator.pe.embedding=public_net needs public knowledge: set public=folder "
                          "public.root=<public images> (or another pe.embedding).")
    return name


def resolved_source(name: str, has_public: bool) -> str:
    """``pe.source`` with ``auto`` resolved (the run's public pool when there is one)."""
    if name == "auto":
        return "public" if has_public else "public_folder"
    if name == "public" and not has_public:
        raise ConfigError("generator.pe.source=public draws from the run's public pool: set public=folder "
                          "public.root=<public images> (or generator.pe.source=public_folder).")
    return name


def vote_histogram(private: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Clean counts: how many private embeddings have each candidate as nearest (L2)."""
    nearest = torch.cdist(private, candidates).argmin(dim=1)
    return torch.bincount(nearest, minlength=candidates.shape[0]).to(torch.float32)


def release_histogram(counts: torch.Tensor, noise_multiplier: float, generator: torch.Generator) -> torch.Tensor:
    """The Gaussian release of one round: ``counts + N(0, (noise_multiplier * 1)^2)`` per bin.

    ``counts`` holds all classes' histograms (one round = one mechanism); noise comes from
    ``generator`` on the CPU. A multiplier of 0 (non-private run) adds nothing.
    """
    counts = counts.detach().cpu().clone()
    if noise_multiplier > 0:
        counts += torch.randn(counts.shape, generator=generator) * (noise_multiplier * SENSITIVITY)
    return counts


def selection_weights(noisy: torch.Tensor, threshold: float) -> torch.Tensor:
    """Per-class resampling weights from one class's noisy counts (post-processing).

    Counts under ``threshold`` are zeroed; if nothing survives, the positive part is used,
    and if nothing is positive, uniform weights (the noise swamped the votes).
    """
    weights = torch.where(noisy >= threshold, noisy, torch.zeros_like(noisy)).clamp(min=0.0)
    if weights.sum() <= 0:
        weights = noisy.clamp(min=0.0)
    if weights.sum() <= 0:
        weights = torch.ones_like(noisy)
    return weights


class PrivateEvolution(PoolGenerator):
    """PE over a pluggable :class:`CandidateSource` (public folder or a local diffusion model)."""

    name = "pe"

    def privacy_request(self) -> PrivacyNeed:
        rounds = self.cfg.pe.rounds
        if rounds < 1:
            raise ConfigError(f"generator.pe.rounds={rounds} must be at least 1.")
        return PrivacyNeed(GENERATOR_COMPONENT, sample_rate=1.0, steps=rounds, sensitivity=SENSITIVITY_TEXT)

    def build_source(self, dataset: ImageDataset, device: torch.device) -> CandidateSource:
        return build_source(self.cfg.pe, dataset, device)

    def _public_pool(self, dataset: ImageDataset, sigma: float, noise_multiplier: float | None, seed: int,
                     noise: NoiseSource, releases: ReleaseLog) -> Pool:
        """``pe.source=public``: :func:`dpgd.generators.pe_public.evolve`."""
        assert self.public is not None  # resolved_source
        images, labels, info = pe_public.evolve(
            self.cfg.pe, self.pool_per_class, self.public, dataset, sigma,
            noise_generator=noise.generator("generator", "pe", "noise"), seed=seed, releases=releases,
            progress=self.progress,
        )
        info["non_private"] = noise_multiplier is None
        return Pool(images, labels, self.mechanisms(noise_multiplier), synthetic=True, info=info)

    def fit_and_sample(
        self, dataset: ImageDataset, noise_multiplier: float | None, seed: int, device: torch.device,
        *, noise: NoiseSource, counts: ClassCounts, releases: ReleaseLog | None = None,
    ) -> Pool:
        del counts  # PE needs no class count
        releases = releases or ReleaseLog(GENERATOR_COMPONENT)
        opts = self.cfg.pe
        sigma = check_multiplier(self.name, noise_multiplier)
        if resolved_source(opts.source, self.public is not None) == "public":
            return self._public_pool(dataset, sigma, noise_multiplier, seed, noise, releases)
        need = self.privacy_request()
        population = opts.population
        if population < 1:
            raise ConfigError(f"generator.pe.population={population} must be at least 1.")
        strengths = torch.linspace(opts.strength_start, opts.strength_end, need.steps).tolist()
        if any(not 0.0 <= s <= 1.0 for s in strengths):
            raise ConfigError("generator.pe.strength_start and strength_end must lie in [0, 1].")
        threshold = opts.threshold * sigma * SENSITIVITY
        started = time.perf_counter()
        source = self.build_source(dataset, device)
        embed = VotingEmbedding(opts.embedding, dataset, seed, device, self.public)
        num_classes = dataset.num_classes
        private = [embed(dataset.train_images[dataset.train_labels == c]) for c in range(num_classes)]
        random_gen = stage_generator(seed, "generator", "pe", "random")
        candidates = [source.random_api(population, c, random_gen).cpu() for c in range(num_classes)]
        noise_gen = noise.generator("generator", "pe", "noise")
        select_gen = stage_generator(seed, "generator", "pe", "select")
        vary_gen = stage_generator(seed, "generator", "pe", "variation")
        rounds_info = []
        bar = progress_bar(range(need.steps), desc="pe rounds", disable=not self.progress, leave=False, dynamic_ncols=True)
        for round_index in bar:
            # --- one Gaussian release over all classes --------------------------------
            clean = torch.cat([vote_histogram(private[c], embed(candidates[c])).cpu() for c in range(num_classes)])
            noisy = release_histogram(clean, sigma, noise_gen)
            if sigma > 0:
                releases.record(sigma)
            del clean
            # --- post-processing ------------------------------------------------------
            last = round_index == need.steps - 1
            draw = self.pool_per_class if last else population
            survivors, offsets, new = 0, 0, []
            for c in range(num_classes):
                count = candidates[c].shape[0]
                weights = selection_weights(noisy[offsets : offsets + count], threshold)
                offsets += count
                survivors += int((weights > 0).sum())
                parents = torch.multinomial(weights, draw, replacement=True, generator=select_gen)
                new.append(source.variation_api(candidates[c][parents], strengths[round_index], vary_gen).cpu())
            candidates = new
            rounds_info.append({"round": round_index, "strength": round(strengths[round_index], 4),
                                "selected_bins": survivors})
            bar.set_postfix(selected=survivors)
        images = torch.cat(candidates)
        labels = torch.arange(num_classes).repeat_interleave(self.pool_per_class)
        return Pool(
            images, labels, self.mechanisms(noise_multiplier), synthetic=True,
            info={
                "fit_seconds": round(time.perf_counter() - started, 3),
                "rounds": rounds_info,
                "source": opts.source,
                "non_private": noise_multiplier is None,
            },
        )

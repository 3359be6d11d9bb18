"""The release pipeline: class counts -> DP generation -> pool networks -> initialisation ->
DP expert -> matching -> DP selection along the matching trajectory.

:func:`distill` turns a private data set into a distilled set under a noise plan, declaring
every DP mechanism to the run's ledger before it runs. ``train.run`` calls it once; the
membership-inference attack calls it once per shadow run on a member subset, so the
attack measures exactly the pipeline that is released.

Every DP mechanism draws its noise and Poisson masks from the run's
:class:`~dpgd.privacy.randomness.NoiseSource` (secret unless ``reproducible_noise``), and
every count it needs from the one noisy class histogram (:mod:`dpgd.counts`), released
first. The public ``seed`` only drives randomness the guarantee does not rest on.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from dpgd import counts as class_counts
from dpgd.checkpoints import RunCheckpoints
from dpgd.config import TrainConfig
from dpgd.counts import ClassCounts
from dpgd.data import ImageDataset
from dpgd.distilled import DistilledSet
from dpgd.errors import ConfigError
from dpgd.budget import matching_information, replan_without, sample_rates_for
from dpgd.expert import (
    Expert, ExpertAlignment, FinetuneChoice, choose_finetuning, pool_accuracy, pool_expert, train_expert,
    train_lda_expert,
)
from dpgd.models import build_model
from dpgd.generators import Pool, declare_pool, generate_pool, pool_report
from dpgd.generators.cache import local_secret, resolve_cache_dir
from dpgd.initialisation import POOL_INITS, check_init, initialise, initialise_from_pool
from dpgd.matching import (
    ExtractorSource, LoopCheckpoint, MatchingStats, PoolTrainedExtractors, RandomExtractors, match, match_to_pool,
)
from dpgd.pool_networks import PoolNetworks, train_pool_networks
from dpgd.privacy import NoisePlan, PrivacyLedger, ReleaseLog, SubsampledGaussian, declare_planned
from dpgd.privacy.randomness import NoiseSource
from dpgd.public import PublicKnowledge, PublicShape, prepare_public
from dpgd.seeding import stage_generator
from dpgd import selection
from dpgd.selection import Selection
from dpgd.tracking import Tracker
from dpgd.validation import check_counts, check_stage_combinations, is_private

log = logging.getLogger("dpgd")


@dataclass
class StageTimer:
    seconds: dict[str, float] = field(default_factory=dict)
    # The innermost stage a Ctrl-C stopped (for "interrupted in stage X").
    interrupted: str | None = None

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        log.info("stage %s ...", name)
        outcome = "failed"
        try:
            yield
            outcome = "done"
        except KeyboardInterrupt:
            outcome = "interrupted"
            self.interrupted = self.interrupted or name
            raise
        finally:
            self.seconds[name] = round(time.perf_counter() - start, 3)
            log.info("stage %s %s after %.1f s", name, outcome, self.seconds[name])


def planned_multiplier(plan: NoisePlan | None, component: str) -> float | None:
    """The plan's noise multiplier for a component, or None if it has no share (or no plan)."""
    if plan is None or component not in plan.multipliers:
        return None
    return plan.for_component(component)


@dataclass(frozen=True)
class RunContext:
    """What the stages of one run share besides their own config section and the privacy
    state (plan, ledger): where to compute, the public seed, progress bars, the tracker,
    and the secret noise source."""

    device: torch.device
    seed: int
    progress: bool
    tracker: Tracker
    noise: NoiseSource
    checkpoints: RunCheckpoints | None = None

    def load(self, stage: str) -> dict[str, Any] | None:
        """The stage's output saved by an earlier process of this run (None: run it)."""
        return None if self.checkpoints is None else self.checkpoints.load(stage)

    def save(self, stage: str, payload: dict[str, Any], finished: bool = True) -> None:
        if self.checkpoints is not None:
            self.checkpoints.save(stage, payload, finished)

    def discard(self, stage: str) -> None:
        if self.checkpoints is not None:
            self.checkpoints.discard(stage)


@dataclass(frozen=True)
class Release:
    """What the release stages produce: the distilled set and the counts they used."""

    distilled: DistilledSet
    counts: ClassCounts
    # Private diagnostics: whether the pool came from the cache (None without a pool), and
    # the matching loop's statistics (seconds depend on the Poisson batch sizes, hence on N).
    pool_cache_hit: bool | None = None
    match_stats: MatchingStats | None = None
    # The DP selection's released accuracies and choice (None when it did not run).
    selection: Selection | None = None
    # The public pool the run used (public=folder: root, fingerprint, image count; public
    # data, recorded in results.json) and its stage's private diagnostics (seconds, caches).
    public: dict[str, Any] | None = None
    public_diagnostics: dict[str, Any] | None = None


def run_noise(cfg: TrainConfig) -> NoiseSource:
    """The run's noise source: secret for a private run unless ``reproducible_noise``."""
    return NoiseSource.for_run(cfg.seed, is_private(cfg), cfg.reproducible_noise)


def release_counts(cfg: TrainConfig, dataset: ImageDataset, plan: NoisePlan | None, ledger: PrivacyLedger,
                   noise: NoiseSource) -> ClassCounts:
    """The noisy class histogram (exact only in a non-private run), declared before it is drawn."""
    sigma = None
    if plan is not None:
        if class_counts.COMPONENT not in plan.multipliers:
            raise ConfigError("a private run must release its class counts with noise; set budget.counts > 0.")
        [sigma] = declare_planned(ledger, plan, class_counts.COMPONENT)
    releases = ReleaseLog(class_counts.COMPONENT)
    counts = class_counts.release_class_counts(dataset.train_labels, dataset.num_classes, sigma,
                                               noise.generator("counts", "noise"), releases)
    releases.check(planned_records(plan, class_counts.COMPONENT))
    check_counts(cfg, counts, dataset.class_names)
    return counts


def planned_records(plan: NoisePlan | None, component: str) -> tuple[SubsampledGaussian, ...]:
    """The records a component declared (none in a run without a plan)."""
    return () if plan is None else plan.mechanisms_for(component)


def distill(
    cfg: TrainConfig,
    dataset: ImageDataset,
    plan: NoisePlan | None,
    ledger: PrivacyLedger,
    *,
    device: torch.device,
    tracker: Tracker | None = None,
    timer: StageTimer | None = None,
    progress: bool = True,
    metrics: dict[str, Any] | None = None,
    noise: NoiseSource | None = None,
    checkpoints: RunCheckpoints | None = None,
) -> Release:
    """Run the release stages of ``cfg`` on ``dataset`` (the private train split).

    ``noise`` defaults to :func:`run_noise` (a fresh secret for a private run). ``metrics``
    (if given) receives per-stage figures computed from DP outputs and public data only; the
    pool report (pool network 0 tested on the public test set) runs only then.
    ``checkpoints`` (the run folder's, :mod:`dpgd.checkpoints`) saves each stage's output as
    it finishes and supplies those of an earlier, interrupted process of the same run: a
    stage found there is loaded and re-declares its records instead of running.
    """
    tracker = tracker or Tracker()
    timer = timer or StageTimer()
    noise = noise if noise is not None else run_noise(cfg)
    ctx = RunContext(device=device, seed=cfg.seed, progress=progress, tracker=tracker, noise=noise,
                     checkpoints=checkpoints)
    check_stage_combinations(cfg)  # train.run judged it already; shadow runs and library callers too
    check_init(cfg.init, cfg.generator.name, dataset.image_size)
    public = None
    if cfg.public.name != "none":
        # Public inputs only (the folder, the architecture, the data set's public shape),
        # before the first release: a bad public folder never costs budget.
        with timer.stage("public"):
            public = prepare_public(cfg.public, PublicShape.of(dataset), cfg.model, device=ctx.device,
                                    cache_dir=resolve_cache_dir(cfg.generator.cache_dir), progress=ctx.progress)
    with timer.stage("counts"):
        saved = ctx.load("counts")
        if saved is None:
            counts = release_counts(cfg, dataset, plan, ledger, noise)
            ctx.save("counts", counts.to_payload())
        else:
            counts = ClassCounts.from_payload(saved)
            redeclare_planned(ledger, plan, class_counts.COMPONENT)
    cfg, plan = rates_from_counts(cfg, plan, counts)
    finetune = None
    if cfg.expert.name == "dp_sgd":
        plan, finetune = plan_expert(cfg, dataset, plan, counts, public=public)
    if metrics is not None and plan is not None and cfg.matcher.name == "dp_feature":
        # Public: the plan and the released counts (a non-private run has no noise to report).
        metrics["match"] = matching_diagnostics(cfg, dataset, plan, counts)
    pool = None
    if cfg.generator.name != "none":
        with timer.stage("generate"):
            saved = ctx.load("generate")
            if saved is None:
                pool = generate_pool(cfg.generator, dataset, planned_multiplier(plan, "generator"), ledger,
                                     private=is_private(cfg), seed=ctx.seed, device=ctx.device, noise=ctx.noise,
                                     counts=counts, progress=ctx.progress, curve=ctx.tracker.curve("generate"),
                                     public=public)
                ctx.save("generate", pool.to_payload())
            else:
                pool = Pool.from_payload(saved)
                declare_pool(ledger, pool)
    networks = None
    count = pool_networks_needed(cfg, report=metrics is not None)
    if pool is not None and count:
        with timer.stage("pool_nets"):
            networks = build_pool_networks(cfg, dataset, pool, count, ctx, public=public)
    if pool is not None and metrics is not None and cfg.generator.report:
        report = pool_report(pool, dataset, None if networks is None else networks.final())
        metrics["generate"] = {"pool_size": len(pool.labels), "pool_test_acc": report["pool_test_acc"]}
        if pool.info.get("source") == "public":  # PE's rounds: post-processing of its noisy histograms
            metrics["generate"].update({key: pool.info[key] for key in ("rounds", "distinct_per_class")})
        tracker.log("generate", {"pool_test_acc": report["pool_test_acc"] or float("nan"),
                                 "pool_size": len(pool.labels)}, step=0)
        if report["grid"] is not None:
            tracker.log_images("generate/pool", report["grid"], report["grid_nrow"], "DP-generated pool")

    with timer.stage("init"):
        saved = ctx.load("init")
        if saved is not None:
            distilled = DistilledSet.from_payload(saved)
        elif cfg.init.name in POOL_INITS:
            distilled = initialise_from_pool(cfg.init, pool, dataset, cfg.ipc, cfg.seed,
                                             embedding=None if networks is None else networks.final())
            if cfg.init.pool_matching_iterations:
                assert pool is not None  # initialise_from_pool refuses a missing pool
                distilled = match_to_pool(
                    distilled, pool.images, pool.labels, dataset, cfg.init, cfg.model, cfg.seed, ctx.device,
                    progress=ctx.progress, on_iteration=loop_logger(
                        ctx.tracker, "init", cfg.init.pool_matching_iterations, 50, {"match_loss": "pool_match_loss"}),
                )
        else:
            distilled = initialise(cfg.init.name, dataset, cfg.ipc, cfg.epsilon, stage_generator(cfg.seed, "init"))
        if saved is None:
            ctx.save("init", distilled.to_payload())
    if pool is None or pool.synthetic or not math.isfinite(cfg.epsilon):
        tracker.log_images("init/images", dataset.denormalise(distilled.images), cfg.ipc, "initialisation")

    alignment = None
    if cfg.expert.name != "none":
        assert pool is not None  # check_stage_combinations: an expert needs a generator
        with timer.stage("expert"):
            assert networks is not None  # pool_networks_needed: the expert starts from network 0
            alignment = build_alignment(cfg, dataset, pool, networks, plan, ledger, ctx, counts=counts,
                                        metrics=metrics, finetune=finetune, public=public)

    match_stats = None
    candidates: dict[int, DistilledSet] = {}
    if cfg.matcher.name != "none":
        with timer.stage("match"):
            saved = ctx.load("match")
            if saved is None:
                start = distilled
                match_cfg, match_networks = public_extractors(cfg, networks, public)
                distilled, match_stats, snapshots = run_matching(match_cfg, dataset, distilled, match_networks,
                                                                 alignment, plan, ledger, ctx, counts=counts)
                candidates = {0: start, **snapshots, cfg.matcher.iterations: distilled}
                ctx.save("match", {**distilled.to_payload(), "stats": dataclasses.asdict(match_stats),
                                   "candidates": candidates_payload(candidates)})
                ctx.discard("match_state")
                ctx.discard("match_snapshots")
            else:
                if cfg.matcher.name == "dp_feature":
                    redeclare_planned(ledger, plan, "matcher")
                distilled = DistilledSet.from_payload(saved)
                match_stats = MatchingStats(**saved["stats"])
                candidates = candidates_from_payload(saved["candidates"], distilled.factor)
        if metrics is not None and match_stats is not None and match_stats.snr_bound is not None:
            # From the noisy releases and counts only: public, like the distilled set.
            metrics.setdefault("match", {}).update({"snr_bound": match_stats.snr_bound, "snr": match_stats.snr})
            if match_stats.shrinkage_weight is not None:
                metrics["match"]["shrinkage_weight"] = match_stats.shrinkage_weight
    chosen = None
    if selection.runs(cfg.selection, cfg.matcher):
        with timer.stage("select"):
            distilled, chosen = run_selection(cfg, dataset, candidates, plan, ledger, ctx, counts=counts)
        if metrics is not None:
            metrics["select"] = chosen.to_dict()
    return Release(distilled, counts, None if pool is None else bool(pool.info.get("cache_hit", False)), match_stats,
                   chosen, None if public is None else public.describe(), None if public is None else public.info)


def loop_logger(tracker: Tracker, stage: str, iterations: int, times: int,
                names: dict[str, str] | None = None) -> Callable[[int, dict[str, Any]], None]:
    """An ``on_iteration`` for a matching loop: logs its values (DP outputs only) under
    ``stage`` about ``times`` times a run and at the last iteration; ``names`` keeps only
    the values it names, renamed."""
    every = max(1, iterations // times)

    def log(iteration: int, values: dict[str, Any]) -> None:
        if iteration % every == 0 or iteration == iterations - 1:
            kept = values.items() if names is None else ((names[k], v) for k, v in values.items() if k in names)
            tracker.log(stage, {key: float(value) for key, value in kept}, step=iteration)

    return log


def public_extractors(cfg: TrainConfig, networks: PoolNetworks | None,
                      public: PublicKnowledge | None) -> tuple[TrainConfig, PoolNetworks | None]:
    """``matcher.extractors=public``: matching draws from the snapshots of the public
    pretraining (no generator needed), handed to the matcher as fixed, pool-trained-like
    extractors; any other choice is passed through."""
    if cfg.matcher.name == "none" or cfg.matcher.extractors != "public":
        return cfg, networks
    assert public is not None  # check_stage_combinations: extractors=public needs public=folder
    matcher = dataclasses.replace(cfg.matcher, extractors="pool_trained")
    return dataclasses.replace(cfg, matcher=matcher), PoolNetworks([public.extractors()])


def candidates_payload(candidates: dict[int, DistilledSet]) -> dict[str, Any]:
    """The selection's candidates as a checkpoint holds them (iterations, stored images)."""
    iterations = sorted(candidates)
    return {"iterations": iterations, "images": [candidates[i].images.detach().cpu() for i in iterations],
            "labels": candidates[iterations[0]].labels.detach().cpu()}


def candidates_from_payload(payload: dict[str, Any], factor: int) -> dict[int, DistilledSet]:
    return {int(i): DistilledSet(images, payload["labels"], factor=factor)
            for i, images in zip(payload["iterations"], payload["images"])}


def run_selection(cfg: TrainConfig, dataset: ImageDataset, candidates: dict[int, DistilledSet],
                  plan: NoisePlan | None, ledger: PrivacyLedger, ctx: RunContext, *,
                  counts: ClassCounts) -> tuple[DistilledSet, Selection]:
    """The DP selection among the matching trajectory's candidates (declared before it
    reads the data), or its saved output re-declared."""
    saved = ctx.load("select")
    if saved is not None:
        redeclare_planned(ledger, plan, selection.COMPONENT)
        return DistilledSet.from_payload(saved), Selection(**saved["selection"])
    noise_multiplier = None
    if plan is not None:
        [noise_multiplier] = declare_planned(ledger, plan, selection.COMPONENT)
    releases = ReleaseLog(selection.COMPONENT)
    chosen_set, chosen = selection.select(
        candidates, dataset, cfg.selection, cfg.model, cfg.evaluation, noise_multiplier=noise_multiplier,
        counts=counts, seed=ctx.seed, device=ctx.device, noise_generator=ctx.noise.generator("select", "noise"),
        releases=releases, progress=ctx.progress,
    )
    releases.check(planned_records(plan, selection.COMPONENT))
    for iteration, gain in zip(chosen.iterations, chosen.noisy_gain):
        ctx.tracker.log("select", {"noisy_gain": gain}, step=iteration)
    ctx.save("select", {**chosen_set.to_payload(), "selection": dataclasses.asdict(chosen)})
    return chosen_set, chosen


def rates_from_counts(cfg: TrainConfig, plan: NoisePlan | None,
                      counts: ClassCounts) -> tuple[TrainConfig, NoisePlan | None]:
    """The run's config with the Poisson rates read from the released counts and the
    matching iterations they imply (:func:`dpgd.budget.sample_rates_for`), and its plan
    re-calibrated for them when they changed (the count record stays as it ran)."""
    rated = sample_rates_for(cfg, counts, plan)
    if rated == cfg:
        return cfg, plan
    log.info("from the released counts: matcher q=%.4g for %d iterations, expert q=%.4g",
             rated.matcher.sample_rate, rated.matcher.iterations, rated.expert.sample_rate)
    if plan is not None:
        plan = replan_without(rated, plan, None)
    return rated, plan


def matching_diagnostics(cfg: TrainConfig, dataset: ImageDataset, plan: NoisePlan | None,
                         counts: ClassCounts) -> dict[str, Any]:
    """What the matcher will run, from public quantities: iterations, sample rate and the
    summed squared signal-to-noise of its releases (:func:`dpgd.budget.matching_information`)."""
    model = build_model(cfg.model, dataset.channels, dataset.num_classes, dataset.image_size)
    dimension = model.pooled_dim if cfg.matcher.embedding == "pooled" else model.feature_dim
    information = matching_information(cfg, plan, counts, dimension)
    log.info("matcher: %d iterations at q=%.4g, summed squared signal-to-noise of its releases %.3g",
             cfg.matcher.iterations, cfg.matcher.sample_rate, information)
    return {"iterations": cfg.matcher.iterations, "sample_rate": cfg.matcher.sample_rate, "information": information}


def plan_expert(cfg: TrainConfig, dataset: ImageDataset, plan: NoisePlan | None,
                counts: ClassCounts, public: PublicKnowledge | None = None) -> tuple[NoisePlan | None, FinetuneChoice]:
    """Resolve ``expert.finetune`` from public quantities, right after the count release and
    before any other DP stage: when the rule switches fine-tuning off, the expert's share
    is re-planned onto the other components (the released count record stays fixed); when
    it picks the linear-discriminant head from noisy class means (public knowledge only),
    the expert's share is re-planned for that one release."""
    sigmas = [] if plan is None else plan.schedule_for("expert")
    model = build_model(cfg.model, dataset.channels, dataset.num_classes, dataset.image_size)
    lda_sigma, lda_plan = None, None
    if public is not None:
        lda_cfg = dataclasses.replace(cfg, expert=dataclasses.replace(cfg.expert, finetune="lda"))
        lda_plan = None if plan is None else replan_without(lda_cfg, plan, None)
        lda_sigma = 0.0 if lda_plan is None else lda_plan.schedule_for("expert")[0]
    choice = choose_finetuning(cfg.expert, sigmas, model, counts.total, lda_sigma, dataset.num_classes)
    if choice.finetune == "lda":
        log.info("expert: predicted noise-to-signal %s -> a linear-discriminant head from noisy class means on the "
                 "public embedding", ", ".join(f"{k} {v:.3g}" for k, v in choice.noise_to_signal.items()))
        return (plan if lda_plan is None else lda_plan), choice
    log.info("expert: predicted noise-to-signal of a DP-SGD step %s -> fine-tune %s",
             ", ".join(f"{k} {v:.3g}" for k, v in choice.noise_to_signal.items()), choice.finetune)
    if choice.finetune == "none" and plan is not None:
        plan = replan_without(cfg, plan, "expert")
        log.info("expert: not fine-tuned (above expert.max_noise_to_signal=%g); its share re-planned: %s",
                 cfg.expert.max_noise_to_signal,
                 ", ".join(f"{k} sigma {v:.4g}" for k, v in plan.multipliers.items()))
    return plan, choice


def pool_networks_needed(cfg: TrainConfig, report: bool) -> int:
    """How many pool networks the run uses: all for pool-trained extractors, network 0 for
    the k-means embedding, the expert or the pool report, none without a pool."""
    if cfg.generator.name == "none":
        return 0
    if cfg.matcher.name != "none" and cfg.matcher.extractors == "pool_trained":
        return cfg.pool_nets.count
    kmeans_embedding = cfg.init.name == "kmeans" and cfg.init.feature_space == "pool_net"
    return int(cfg.expert.name != "none" or kmeans_embedding or (report and cfg.generator.report))


def build_pool_networks(cfg: TrainConfig, dataset: ImageDataset, pool: Pool, count: int,
                        ctx: RunContext, public: PublicKnowledge | None = None) -> PoolNetworks:
    """The run's pool networks: from its checkpoint, the cache beside the pool, or trained
    (from the public pretrained weights when the run has public knowledge)."""
    saved = ctx.load("pool_nets")
    if saved is not None and len(saved["snapshots"]) == count:
        return PoolNetworks.from_payload(saved, cfg.model, dataset, ctx.device)
    cache_dir = resolve_cache_dir(cfg.generator.cache_dir) if cfg.pool_nets.cache else None
    networks = train_pool_networks(
        cfg.pool_nets, count, cfg.model, pool.images, pool.labels, dataset, seed=ctx.seed, device=ctx.device,
        cache_dir=cache_dir, cache_secret=None if cache_dir is None else local_secret(cache_dir),
        progress=ctx.progress, start=None if public is None else public.weights(),
        start_key=None if public is None else public.network.key,
    )
    ctx.save("pool_nets", networks.to_payload())
    return networks


def redeclare_planned(ledger: PrivacyLedger, plan: NoisePlan | None, component: str) -> None:
    """A stage loaded from its checkpoint: declare the records it ran (none without a plan)."""
    if plan is not None and component in plan.multipliers:
        declare_planned(ledger, plan, component)


def build_alignment(
    cfg: TrainConfig, dataset: ImageDataset, pool: Pool, networks: PoolNetworks, plan: NoisePlan | None,
    ledger: PrivacyLedger,
    ctx: RunContext, *, counts: ClassCounts, metrics: dict[str, Any] | None,
    finetune: FinetuneChoice | None = None, public: PublicKnowledge | None = None,
) -> ExpertAlignment:
    """Train the DP expert (declaring its DP-SGD to the ledger first) and build the loss.
    ``finetune`` is :func:`plan_expert`'s choice (``none``: pool network 0 as it is)."""
    fine_tuned = cfg.expert.name == "dp_sgd" and (finetune is None or finetune.finetune != "none")
    noise_multiplier = None
    if plan is not None and fine_tuned:
        if "expert" not in plan.multipliers:
            raise ConfigError("expert=dp_sgd fine-tunes on private data but has no budget; set budget.expert > 0.")
        # The planned records (one per piece of the noise schedule) and the per-step sigmas
        # the fine-tuning runs with: both come from the same plan records.
        noise_multiplier = declare_planned(ledger, plan, "expert")
    saved = ctx.load("expert")
    if saved is None and not fine_tuned:
        expert = pool_expert(networks.final())
        accuracy = pool_accuracy(expert, dataset) if metrics is not None else None
        ctx.save("expert", {**expert.to_payload(), "test_acc": accuracy})
    elif saved is None and finetune is not None and finetune.finetune == "lda":
        assert public is not None  # plan_expert offers lda only with public knowledge
        releases = ReleaseLog("expert")
        expert = train_lda_expert(cfg.expert, public, dataset, None if noise_multiplier is None else noise_multiplier[0],
                                  pool.images, pool.labels, noise=ctx.noise, counts=counts, seed=ctx.seed,
                                  releases=releases)
        releases.check(planned_records(plan, "expert"))
        accuracy = pool_accuracy(expert, dataset) if metrics is not None else None
        ctx.save("expert", {**expert.to_payload(), "test_acc": accuracy})
    elif saved is None:
        releases = ReleaseLog("expert")
        expert = train_expert(cfg.expert, networks.final(), dataset, noise_multiplier, ctx.device, ctx.progress,
                              noise=ctx.noise, counts=counts, releases=releases,
                              finetune=None if finetune is None else finetune.finetune,
                              curve=ctx.tracker.curve("expert"))
        releases.check(planned_records(plan, "expert"))
        accuracy = pool_accuracy(expert, dataset) if metrics is not None else None
        ctx.save("expert", {**expert.to_payload(), "test_acc": accuracy})
    else:
        expert = Expert.from_payload(saved, cfg.model, dataset)
        accuracy = saved["test_acc"] if metrics is not None else None
        if metrics is not None and accuracy is None:  # saved by a run that did not measure it
            accuracy = pool_accuracy(expert, dataset)
    if metrics is not None:
        metrics["expert"] = {"test_acc": accuracy, **({} if finetune is None else finetune.to_dict())}
        ctx.tracker.log("expert", {"test_acc": accuracy, **({} if finetune is None else {
            f"noise_to_signal_{k}": v for k, v in finetune.noise_to_signal.items()})}, step=int(expert.info["steps"]))
    return ExpertAlignment(
        expert.model, pool.images, pool.labels, num_classes=dataset.num_classes,
        temperature=cfg.expert.temperature, reference_per_class=cfg.expert.reference_per_class,
        align_weight=cfg.expert.align_weight, ce_weight=cfg.expert.ce_weight,
        generator=stage_generator(ctx.seed, "expert", "references"), device=ctx.device,
    )


def run_matching(
    cfg: TrainConfig,
    dataset: ImageDataset,
    distilled: DistilledSet,
    networks: PoolNetworks | None,
    alignment: ExpertAlignment | None,
    plan: NoisePlan | None,
    ledger: PrivacyLedger,
    ctx: RunContext,
    *,
    counts: ClassCounts,
) -> tuple[DistilledSet, MatchingStats, dict[int, DistilledSet]]:
    noise_multiplier: float | list[float] | None = None
    if cfg.matcher.name == "dp_feature" and plan is None:
        # epsilon=inf: the same mechanism with sigma 0 (Poisson sampling and clipping kept),
        # the non-private upper bound of this very method (NDPDC's code reports it as sigma=0).
        noise_multiplier = 0.0
    elif cfg.matcher.name == "dp_feature":
        # One sigma per iteration, built from the same records the ledger holds.
        noise_multiplier = declare_planned(ledger, plan, "matcher")
        pieces = plan.pieces_for("matcher")
        if cfg.matcher.release == "once":
            log.info("matcher: noise multiplier %.4g for %d targets released once each (q=1)",
                     noise_multiplier[0], len(noise_multiplier))
        else:
            log.info("matcher: noise multiplier %.4g -> %.4g (%d pieces) for %d iterations at q=%.4g",
                     noise_multiplier[0], noise_multiplier[-1], len(pieces), cfg.matcher.iterations,
                     cfg.matcher.sample_rate)
    pick = stage_generator(ctx.seed, "match", "extractors")
    if cfg.matcher.extractors == "pool_trained":
        assert networks is not None  # check_stage_combinations: pool-trained extractors need a generator
        extractors: ExtractorSource = PoolTrainedExtractors(networks.all_snapshots(), pick)
    else:  # random (check_stage_combinations refuses any other name)
        extractors = RandomExtractors(cfg.model, dataset.channels, dataset.num_classes, dataset.image_size, pick,
                                      ctx.device)
    on_iteration = loop_logger(ctx.tracker, "match", cfg.matcher.iterations, 100)
    snapshot_at = set()
    if selection.runs(cfg.selection, cfg.matcher):
        snapshot_at = set(selection.candidate_iterations(cfg.matcher.iterations, cfg.selection.candidates))
        snapshot_at -= {0, cfg.matcher.iterations}
    saved_snapshots = ctx.load("match_snapshots")
    snapshots = {} if saved_snapshots is None else candidates_from_payload(saved_snapshots, distilled.factor)

    def on_snapshot(done: int, images: torch.Tensor) -> None:
        snapshots[done] = DistilledSet(images, distilled.labels, factor=distilled.factor)
        ctx.save("match_snapshots", candidates_payload(snapshots), finished=False)

    releases = ReleaseLog("matcher")
    augment = stage_generator(ctx.seed, "match", "augment")
    noise_generator = ctx.noise.generator("match", "noise")
    sampling_generator = ctx.noise.generator("match", "sampling")
    checkpoint = None
    if ctx.checkpoints is not None:
        checkpoint = LoopCheckpoint(
            every=cfg.checkpoint_every,
            generators={"augment": augment, "extractors": pick, "noise": noise_generator,
                        "sampling": sampling_generator},
            save=lambda state: ctx.save("match_state", state, finished=False),
            saved=ctx.load("match_state"),
        )
    images, stats = match(
        distilled.images, distilled.labels, dataset, cfg.matcher, extractors=extractors,
        noise_multiplier=noise_multiplier, generator=augment, noise_generator=noise_generator,
        sampling_generator=sampling_generator, counts=counts, releases=releases, checkpoint=checkpoint,
        device=ctx.device, on_iteration=on_iteration, progress=ctx.progress,
        factor=distilled.factor, extra_loss=alignment, snapshot_at=snapshot_at, on_snapshot=on_snapshot,
    )
    releases.check(planned_records(plan, "matcher") if cfg.matcher.name == "dp_feature" else ())
    # Seconds per iteration depend on the Poisson batch sizes (hence on N): not tracked,
    # returned for the private diagnostics only.
    return DistilledSet(images, distilled.labels, factor=distilled.factor), stats, snapshots

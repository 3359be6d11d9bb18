"""Shadow runs: the whole release pipeline on random halves of a target population.

A run k draws a private set (its members of the population P), runs
:func:`dpgd.pipeline.distill` on it with its own seed and a fresh, throwaway
:class:`~dpgd.privacy.PrivacyLedger` under the target run's noise plan, trains fresh
evaluation networks on the distilled set and records, for every record of P, the
logit-scaled confidence phi and the loss (averaged over those networks).

Which records are members of which run is :mod:`dpgd.mia.design`'s (complementary
pairs, so runs computed for K=4 are reused by K=16).

Runs are independent: they run in spawned worker processes (``workers`` > 1, one torch
thread each) or in-process, and each is saved to ``mia_shadows/shadow_<k>.pt`` with a key
hashing the config, the data and the population, so an interrupted attack resumes with
the runs it lacks and a changed setting never reuses stale runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import multiprocessing
import time
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import torch
import torch.nn.functional as F

from dpgd.augment import DSA
from dpgd.config import TrainConfig, plain
from dpgd.data import ImageDataset, dataset_fingerprint
from dpgd.mia.lira import logit_scaled_confidence
from dpgd.models import seeded_model
from dpgd.progress import progress_bar
from dpgd.seeding import derive_seed, stage_generator
from dpgd.storage import atomic_torch_save, load_versioned
from dpgd.training import test_accuracy, train_classifier

log = logging.getLogger("dpgd")

# Bump when what a shadow file holds, or how it is computed, changes.
CACHE_VERSION = 1
SHADOW_DIR = "mia_shadows"
QUERY_BATCH = 2048
# Settings that change neither the population nor any run's output: excluded from the key.
KEY_EXCLUDED_MIA = ("name", "num_shadow", "workers", "cache", "global_variance")
KEY_EXCLUDED_TOP = ("logger", "device", "method")


@dataclass(frozen=True)
class ShadowContext:
    """Everything a run needs, shipped once to each worker process (plain, picklable data)."""

    config: TrainConfig  # the target config
    plan: Any  # the target's NoisePlan (None for epsilon=inf): the same noise for every run
    dataset: ImageDataset
    population: torch.Tensor  # indices into dataset.train_*
    rest: Optional[torch.Tensor]  # train records outside the population, added to every run
    seed: int  # base of every run's seed
    eval_models: int
    epochs: int
    device: str
    key: str  # cache key of this attack's runs


@dataclass(frozen=True)
class ShadowOutput:
    run: int
    membership: torch.Tensor  # (n,) bool
    phi: torch.Tensor  # (n,) logit-scaled confidence, mean over evaluation models
    loss: torch.Tensor  # (n,) cross-entropy, mean over evaluation models
    test_acc: float  # mean test accuracy (%) of the run's evaluation models
    seconds: float

    def to_file(self, key: str) -> dict[str, Any]:
        return {"version": CACHE_VERSION, "key": key, "run": self.run, "membership": self.membership,
                "phi": self.phi, "loss": self.loss, "test_acc": self.test_acc, "seconds": self.seconds}


def cache_key(cfg: TrainConfig, dataset: ImageDataset, population: torch.Tensor) -> str:
    """Hash of everything a run's output depends on: config, data, population."""
    resolved = plain(cfg)
    for name in KEY_EXCLUDED_TOP:
        resolved.pop(name, None)
    for name in KEY_EXCLUDED_MIA:
        resolved.get("mia", {}).pop(name, None)
    digest = hashlib.sha256()
    digest.update(json.dumps({"version": CACHE_VERSION, "config": resolved}, sort_keys=True, default=str).encode())
    digest.update(dataset_fingerprint(dataset).encode())
    digest.update(population.numpy().tobytes())
    return digest.hexdigest()[:20]


def run_seed(context: ShadowContext, run: int) -> int:
    return derive_seed(context.seed, "run", run)


def run_config(context: ShadowContext, run: int) -> TrainConfig:
    """The target config with this run's seed, and no pool (or pool network) caching or
    pool report.

    A shadow's pool is fitted on its member subset and never reused, so caching it would
    only fill the user's pool cache; the pool report is reporting, not release.
    """
    cfg = context.config
    generator = dataclasses.replace(cfg.generator, cache=False, report=False)
    pool_nets = dataclasses.replace(cfg.pool_nets, cache=False)
    return dataclasses.replace(cfg, seed=run_seed(context, run), generator=generator, pool_nets=pool_nets)


def member_dataset(context: ShadowContext, membership: torch.Tensor) -> ImageDataset:
    """The run's private set: its members of the population (plus the rest, if configured)."""
    index = context.population[membership]
    if context.rest is not None:
        index = torch.cat([index, context.rest]).sort().values
    return dataclasses.replace(
        context.dataset,
        train_images=context.dataset.train_images[index],
        train_labels=context.dataset.train_labels[index],
    )


@torch.no_grad()
def query(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """phi and loss of every (image, label) under ``model``, no augmentation."""
    device = next(model.parameters()).device
    phis, losses = [], []
    for start in range(0, images.shape[0], QUERY_BATCH):
        logits = model(images[start : start + QUERY_BATCH].to(device)).double()
        target = labels[start : start + QUERY_BATCH].to(device)
        phis.append(logit_scaled_confidence(logits, target).cpu())
        losses.append(F.cross_entropy(logits, target, reduction="none").cpu())
    return torch.cat(phis), torch.cat(losses)


def run_shadow(context: ShadowContext, run: int, membership: torch.Tensor) -> ShadowOutput:
    """One run: distill the members, train evaluation networks, query the population."""
    from dpgd.pipeline import distill  # the pipeline imports the stages; keep this module light
    from dpgd.privacy import PrivacyLedger

    started = time.perf_counter()
    cfg = run_config(context, run)
    device = torch.device(context.device)
    private = member_dataset(context, membership)
    # A throwaway ledger: shadow runs are evaluation, not release; the target's ledger is untouched.
    # Fresh secret noise per run (unless reproducible_noise), as each real release draws.
    distilled = distill(cfg, private, context.plan, PrivacyLedger(), device=device, progress=False).distilled
    images, labels = distilled.expanded()
    ds = context.dataset
    query_images = ds.train_images[context.population]
    query_labels = ds.train_labels[context.population]
    evaluation = cfg.evaluation
    dsa = DSA(evaluation.dsa_strategy) if evaluation.dsa else None
    phis, losses, accuracies = [], [], []
    for index in range(context.eval_models):
        model = seeded_model(cfg.model, ds.channels, ds.num_classes, ds.image_size,
                             derive_seed(cfg.seed, "mia", "eval", index, "init"))
        train_classifier(
            model, images, labels, epochs=context.epochs, lr=evaluation.lr, momentum=evaluation.momentum,
            weight_decay=evaluation.weight_decay, batch_size=evaluation.batch_size,
            lr_drop_at_half=evaluation.lr_drop_at_half, dsa=dsa,
            generator=stage_generator(cfg.seed, "mia", "eval", index, "train"), device=device,
        )
        phi, loss = query(model, query_images, query_labels)
        phis.append(phi)
        losses.append(loss)
        accuracies.append(test_accuracy(model, ds.test_images, ds.test_labels, evaluation.test_batch_size))
    return ShadowOutput(
        run=run, membership=membership.clone(), phi=torch.stack(phis).mean(0), loss=torch.stack(losses).mean(0),
        test_acc=sum(accuracies) / len(accuracies), seconds=time.perf_counter() - started,
    )


def shadow_path(folder: Path, run: int) -> Path:
    return folder / f"shadow_{run}.pt"


def load_shadow(path: Path, key: str, membership: torch.Tensor) -> Optional[ShadowOutput]:
    """A finished run from disk, or None if absent, unreadable or from other settings."""
    def decode(saved: Mapping[str, Any]) -> ShadowOutput | None:
        if not torch.equal(saved["membership"], membership):
            return None
        return ShadowOutput(run=int(saved["run"]), membership=saved["membership"], phi=saved["phi"],
                            loss=saved["loss"], test_acc=float(saved["test_acc"]), seconds=float(saved["seconds"]))

    return load_versioned(path, CACHE_VERSION, key, decode, "shadow-run")


def save_shadow(path: Path, output: ShadowOutput, key: str) -> None:
    """Write atomically, so an interrupted write leaves no half file to resume from."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(output.to_file(key), path)


_WORKER_CONTEXT: Optional[ShadowContext] = None


def _init_worker(context: ShadowContext) -> None:
    global _WORKER_CONTEXT
    torch.set_num_threads(1)  # workers share the cores; one thread each avoids oversubscription
    _WORKER_CONTEXT = context


def _run_in_worker(run: int, membership: torch.Tensor) -> ShadowOutput:
    assert _WORKER_CONTEXT is not None, "worker started without a context"
    return run_shadow(_WORKER_CONTEXT, run, membership)


@dataclass
class ShadowSet:
    outputs: list[ShadowOutput]  # ordered by run
    computed: list[int]  # runs computed now (the others came from the cache)

    @property
    def phi(self) -> torch.Tensor:
        return torch.stack([o.phi for o in self.outputs])

    @property
    def loss(self) -> torch.Tensor:
        return torch.stack([o.loss for o in self.outputs])

    @property
    def membership(self) -> torch.Tensor:
        return torch.stack([o.membership for o in self.outputs])


def collect_shadows(
    context: ShadowContext,
    membership: torch.Tensor,
    cache_dir: Optional[Path],
    workers: int = 1,
    progress: bool = True,
    runner: Optional[Callable[[ShadowContext, int, torch.Tensor], ShadowOutput]] = None,
) -> ShadowSet:
    """Outputs of runs ``0..len(membership)-1``: cached ones loaded, missing ones computed.

    Each finished run is saved as soon as it ends, so an interruption loses at most the
    runs in flight. ``runner`` replaces :func:`run_shadow` in-process (tests count calls).
    """
    done: dict[int, ShadowOutput] = {}
    for run in range(membership.shape[0]):
        if cache_dir is not None:
            cached = load_shadow(shadow_path(cache_dir, run), context.key, membership[run])
            if cached is not None:
                done[run] = cached
    todo = [run for run in range(membership.shape[0]) if run not in done]
    if done:
        log.info("mia: %d of %d runs loaded from %s", len(done), membership.shape[0], cache_dir)
    bar = progress_bar(total=membership.shape[0], initial=len(done), desc="mia shadow runs", disable=not progress,
               leave=False, dynamic_ncols=True)

    def finish(output: ShadowOutput) -> None:
        done[output.run] = output
        if cache_dir is not None:
            save_shadow(shadow_path(cache_dir, output.run), output, context.key)
        bar.update(1)
        bar.set_postfix(last_s=f"{output.seconds:.1f}", refresh=False)

    try:
        if workers <= 1 or len(todo) <= 1 or runner is not None:
            run_one = runner or run_shadow
            for run in todo:
                finish(run_one(context, run, membership[run]))
        else:
            spawn = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=spawn,
                                     initializer=_init_worker, initargs=(context,)) as pool:
                pending = {pool.submit(_run_in_worker, run, membership[run]) for run in todo}
                error: Optional[BaseException] = None
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    for future in finished:
                        if future.cancelled():
                            continue
                        if future.exception() is not None:
                            error = error or future.exception()
                            for other in pending:  # runs in flight still finish and are saved
                                other.cancel()
                            continue
                        finish(future.result())
                if error is not None:
                    raise error
    finally:
        bar.close()
    return ShadowSet(outputs=[done[run] for run in sorted(done)], computed=todo)

"""The ``mia`` stage: measure how much the configured release pipeline leaks membership.

``train.run`` calls :func:`run_attack` after evaluation. The attack never looks at the
released set itself: it re-runs the whole release pipeline (same config, same noise plan,
other seeds) on random halves of a target population drawn from the train set, trains
evaluation networks on each distilled set and asks how well membership of each record
can be told from those networks (LiRA, or a global loss threshold).

Privacy accounting: the attack is evaluation, not release. Shadow runs declare their
mechanisms to their own throwaway ledgers, so the target run's ledger and its reported
epsilon are unchanged. The attack's own outputs (``private/mia.json``, ``mia_roc.png``,
``mia_shadows/``) are computed from the private records and their membership and are NOT
covered by the release's guarantee: they hold only scores and rates, never images, and
stay in the run's ``private/`` folder; they reach W&B only with ``mia.log_to_wandb=true``.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig

from dpgd.budget import plan_run
from dpgd.config import TrainConfig, typed
from dpgd.data import ImageDataset
from dpgd.errors import ConfigError
from dpgd.mia.audit import audit_membership
from dpgd.mia.design import draw_population, membership_matrix
from dpgd.mia.lira import lira_scores
from dpgd.mia.loss_attack import loss_scores
from dpgd.mia.metrics import LOW_FPR_LEVELS, RocMetrics, downsample_roc, roc_metrics
from dpgd.mia.plot import plot_roc
from dpgd.mia.settings import MIA_NAMES, MiaConfig
from dpgd.mia.shadows import SHADOW_DIR, ShadowContext, ShadowSet, cache_key, collect_shadows
from dpgd.seeding import derive_seed
from dpgd.tracking import Tracker
from dpgd.validation import method_label

log = logging.getLogger("dpgd")

ROC_FILE = "mia_roc.png"
HEADLINE_KEYS = ("auc", *(f"tpr_at_{suffix}_fpr" for suffix, _ in LOW_FPR_LEVELS), "balanced_accuracy")


def check_mia_settings(cfg: TrainConfig) -> None:
    """Static checks of ``cfg.mia``: call before any stage, so a typo does not cost a run."""
    mia = cfg.mia
    if mia.name not in MIA_NAMES:
        raise ConfigError(f"mia={mia.name} is unknown; choose one of {', '.join(MIA_NAMES)}.")
    if mia.name == "lira":
        if mia.num_shadow < 4 or mia.num_shadow % 2:
            raise ConfigError(
                f"mia.num_shadow={mia.num_shadow}: LiRA runs come in complementary pairs and each target "
                "needs shadows outside its pair; use an even number >= 4 (e.g. 8 or 16)."
            )
        if not mia.global_variance and mia.num_shadow < 6:
            raise ConfigError(
                "mia.global_variance=false fits a variance per record, which needs at least 2 shadows "
                "per side; use mia.num_shadow>=6 (64 in the LiRA paper) or mia.global_variance=true."
            )
    if mia.audit and not 0.5 <= mia.audit_confidence < 1:
        raise ConfigError(f"mia.audit_confidence={mia.audit_confidence} must lie in [0.5, 1), e.g. 0.95.")
    if mia.audit and mia.name == "none":
        raise ConfigError("mia.audit=true audits an attack's scores; choose one with mia=lira (or mia=loss).")
    for key in ("eval_models", "workers"):
        if int(getattr(mia, key)) < 1:
            raise ConfigError(f"mia.{key}={getattr(mia, key)} must be at least 1.")
    if mia.epochs is not None and mia.epochs < 1:
        raise ConfigError(f"mia.epochs={mia.epochs} must be at least 1, or null to use evaluation.epochs.")


def check_mia(cfg: TrainConfig, dataset: ImageDataset) -> None:
    """All checks, including those that need the data set's class counts (after loading)."""
    check_mia_settings(cfg)
    mia = cfg.mia
    if mia.name == "none":
        return
    per_class = mia.population // dataset.num_classes
    smallest = int(dataset.class_counts().min())
    if per_class < 2:
        raise ConfigError(
            f"mia.population={mia.population} gives {per_class} record(s) per class for {dataset.num_classes} "
            f"classes; use mia.population>={2 * dataset.num_classes} so every run has members of every class."
        )
    if per_class > smallest:
        raise ConfigError(
            f"mia.population={mia.population} needs {per_class} train records per class but the smallest class "
            f"has {smallest}; use mia.population<={smallest * dataset.num_classes}."
        )
    members = per_class // 2
    if cfg.init.name == "real" and not mia.include_rest and cfg.ipc > members:
        raise ConfigError(
            f"init=real copies ipc={cfg.ipc} members per class but mia.population={mia.population} gives each "
            f"run {members} members per class; use mia.population>={2 * cfg.ipc * dataset.num_classes} or a "
            "smaller ipc."
        )


def run_attack(
    config: DictConfig | TrainConfig,
    dataset: ImageDataset,
    device: torch.device,
    output_dir: Path,
    tracker: Tracker,
    progress: bool = True,
) -> Optional[dict[str, Any]]:
    """Run ``cfg.mia`` against ``cfg``'s pipeline; the attack's results for ``private/mia.json`` (None for none).

    Writes ``mia_roc.png`` (and the resumable runs under ``mia_shadows/``) into
    ``output_dir`` and logs metrics under ``mia/``, the ROC table ``mia/roc`` and the plot
    ``mia/roc_curve`` to ``tracker``.
    """
    cfg = typed(config)
    mia = cfg.mia
    if mia.name == "none":
        return None
    check_mia(cfg, dataset)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    seed = derive_seed(cfg.seed, "mia", mia.seed_offset)
    population = draw_population(dataset.train_labels, dataset.num_classes, mia.population,
                                 derive_seed(seed, "population"))
    runs = mia.num_shadow if mia.name == "lira" else 1
    membership = membership_matrix(dataset.train_labels[population], dataset.num_classes, runs, seed)
    rest = None
    if mia.include_rest:
        outside = torch.ones(dataset.num_train, dtype=torch.bool)
        outside[population] = False
        rest = torch.nonzero(outside).flatten()
    epochs = mia.epochs if mia.epochs is not None else cfg.evaluation.epochs
    context = ShadowContext(
        config=cfg, plan=plan_run(cfg), dataset=dataset,
        population=population, rest=rest, seed=seed, eval_models=mia.eval_models, epochs=epochs,
        device=str(device), key=cache_key(cfg, dataset, population),
    )
    log.info("mia: %s over %d run(s) of the pipeline, population %d, %d evaluation model(s) x %d epochs",
             mia.name, runs, len(population), mia.eval_models, epochs)
    shadows = collect_shadows(context, membership, output_dir / SHADOW_DIR if mia.cache else None,
                              workers=mia.workers, progress=progress)
    scores = attack_scores(mia, shadows)
    curves = {name: roc_metrics(*pair) for name, pair in scores.items()}
    headline = "online" if "online" in curves else next(iter(curves))
    results = attack_results(cfg, curves, headline, shadows, len(population), epochs,
                             time.perf_counter() - started)
    if mia.audit:
        # The proven epsilon of the run the attack replays (its plan's composed PLD bound).
        proven = context.plan.epsilon if context.plan is not None else math.inf
        bound = audit_membership(*scores[headline], cfg.delta, mia.audit_confidence, derive_seed(seed, "audit"))
        results["audit"] = {**bound.to_dict(), "proven_epsilon": proven,
                            "passed": not bound.epsilon_lower_bound > proven}
        log.info("mia audit: epsilon >= %.3g at confidence %g (%d + %d trials); proven epsilon %.4g",
                 bound.epsilon_lower_bound, bound.confidence, bound.trials_in, bound.trials_out, proven)
    title = f"{mia.name} on {method_label(cfg)} (eps={cfg.epsilon:g}), {results['scored_pairs']} scored pairs"
    figure = plot_roc(curves, output_dir / ROC_FILE, title)
    if mia.log_to_wandb:  # not DP: only when the user asks (mia.log_to_wandb=true)
        log_attack(tracker, results, curves, figure)
    log.info("mia: %s AUC %.3f, TPR %.3f at 0.1%% FPR, %.3f at 1%% FPR (%d runs, %.0f s)", headline,
             results["auc"], results["tpr_at_0.1pct_fpr"], results["tpr_at_1pct_fpr"], runs, results["seconds"])
    return results


def attack_scores(mia: MiaConfig, shadows: ShadowSet) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each variant's scores of every scored (run, record) pair, with the true membership."""
    if mia.name == "lira":
        scores = lira_scores(shadows.phi, shadows.membership, mia.global_variance)
        return {"online": (scores.online, scores.membership), "offline": (scores.offline, scores.membership)}
    return {"loss": (loss_scores(shadows.loss[0])[None], shadows.membership[0][None])}


def attack_results(
    cfg: TrainConfig,
    curves: dict[str, RocMetrics],
    headline: str,
    shadows: ShadowSet,
    population: int,
    epochs: int,
    seconds: float,
) -> dict[str, Any]:
    variants = {name: roc.to_dict() for name, roc in curves.items()}
    top = variants[headline]
    runs = len(shadows.outputs)
    return {
        "attack": cfg.mia.name,
        "variant": headline,
        "num_shadow": runs if cfg.mia.name == "lira" else 0,
        # Leave-one-pair-out: each run is a target once, scored against the runs outside its pair.
        "shadows_per_target": runs - 2 if cfg.mia.name == "lira" else 0,
        "population": population,
        "scored_pairs": runs * population,
        "eval_models": cfg.mia.eval_models,
        "epochs": epochs,
        "private_set": "members+rest" if cfg.mia.include_rest else "members",
        **{key: top[key] for key in HEADLINE_KEYS},
        "variants": variants,
        "roc": top["roc"],
        "run_test_acc_mean": sum(o.test_acc for o in shadows.outputs) / runs,
        "seconds_per_run": sum(o.seconds for o in shadows.outputs) / runs,
        "runs_computed": len(shadows.computed),
        "seconds": round(seconds, 3),
    }


def log_attack(tracker: Tracker, results: dict[str, Any], curves: dict[str, RocMetrics], figure: Any) -> None:
    metrics = {key: results[key] for key in HEADLINE_KEYS}
    for name, variant in results["variants"].items():
        metrics |= {f"{name}/{key}": variant[key] for key in HEADLINE_KEYS}
    metrics |= {"run_test_acc_mean": results["run_test_acc_mean"], "seconds": results["seconds"]}
    tracker.log("mia", metrics)
    rows = []
    for name, roc in curves.items():
        fpr, tpr = downsample_roc(roc.fpr, roc.tpr)
        rows += [[float(x), float(y), name] for x, y in zip(fpr, tpr)]
    tracker.log_table("mia/roc", ["fpr", "tpr", "variant"], rows)
    image = torch.from_numpy(figure).permute(2, 0, 1).unsqueeze(0).float() / 255.0
    tracker.log_images("mia/roc_curve", image, 1, f"{results['attack']} ROC ({results['variant']})")
    tracker.summary({f"mia/{key}": results[key] for key in HEADLINE_KEYS})
    if "audit" in results:  # the empirical lower bound beside the proven upper bound
        audit = results["audit"]
        tracker.summary({"mia/epsilon_lower_bound": audit["epsilon_lower_bound"],
                         "mia/audit_confidence": audit["confidence"], "mia/proven_epsilon": audit["proven_epsilon"]})

"""The ``dpgd`` command: compose the config, run the stages, write the artifacts.

Stages: privacy plan -> data -> initialisation -> DP feature matching -> evaluation.
:func:`run` does the work and returns a :class:`RunResult`; :func:`main` is the thin Hydra
entry point that returns the mean test accuracy (so sweepers can optimise it) and turns
user errors (:class:`~dpgd.errors.DpgdError`) into one short message and exit status 2.
"""

from __future__ import annotations

import logging
import math
import platform
import resource
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from dpgd import results as artifacts
from dpgd.budget import plan_run
from dpgd.config import register_configs
from dpgd.data import ImageDataset, load_dataset
from dpgd.errors import DpgdError
from dpgd.evaluation import evaluate_distilled
from dpgd.initialisation import DistilledSet
from dpgd.matching import PUBLIC_ASSUMPTIONS
from dpgd.mia.stage import check_mia, check_mia_settings, run_attack
from dpgd.pipeline import StageTimer, distill
from dpgd.privacy import PrivacyLedger
from dpgd.tracking import Tracker, open_tracker
from dpgd.validation import check_config, check_data, is_private, resolve_device

log = logging.getLogger("dpgd")

register_configs()


@dataclass
class RunResult:
    """What a run returns to its caller (tests, sweepers, the comparison script)."""

    output_dir: Path
    results: dict[str, Any]
    distilled: DistilledSet

    @property
    def test_acc_mean(self) -> float:
        return float(self.results["test_acc_mean"])


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory on CUDA, else the process's peak resident memory."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak_kb / 1024 if platform.system() != "Darwin" else peak_kb / 2**20


def run(cfg: DictConfig, output_dir: Path, run_name: str = "dpgd", run_group: str | None = None) -> RunResult:
    """Run the configured pipeline once and write its artifacts into ``output_dir``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    check_config(cfg)
    check_mia_settings(cfg)
    device = resolve_device(cfg.device)
    timer = StageTimer()

    # The plan is made (and refused if it cannot meet the target) before any data is read.
    with timer.stage("plan"):
        plan = plan_run(cfg)
    ledger = PrivacyLedger()

    resolved = OmegaConf.to_container(cfg, resolve=True)
    tracker: Tracker = open_tracker(cfg.logger, resolved, output_dir, run_name, run_group)
    exit_code = 1
    try:
        with timer.stage("data"):
            dataset = load_dataset(cfg.dataset, seed=cfg.seed)
            check_data(cfg, dataset)
            check_mia(cfg, dataset)
        log.info(
            "data set %s: %d train / %d test images, %d classes, %s x %s",
            dataset.name, dataset.num_train, len(dataset.test_labels), dataset.num_classes,
            dataset.channels, dataset.image_size,
        )

        stage_metrics: dict[str, Any] = {}
        distilled = distill(cfg, dataset, plan, ledger, device, tracker, timer, metrics=stage_metrics)

        with timer.stage("eval"):
            train_images, train_labels = distilled.expanded()
            evaluation = evaluate_distilled(
                train_images, train_labels, dataset, cfg.model, cfg.evaluation, device, seed=cfg.seed, progress=True,
            )
        tracker.log("eval", {"test_acc_mean": evaluation.mean, "test_acc_std": evaluation.std})

        mia = None
        if cfg.mia.name != "none":
            # Evaluation, not release: shadow runs use their own ledgers; this run's is unchanged.
            with timer.stage("mia"):
                mia = run_attack(cfg, dataset, device, output_dir, tracker)

        privacy = privacy_summary(cfg, ledger)
        results = {
            "dataset": dataset.name,
            "method": cfg.method,
            "ipc": cfg.ipc,
            "seed": cfg.seed,
            "epsilon_target": float(cfg.epsilon),
            "delta": float(cfg.delta),
            "test_acc_mean": evaluation.mean,
            "test_acc_std": evaluation.std,
            "test_acc_runs": evaluation.accuracies,
            "privacy": privacy,
            "timings_s": timer.seconds,
            "peak_memory_mb": round(peak_memory_mb(device), 1),
            "device": str(device),
            "num_train": dataset.num_train,
            "num_classes": dataset.num_classes,
            "multi_formation": distilled.factor,
            "stages": stage_metrics,
        }
        if mia is not None:
            results["mia"] = mia
        write_artifacts(output_dir, cfg, dataset, distilled, results, ledger, resolved, tracker)
        exit_code = 0
        return RunResult(output_dir=output_dir, results=results, distilled=distilled)
    finally:
        tracker.finish(exit_code=exit_code)


def privacy_summary(cfg: DictConfig, ledger: PrivacyLedger) -> dict[str, Any]:
    """``results.json["privacy"]``: recomputed from the ledger, never copied from the config."""
    if not is_private(cfg):
        return {"epsilon": math.inf, "epsilon_rdp": math.inf, "delta": float(cfg.delta),
                "accountant": None, "mechanisms": [], "non_private": True}
    report = ledger.report(float(cfg.delta)).to_dict()
    if report["epsilon"] > float(cfg.epsilon):
        raise RuntimeError(
            f"privacy bug: the ledger composes to epsilon={report['epsilon']:.4f} above the target {cfg.epsilon}"
        )
    report["public_assumptions"] = list(PUBLIC_ASSUMPTIONS)
    report["adjacency"] = "add/remove one record"
    return report


def write_artifacts(
    output_dir: Path,
    cfg: DictConfig,
    dataset: ImageDataset,
    distilled: DistilledSet,
    results: dict[str, Any],
    ledger: PrivacyLedger,
    resolved: dict[str, Any],
    tracker: Tracker,
) -> None:
    artifacts.write_json(output_dir / artifacts.RESULTS_FILE, results)
    artifacts.write_json(output_dir / artifacts.LEDGER_FILE, results["privacy"])
    artifacts.save_distilled(
        output_dir / artifacts.DISTILLED_FILE, distilled.images, distilled.labels,
        dataset.class_names, dataset.mean, dataset.std, resolved, factor=distilled.factor,
    )
    images_01 = dataset.denormalise(distilled.images)
    artifacts.save_grid(output_dir / artifacts.GRID_FILE, images_01, cfg.ipc)
    tracker.log_images("distilled/images", images_01, cfg.ipc, "distilled set")
    privacy = results["privacy"]
    tracker.log_table(
        "privacy/ledger",
        ["component", "noise_multiplier", "sample_rate", "steps", "sensitivity"],
        [[m["component"], m["noise_multiplier"], m["sample_rate"], m["steps"], m["sensitivity"]]
         for m in privacy["mechanisms"]],
    )
    tracker.summary({
        "eval/test_acc_mean": results["test_acc_mean"],
        "eval/test_acc_std": results["test_acc_std"],
        "privacy/epsilon": privacy["epsilon"],
        "privacy/epsilon_rdp": privacy["epsilon_rdp"],
    })

    if cfg.logger.get("log_artifact", False):
        tracker.log_file_artifact(f"distilled-{dataset.name}", "distilled-set", output_dir / artifacts.DISTILLED_FILE)
    log.info("test accuracy %.2f +- %.2f %% | epsilon %s | artifacts in %s",
             results["test_acc_mean"], results["test_acc_std"], privacy["epsilon"], output_dir)


def hydra_run_identity() -> tuple[Path, str, str | None]:
    """Output folder, W&B run name (the overrides) and group (the sweep) of this job."""
    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = ",".join(hydra_cfg.overrides.task) or "defaults"
    group = Path(hydra_cfg.sweep.dir).name if hydra_cfg.mode.name == "MULTIRUN" else None
    return output_dir, overrides, group


@hydra.main(version_base="1.3", config_path="pkg://dpgd.configs", config_name="train")
def main(cfg: DictConfig) -> float:
    output_dir, name, group = hydra_run_identity()
    try:
        return run(cfg, output_dir, run_name=name, run_group=group).test_acc_mean
    except DpgdError as err:
        log.error("%s", err)
        print(f"dpgd: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()

"""The ``dpgd`` command: compose the config, run the stages, write the artifacts.

Stages: privacy plan -> data -> initialisation -> DP feature matching -> evaluation.
:func:`run` does the work and returns a :class:`RunResult`; :func:`main` is the thin Hydra
entry point that returns the mean test accuracy (so sweepers can optimise it) and turns
user errors (:class:`~dpgd.errors.DpgdError`) into one short message and exit status 2.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import platform
import resource
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from dpgd import results as artifacts
from dpgd.allocator import tune_for_training
from dpgd.budget import plan_run
from dpgd.checkpoints import RunCheckpoints
from dpgd.config import TrainConfig, plain, register_configs, typed
from dpgd.data import ImageDataset, load_dataset
from dpgd.distilled import DistilledSet
from dpgd.errors import DpgdError
from dpgd.evaluation import EvalResult, evaluate_distilled
from dpgd.mia.audit import AuditBound, check_audit
from dpgd.mia.stage import check_mia, check_mia_settings, run_attack
from dpgd.pipeline import StageTimer, distill, run_noise
from dpgd.privacy import PrivacyLedger
from dpgd.privacy.summary import ledger_document, privacy_summary
from dpgd.tracking import Tracker, open_tracker, run_name as tracking_run_name, sweep_group
from dpgd.validation import check_config, is_private, method_label, resolve_device

log = logging.getLogger("dpgd")

register_configs()


@dataclass
class RunResult:
    """What a run returns to its caller (tests, sweepers, the comparison script).

    ``results`` is the release's ``results.json``; ``diagnostics`` the owner's private
    figures (timings, memory, cache use, the attack's results).
    """

    output_dir: Path
    results: dict[str, Any]
    distilled: DistilledSet
    diagnostics: dict[str, Any] = field(default_factory=dict)

    @property
    def test_acc_mean(self) -> float:
        return float(self.results["test_acc_mean"])

    @property
    def release_dir(self) -> Path:
        return artifacts.release_dir(self.output_dir)

    @property
    def private_dir(self) -> Path:
        return artifacts.private_dir(self.output_dir)


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run: which stage it stopped (the resume point) and the run folder."""

    def __init__(self, stage: str, output_dir: Path) -> None:
        super().__init__(stage)
        self.stage = stage
        self.output_dir = output_dir


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory on CUDA, else the process's peak resident memory."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak_kb / 1024 if platform.system() != "Darwin" else peak_kb / 2**20


def run(config: DictConfig | TrainConfig, output_dir: Path, run_name: str | None = None,
        run_group: str | None = None, swept: dict[str, str] | None = None) -> RunResult:
    """Run the configured pipeline once and write its artifacts into ``output_dir``.

    The composed config is converted to :class:`~dpgd.config.TrainConfig` dataclasses here,
    once; every stage below reads typed fields. The W&B run is named ``run_name`` or, by
    default, from the method, epsilon, IPC, seed and the ``swept`` overrides of a sweep.
    """
    cfg = typed(config)
    tune_for_training(cfg.cpu_allocator)  # glibc: keep freed training memory (dpgd.allocator)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    check_config(cfg)
    check_mia_settings(cfg)
    device = resolve_device(cfg.device)
    timer = StageTimer()

    # The plan is made (and refused if it cannot meet the target) before any data is read.
    with timer.stage("plan"):
        plan = plan_run(cfg)
    resolved = plain(cfg)
    # The run folder's checkpoints (resume=true): a rerun into the same folder continues the
    # run with its release id, secret noise key and W&B run; a different config is refused.
    checkpoints = RunCheckpoints.open(output_dir, resolved) if cfg.resume else None
    if checkpoints is not None and checkpoints.released:
        return finished_run(cfg, output_dir, device)
    noise = checkpoints.noise(cfg.seed, is_private(cfg), cfg.reproducible_noise) if checkpoints else run_noise(cfg)
    if is_private(cfg) and not noise.is_secret:
        log.warning("reproducible_noise=true: DP noise is derived from the public seed; this run is NOT "
                    "differentially private (anyone with the seed can regenerate the noise).")
    ledger = PrivacyLedger(release_id=checkpoints.release_id if checkpoints else None)

    method = method_label(cfg)
    tracker = Tracker()  # W&B starts once the config and the data have passed their checks
    exit_code = 1
    try:
        with timer.stage("data"):
            dataset = load_dataset(cfg.dataset, seed=cfg.seed)
            check_mia(cfg, dataset)
        log.info("data set %s: %d classes, %s x %s", dataset.name, dataset.num_classes,
                 dataset.channels, dataset.image_size)
        tracker = open_tracker(
            cfg.logger, resolved, output_dir,
            name=run_name or tracking_run_name(method, cfg.epsilon, cfg.ipc, cfg.seed, swept or {}),
            group=run_group, tags=[method, dataset.name, f"ipc={cfg.ipc}"],
            run_id=checkpoints.wandb_run_id if checkpoints else None,
        )

        stage_metrics: dict[str, Any] = {}
        release = distill(cfg, dataset, plan, ledger, device=device, tracker=tracker, timer=timer,
                          metrics=stage_metrics, noise=noise, checkpoints=checkpoints)
        distilled = release.distilled
        log.info("class counts (%s): %s", "noisy release" if release.counts.noisy else "exact, non-private run",
                 release.counts.to_dict()["per_class"])

        with timer.stage("eval"):
            saved = checkpoints.load("eval") if checkpoints else None
            if saved is not None:
                evaluation = EvalResult([float(a) for a in saved["accuracies"]], float(saved["seconds"]),
                                        [[float(a) for a in row] for row in saved.get("class_accuracies", [])])
            else:
                train_images, train_labels = distilled.expanded()
                evaluation = evaluate_distilled(
                    train_images, train_labels, dataset, cfg.model, cfg.evaluation, device, seed=cfg.seed,
                    progress=True, curve=tracker.curve("eval"),
                )
                if checkpoints is not None:
                    checkpoints.save("eval", {"accuracies": evaluation.accuracies, "seconds": evaluation.seconds,
                                              "class_accuracies": evaluation.class_accuracies})
        per_class = {name: accuracy for name, accuracy in zip(dataset.class_names, evaluation.class_means)
                     if math.isfinite(accuracy)}
        tracker.log("eval", {"test_acc_mean": evaluation.mean, "test_acc_std": evaluation.std}
                    | {f"test_acc_class/{name}": accuracy for name, accuracy in per_class.items()})

        privacy = privacy_summary(ledger, epsilon_target=cfg.epsilon, delta=cfg.delta, noise=noise,
                                  public=release.public)
        results = {
            "dataset": dataset.name,
            "method": method,
            "ipc": cfg.ipc,
            "seed": cfg.seed,
            "epsilon_target": cfg.epsilon,
            "delta": cfg.delta,
            "test_acc_mean": evaluation.mean,
            "test_acc_std": evaluation.std,
            "test_acc_runs": evaluation.accuracies,
            "test_acc_per_class": per_class,
            "privacy": privacy,
            "release_id": ledger.release_id,
            "class_counts": release.counts.to_dict(),
            "num_classes": dataset.num_classes,
            "multi_formation": distilled.factor,
            "stages": stage_metrics,
        }
        write_release(output_dir, cfg, dataset, distilled, results, ledger, resolved, tracker)
        if checkpoints is not None:
            checkpoints.mark_released()  # the noise key and matching's generator states are deleted

        mia = None
        if cfg.mia.name != "none":
            # Evaluation, not release: shadow runs use their own ledgers and secret noise; this
            # run's ledger is unchanged, and every output of the attack stays in private/.
            with timer.stage("mia"):
                mia = run_attack(cfg, dataset, device, artifacts.private_dir(output_dir), tracker)
        diagnostics = {
            "release_id": ledger.release_id,
            "timings_s": timer.seconds,
            "peak_memory_mb": round(peak_memory_mb(device), 1),
            "device": str(device),
            "pool_cache_hit": release.pool_cache_hit,
            "match": None if release.match_stats is None else dataclasses.asdict(release.match_stats),
            "num_train": dataset.num_train,
            "resumed": checkpoints is not None and checkpoints.resumed,
        }
        if release.public_diagnostics is not None:
            diagnostics["public"] = release.public_diagnostics
        write_private(output_dir, diagnostics, mia)
        if mia is not None:
            diagnostics["mia"] = mia
            if "audit" in mia:  # checked after mia.json is written: it is the evidence
                check_audit(AuditBound.from_dict(mia["audit"]), mia["audit"]["proven_epsilon"])
        exit_code = 0
        return RunResult(output_dir=output_dir, results=results, distilled=distilled, diagnostics=diagnostics)
    except DpgdError:
        exit_code = 2
        raise
    except KeyboardInterrupt:
        exit_code = 130
        raise RunInterrupted(timer.interrupted or "between stages", output_dir) from None
    finally:
        if exit_code == 2:
            tracker.discard()
        else:
            tracker.finish(exit_code=exit_code)


def finished_run(cfg: TrainConfig, output_dir: Path, device: torch.device) -> RunResult:
    """A rerun of a run whose release is complete: nothing is drawn again; the attack (if
    configured and not yet run) runs, and the run's files are returned."""
    log.info("the release in %s is complete; nothing to resume", artifacts.release_dir(output_dir))
    results = artifacts.read_results(output_dir)
    payload = artifacts.load_distilled(output_dir)
    distilled = DistilledSet(payload.stored_images, payload.stored_labels, factor=payload.factor)
    private = artifacts.private_dir(output_dir)
    diagnostics_file = private / artifacts.DIAGNOSTICS_FILE
    diagnostics = artifacts.read_json(diagnostics_file) if diagnostics_file.is_file() else {}
    mia_file = private / artifacts.MIA_FILE
    if cfg.mia.name != "none":
        if mia_file.is_file():
            diagnostics["mia"] = artifacts.read_json(mia_file)
        else:
            dataset = load_dataset(cfg.dataset, seed=cfg.seed)
            check_mia(cfg, dataset)
            diagnostics["mia"] = run_attack(cfg, dataset, device, private, Tracker())
            artifacts.write_json(mia_file, diagnostics["mia"])
    return RunResult(output_dir=output_dir, results=results, distilled=distilled, diagnostics=diagnostics)


def write_release(
    output_dir: Path,
    cfg: TrainConfig,
    dataset: ImageDataset,
    distilled: DistilledSet,
    results: dict[str, Any],
    ledger: PrivacyLedger,
    resolved: dict[str, Any],
    tracker: Tracker,
) -> None:
    """``release/``: results, ledger (loadable, with its report), distilled set and grid."""
    release = artifacts.release_dir(output_dir)
    release.mkdir(parents=True, exist_ok=True)
    artifacts.write_json(release / artifacts.RESULTS_FILE, results)
    artifacts.write_json(release / artifacts.LEDGER_FILE, ledger_document(ledger, results["privacy"]))
    artifacts.save_distilled(
        release / artifacts.DISTILLED_FILE, distilled.images, distilled.labels,
        dataset.class_names, dataset.mean, dataset.std, resolved, factor=distilled.factor,
    )
    images_01 = dataset.denormalise(distilled.images)
    artifacts.save_grid(release / artifacts.GRID_FILE, images_01, cfg.ipc)
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
        "privacy/dp": privacy["dp"],
    })

    if cfg.logger.log_artifact:
        release_files = [artifacts.RESULTS_FILE, artifacts.LEDGER_FILE, artifacts.DISTILLED_FILE, artifacts.GRID_FILE]
        tracker.log_files_artifact(f"release-{dataset.name}", "release", [release / name for name in release_files])
    status = "" if privacy["dp"] else " (NOT DP)" if is_private(cfg) else " (non-private run)"
    log.info("test accuracy %.2f +- %.2f %% | epsilon %.4g%s | release in %s",
             results["test_acc_mean"], results["test_acc_std"], privacy["epsilon"], status, release)


def write_private(output_dir: Path, diagnostics: dict[str, Any], mia: dict[str, Any] | None) -> None:
    """``private/``: figures that depend on the private data without noise. Never publish."""
    private = artifacts.private_dir(output_dir)
    artifacts.write_json(private / artifacts.DIAGNOSTICS_FILE, diagnostics)
    if mia is not None:
        artifacts.write_json(private / artifacts.MIA_FILE, mia)


@dataclass(frozen=True)
class JobIdentity:
    """Where a Hydra job writes, its overrides, the keys its sweep varies and its W&B group."""

    output_dir: Path
    overrides: list[str]
    swept: dict[str, str]
    group: str | None
    job_num: int | None


def hydra_job_identity() -> JobIdentity:
    """This job's identity from Hydra. A sweep's swept keys are those whose command-line
    override is a sweep (``epsilon=1,10``, ``range(...)``, ``choice(...)``), with this job's
    value; the command line is read from the sweep's ``multirun.yaml`` (written before any
    job starts, so launchers that run jobs in other processes or machines see it too)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    hydra_cfg = HydraConfig.get()
    overrides = list(hydra_cfg.overrides.task)
    if hydra_cfg.mode.name != "MULTIRUN":
        return JobIdentity(Path(hydra_cfg.runtime.output_dir), overrides, {}, None, None)
    sweep_file = Path(hydra_cfg.sweep.dir) / "multirun.yaml"
    command = (list(OmegaConf.load(sweep_file).hydra.overrides.task) if sweep_file.is_file()
               else [arg for arg in sys.argv[1:] if "=" in arg and not arg.startswith("-")])
    parsed_command = OverridesParser.create().parse_overrides(command)
    swept_keys = {o.get_key_element() for o in parsed_command if o.is_sweep_override()}
    this_job = {o.get_key_element(): o.value() for o in OverridesParser.create().parse_overrides(overrides)}
    swept = {key: str(this_job[key]) for key in sorted(swept_keys) if key in this_job}
    return JobIdentity(Path(hydra_cfg.runtime.output_dir), overrides, swept,
                       sweep_group(Path(hydra_cfg.sweep.dir)), int(hydra_cfg.job.num))


def write_job_file(job: JobIdentity) -> None:
    """``job.json``: the job's overrides and swept keys beside its output (job folders are
    numbered, so the folder name does not say what ran); read by ``scripts/summarize.py``."""
    artifacts.write_json(job.output_dir / artifacts.JOB_FILE, {
        "overrides": job.overrides, "swept": job.swept, "job_num": job.job_num, "sweep_group": job.group,
    })


@hydra.main(version_base="1.3", config_path="pkg://dpgd.configs", config_name="train")
def main(cfg: DictConfig) -> float:
    global _TASK_STARTED
    _TASK_STARTED = True
    job = hydra_job_identity()
    write_job_file(job)
    try:
        return run(cfg, job.output_dir, run_group=job.group, swept=job.swept).test_acc_mean
    except DpgdError as err:
        record_in_log_files(f"dpgd: error: {err}")
        print(f"dpgd: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except RunInterrupted as stop:
        message = (f"dpgd: interrupted in stage {stop.stage}; rerun the same command with "
                   f"hydra.run.dir={stop.output_dir} to resume")
        record_in_log_files(message)
        print(message, file=sys.stderr)
        raise SystemExit(130) from None


# Set once Hydra has composed the config and called main: an exception after that is the
# run's own (a bug keeps its traceback), one before it is the user's command line.
_TASK_STARTED = False


def cli() -> None:
    """The ``dpgd`` console script: Hydra's entry point with every user error as one line on
    stderr and exit status 2 (Hydra's own composition errors print several lines and exit 1),
    and Ctrl-C as exit status 130. ``HYDRA_FULL_ERROR=1`` keeps Hydra's full report."""
    user_wants_full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let composition errors reach the handler below
    try:
        main()
    except (HydraException, OmegaConfBaseException) as err:
        if user_wants_full_error or _TASK_STARTED:
            raise
        print(f"dpgd: error: {one_line(err)} (`dpgd --help` lists the groups, `dpgd --cfg job` the settings)",
              file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("dpgd: interrupted", file=sys.stderr)
        raise SystemExit(130) from None


def one_line(err: BaseException) -> str:
    """Hydra's and OmegaConf's multi-line messages (with their cause) as one line: an
    indented option list joined by commas, search paths and object dumps dropped."""
    parts: list[str] = []
    options: list[str] = []
    for exc in (err, err.__cause__):
        for line in ("" if exc is None else str(exc)).splitlines():
            text = line.strip()
            if line.startswith("\t") and parts and parts[-1].endswith(":"):
                options.append(text)
                continue
            if options:
                parts[-1] += " " + ", ".join(options)
                options = []
            if text.startswith("Config search path"):
                break
            if text and not text.startswith(("full_key:", "object_type=", "reference_type=", "See https://",
                                             "Set the env")):
                parts.append(text)
    if options:
        parts[-1] += " " + ", ".join(options)
    return " ".join(part if part.endswith((".", ":", "?", "!")) else part + "." for part in parts)


def record_in_log_files(message: str) -> None:
    """Write an error to the run's ``train.log`` only: the console gets it once, on stderr."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers + log.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


if __name__ == "__main__":
    cli()

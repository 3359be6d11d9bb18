"""Experiment tracking (the ``logger`` group): Weights & Biases or nothing.

Stages call :class:`Tracker` methods with a stage prefix (``match``, ``eval``, ...); each
stage gets its own step axis (``<stage>/step``) so dashboards plot iterations, not call
counts. W&B runs offline by default so nothing hangs or prompts on a machine without an
account or network; ``online`` falls back to offline when the server cannot be reached.
Console capture and system metrics are off: the terminal may show figures of the private
data (progress bars), memory and CPU time depend on N, and a W&B project is often shared,
so W&B gets only what stages log explicitly.

Timing: W&B stamps every history row with the wall time it is logged (``_timestamp``,
``_runtime``; the SDK has no setting to drop ``_runtime``), and the time a stage takes
depends on N and on the Poisson batch sizes. :class:`WandbTracker` therefore holds every
call in memory and writes them all when the run finishes: each row keeps its stage's step
axis, and the only times W&B records are the run's start and end (docs/privacy-audit.md).
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

log = logging.getLogger(__name__)


# A stage's step curve: called with (step, metrics) as the stage runs.
Curve = Callable[[int, dict[str, float]], None]


class Tracker:
    """The no-op tracker (``logger=none``); :class:`WandbTracker` overrides every method."""

    # Whether anything is recorded: stages skip work done only for curves (test accuracy
    # along the expert's steps) when it is not.
    active = False

    def curve(self, stage: str) -> Curve | None:
        """A step-curve callback for ``stage`` (``<stage>/step`` axis), None when inactive."""
        if not self.active:
            return None
        return lambda step, metrics: self.log(stage, metrics, step=step)

    def log(self, stage: str, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_images(self, key: str, images_01: torch.Tensor, per_row: int, caption: str = "") -> None:
        pass

    def log_table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        pass

    def summary(self, values: dict[str, Any]) -> None:
        pass

    def log_files_artifact(self, name: str, kind: str, paths: Sequence[Path]) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass

    def discard(self) -> None:
        """End a run that stopped on a user error: nothing in it is worth uploading."""


class WandbTracker(Tracker):
    """A W&B run that receives every call at :meth:`finish` (see the module docstring):
    curves, images, tables, the summary and the artifact are kept in order until then."""

    active = True

    def __init__(self, run: Any) -> None:
        self._run = run
        self._stages: set[str] = set()
        self._pending: list[Callable[[], None]] = []

    def log(self, stage: str, metrics: dict[str, float], step: int | None = None) -> None:
        payload = {f"{stage}/{key}": value for key, value in metrics.items()}
        if step is not None:
            payload[f"{stage}/step"] = step
        self._pending.append(lambda: self._write_row(stage, payload))

    def _write_row(self, stage: str, payload: dict[str, Any]) -> None:
        if stage not in self._stages:
            self._run.define_metric(f"{stage}/step")
            self._run.define_metric(f"{stage}/*", step_metric=f"{stage}/step")
            self._stages.add(stage)
        self._run.log(payload)

    def log_images(self, key: str, images_01: torch.Tensor, per_row: int, caption: str = "") -> None:
        import wandb
        from torchvision.utils import make_grid

        grid = make_grid(images_01.detach().cpu(), nrow=max(1, per_row), padding=1, pad_value=1.0)
        array = (grid.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
        image = wandb.Image(array, caption=caption)
        self._pending.append(lambda: self._run.log({key: image}))

    def log_table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        import wandb

        table = wandb.Table(columns=list(columns), data=[list(row) for row in rows])
        self._pending.append(lambda: self._run.log({key: table}))

    def summary(self, values: dict[str, Any]) -> None:
        values = dict(values)

        def write() -> None:
            for key, value in values.items():
                self._run.summary[key] = value

        self._pending.append(write)

    def log_files_artifact(self, name: str, kind: str, paths: Sequence[Path]) -> None:
        import wandb

        artifact = wandb.Artifact(name=name, type=kind)
        for path in paths:
            artifact.add_file(str(path))
        self._pending.append(lambda: self._run.log_artifact(artifact))

    def finish(self, exit_code: int = 0) -> None:
        pending, self._pending = self._pending, []
        for write in pending:
            write()
        self._run.finish(exit_code=exit_code)

    def discard(self) -> None:
        """Finish as failed and delete an offline run's folder, so `wandb sync` never uploads
        a run that a bad setting stopped (an online run stays, marked failed)."""
        self._pending = []
        offline, folder = self._run.offline, Path(self._run.settings.sync_dir)
        self._run.finish(exit_code=2)
        if offline:
            shutil.rmtree(folder, ignore_errors=True)


def release_safe_settings(logger_cfg: Any, **extra: Any) -> Any:
    """W&B settings that send only what stages log: no console capture (progress bars show
    figures of the private data) and no system metrics (memory and CPU time depend on N
    and on the Poisson batch sizes)."""
    import wandb

    return wandb.Settings(init_timeout=logger_cfg.init_timeout_s, console="off", x_disable_stats=True, **extra)


def run_name(method: str, epsilon: float, ipc: int, seed: int, swept: dict[str, str]) -> str:
    """``dpgd eps=1 ipc=10 seed=0`` plus the sweep's other keys: readable in a W&B table and
    unique within a sweep (W&B cuts names at 128 characters)."""
    eps = "inf" if math.isinf(epsilon) else f"{epsilon:g}"
    extra = [f"{key}={value}" for key, value in swept.items() if key not in {"epsilon", "ipc", "seed", "method"}]
    return " ".join([f"{method} eps={eps} ipc={ipc} seed={seed}", *extra])[:128]


def sweep_group(sweep_dir: Path) -> str:
    """A sweep's W&B group: its folder's last two parts (``2026-11-29/12-00-00`` with the
    default ``multirun/<date>/<time>``), so sweeps on different days never share a group."""
    sweep_dir = Path(sweep_dir)
    return f"{sweep_dir.parent.name}/{sweep_dir.name}" if sweep_dir.parent.name else sweep_dir.name


def open_tracker(
    logger_cfg: Any,
    config: dict[str, Any],
    output_dir: Path,
    name: str,
    group: str | None,
    tags: Sequence[str] = (),
    run_id: str | None = None,
) -> Tracker:
    """Start the configured tracker for one run; every run gets its own W&B run.

    ``logger.run_name``, ``logger.group`` and ``logger.tags`` override or extend ``name``,
    ``group`` and ``tags``. ``run_id`` (a resumable run's, kept in its checkpoints) makes a
    rerun that continues the run log into the same W&B run (``resume="allow"``).
    """
    if logger_cfg.name == "none" or logger_cfg.mode == "disabled":
        return Tracker()
    if logger_cfg.name != "wandb":
        from dpgd.errors import ConfigError

        raise ConfigError(f"logger={logger_cfg.name} is unknown; choose wandb or none.")
    import wandb

    kwargs = dict(
        project=logger_cfg.project,
        entity=logger_cfg.entity,
        group=logger_cfg.group or group,
        job_type=logger_cfg.job_type,
        tags=list(dict.fromkeys([*tags, *logger_cfg.tags])),
        name=logger_cfg.run_name or name,
        config=config,
        dir=str(output_dir),
        reinit="finish_previous",
    )
    if run_id is not None:
        kwargs.update(id=run_id, resume="allow")
    mode = logger_cfg.mode
    if mode == "online":
        try:
            run = wandb.init(mode="online", settings=release_safe_settings(logger_cfg), **kwargs)
            return WandbTracker(run)
        except Exception as err:  # noqa: BLE001 - any failure to reach the server means: go offline
            log.warning("W&B online init failed (%s); logging offline instead. Upload later with `wandb sync`.", err)
            mode = "offline"
    run = wandb.init(mode=mode, settings=release_safe_settings(logger_cfg, silent=True), **kwargs)
    return WandbTracker(run)

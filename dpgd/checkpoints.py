"""Resuming a run: each finished stage's output, saved in the run folder, and reloaded by a rerun.

A paper-scale run takes hours; a pre-empted job must not lose them. With ``resume=true``
(the default) every stage of :func:`dpgd.pipeline.distill` saves its output under
``<run dir>/private/checkpoints/`` as soon as it finishes (the counts, the pool, the pool
networks, the initial set, the expert, the matched set, the evaluation), and
matching also saves its whole state every ``checkpoint_every`` iterations: images,
optimiser, iteration, releases so far, and the state of every random stream it draws from.
Rerunning the same command into the same folder (``hydra.run.dir=...``) loads what exists
and continues.

Privacy: resuming never redraws a released statistic with other noise and never spends
budget twice. A stage loaded from its checkpoint re-declares the records it ran (same
release id, like a cached pool); work lost to the kill is redone with the same secret key
(:meth:`~dpgd.privacy.randomness.NoiseSource.for_resumable_run`) and restored generator
states, so it draws exactly the noise the killed process drew. The ledger and the
distilled set of a killed-and-resumed run are those of the uninterrupted run. The key and
the mid-matching state (which holds the noise generators' states) are deleted once the
release is written.

Files are written atomically and hold only tensors, numbers and strings
(``torch.load(weights_only=True)``). A rerun with a different config is refused: mixing
stages of two configs would release a set no config describes.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Mapping

import torch

from dpgd.errors import ConfigError
from dpgd.privacy.ledger import new_release_id
from dpgd.privacy.randomness import NoiseSource
from dpgd.results import private_dir
from dpgd.storage import atomic_torch_save, atomic_write_text

log = logging.getLogger("dpgd")

CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "state.json"
KEY_FILE = "noise.key"
_FORMAT = "dpgd.run_state"
# 2: the selection's saved record holds gains over the start (noisy_gain), not counts; a
# folder written before cannot be resumed by this code.
_VERSION = 2
# Config keys a rerun may change: they do not touch what is released (tracking; the attack,
# which is evaluation and runs after the release; how often state is saved).
RESUME_FREE_KEYS = ("logger", "mia", "resume", "checkpoint_every", "cpu_allocator", "device")


def checkpoint_dir(run_dir: Path) -> Path:
    return private_dir(run_dir) / CHECKPOINT_DIR


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain configs (free keys skipped)."""
    differences = []
    for key in sorted(set(saved) | set(current)):
        dotted = f"{prefix}{key}"
        if not prefix and key in RESUME_FREE_KEYS:
            continue
        old, new = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            differences += config_differences(old, new, f"{dotted}.")
        elif old != new:
            differences.append(f"{dotted}: {old!r} -> {new!r}")
    return differences


def discard_other_config(run_dir: Path, config: Mapping[str, Any]) -> bool:
    """Delete ``run_dir``'s checkpoints if they belong to another config (for scripts that
    rerun a changed setting into the same folder); True if something was deleted. The
    checkpoints of the same config are kept, so the run resumes."""
    folder = checkpoint_dir(Path(run_dir))
    state_file = folder / STATE_FILE
    if not state_file.is_file():
        return False
    try:
        saved = json.loads(state_file.read_text(encoding="utf-8"))["config"]
        same = not config_differences(saved, json.loads(json.dumps(config, default=str)))
    except (OSError, ValueError, KeyError, TypeError):
        same = False
    if same:
        return False
    shutil.rmtree(folder)
    return True


class RunCheckpoints:
    """The checkpoint folder of one run: its identity (config, release id, W&B run id) and
    the saved output of each finished stage."""

    def __init__(self, folder: Path, state: dict[str, Any], resumed: bool) -> None:
        self.folder = folder
        self._state = state
        self.resumed = resumed

    @classmethod
    def open(cls, run_dir: Path, config: Mapping[str, Any]) -> "RunCheckpoints":
        """Start a run's state, or continue the one already in ``run_dir`` (same config only)."""
        folder = checkpoint_dir(Path(run_dir))
        state_file = folder / STATE_FILE
        config = json.loads(json.dumps(config, default=str))  # the form it is stored in
        if state_file.is_file():
            try:
                state = json.loads(state_file.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                raise ConfigError(f"{state_file} is unreadable ({type(err).__name__}); delete {folder} to start "
                                  "this run afresh, or use another hydra.run.dir.") from None
            if state.get("format") != _FORMAT or state.get("version") != _VERSION:
                raise ConfigError(f"{state_file} was written by another dpgd version; use another hydra.run.dir.")
            differences = config_differences(state["config"], config)
            if differences:
                shown = "; ".join(differences[:5]) + (f"; and {len(differences) - 5} more" if len(differences) > 5
                                                        else "")
                raise ConfigError(
                    f"{run_dir} holds a run with another config ({shown}). Rerun with the same settings to "
                    "continue it, or give this one its own folder (hydra.run.dir=...)."
                )
            log.info("resuming the run in %s (stages done: %s)", run_dir, ", ".join(state["done"]) or "none")
            return cls(folder, state, resumed=True)
        folder.mkdir(parents=True, exist_ok=True)
        state = {
            "format": _FORMAT, "version": _VERSION, "config": config, "release_id": new_release_id(),
            "wandb_run_id": new_release_id(), "done": [], "released": False,
        }
        checkpoints = cls(folder, state, resumed=False)
        checkpoints._write_state()
        return checkpoints

    @property
    def release_id(self) -> str:
        return str(self._state["release_id"])

    @property
    def wandb_run_id(self) -> str:
        return str(self._state["wandb_run_id"])

    @property
    def released(self) -> bool:
        """Whether this run's release (``release/``) was written completely."""
        return bool(self._state["released"])

    def noise(self, seed: int, private: bool, reproducible: bool) -> NoiseSource:
        """The run's noise source, the same one in every process that works on this run."""
        if self.released:
            raise ConfigError(f"the release in {self.folder.parent.parent} is complete; nothing left to draw.")
        return NoiseSource.for_resumable_run(seed, private, reproducible, self.folder / KEY_FILE)

    def load(self, stage: str) -> dict[str, Any] | None:
        """The saved output of ``stage``, or None if it has not finished in this run."""
        path = self._path(stage)
        if not path.is_file():
            return None
        return torch.load(path, map_location="cpu", weights_only=True)

    def save(self, stage: str, payload: Mapping[str, Any], finished: bool = True) -> None:
        """Save a stage's output (``finished``) or an intermediate state of it."""
        atomic_torch_save(dict(payload), self._path(stage))
        if finished and stage not in self._state["done"]:
            self._state["done"].append(stage)
            self._write_state()

    def discard(self, stage: str) -> None:
        self._path(stage).unlink(missing_ok=True)

    def mark_released(self) -> None:
        """The release is written: delete the secrets (the key, matching's generator states)."""
        self._state["released"] = True
        self._write_state()
        (self.folder / KEY_FILE).unlink(missing_ok=True)

    def _path(self, stage: str) -> Path:
        return self.folder / f"{stage}.pt"

    def _write_state(self) -> None:
        atomic_write_text(json.dumps(self._state, indent=2) + "\n", self.folder / STATE_FILE)

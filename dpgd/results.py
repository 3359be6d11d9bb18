"""The run's artifacts and where they live: ``release/`` (publishable) and ``private/``.

A run folder holds:

- ``release/``: what may be published with the guarantee: ``results.json`` (DP results:
  accuracy on the public test split, the privacy report, the noisy class counts),
  ``privacy_ledger.json``, ``distilled.pt``, ``distilled.png``. Everything in it is a DP
  release, post-processing of one, or public (config, seed, test split).
- ``private/``: for the data owner only: ``diagnostics.json`` (timings, peak memory,
  device, cache use: they depend on N and on the Poisson batch sizes), the membership
  attack's ``mia.json``, ``mia_roc.png`` and ``mia_shadows/`` (per-record scores), and
  ``checkpoints/`` (stage outputs for resuming, :mod:`dpgd.checkpoints`).
- Hydra's ``train.log`` and ``.hydra/``, ``job.json`` (a CLI job's overrides and swept keys),
  and ``wandb/``, are the owner's too.

These files are the product's contract with users and downstream scripts
(``scripts/summarize.py``, ``scripts/compare_methods.py``); change keys with care.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision.utils import make_grid, save_image

from dpgd.distilled import expand_multi_formation
from dpgd.storage import atomic_torch_save, atomic_write_text

RESULTS_FILE = "results.json"
DISTILLED_FILE = "distilled.pt"
GRID_FILE = "distilled.png"
LEDGER_FILE = "privacy_ledger.json"
DIAGNOSTICS_FILE = "diagnostics.json"
MIA_FILE = "mia.json"
JOB_FILE = "job.json"
RELEASE_DIR = "release"
PRIVATE_DIR = "private"


def release_dir(run_dir: Path) -> Path:
    """``<run dir>/release``: the files that may be published."""
    return Path(run_dir) / RELEASE_DIR


def private_dir(run_dir: Path) -> Path:
    """``<run dir>/private``: the data owner's files (never publish them)."""
    return Path(run_dir) / PRIVATE_DIR


def _in_release(path: Path, name: str) -> Path:
    """A file given directly, or by its run folder or release folder."""
    path = Path(path)
    if not path.is_dir():
        return path
    if (path / name).exists() or path.name == RELEASE_DIR:
        return path / name
    return release_dir(path) / name


# Strict JSON has no Infinity or NaN: such floats (epsilon=inf of a non-private run) are
# written as these strings, which float() parses back; read_results restores them.
NON_FINITE = {"inf": float("inf"), "-inf": float("-inf"), "nan": float("nan")}


def _json_ready(value: Any) -> Any:
    """Non-finite floats become ``"inf"``/``"-inf"``/``"nan"``; tensors become lists."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _json_ready(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return NON_FINITE.get(value, value) if isinstance(value, str) else value


def to_json(payload: Any) -> str:
    """Strict JSON (no ``Infinity``), indented: results, ledgers and reports."""
    return json.dumps(_json_ready(payload), indent=2, allow_nan=False)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically: a killed run never leaves a half-written results or ledger file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(to_json(payload) + "\n", path)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file written by :func:`write_json`, with ``"inf"`` etc. back as floats."""
    return _from_json(json.loads(Path(path).read_text()))


def read_results(path: Path) -> dict[str, Any]:
    """Read a ``results.json`` (given directly, or its run folder or release folder)."""
    return read_json(_in_release(path, RESULTS_FILE))


def save_distilled(
    path: Path,
    images: torch.Tensor,
    labels: torch.Tensor,
    class_names: tuple[str, ...],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    config: dict[str, Any],
    factor: int = 1,
) -> None:
    atomic_torch_save(
        {
            "factor": factor,
            "images": images.detach().cpu(),
            "labels": labels.detach().cpu(),
            "class_names": list(class_names),
            "mean": list(mean),
            "std": list(std),
            "config": config,
        },
        path,
    )


def save_grid(path: Path, images_01: torch.Tensor, per_row: int) -> None:
    """Save de-normalised images (values in [0, 1]) as one PNG, one class per row."""
    grid = make_grid(images_01.detach().cpu(), nrow=max(1, per_row), padding=1, pad_value=1.0)
    save_image(grid, path)


class DistilledDataset(Dataset):
    """A released distilled set as a torch Dataset of (normalised image, label) pairs.

    With multi-formation (``factor`` > 1) each stored image packs factor^2 tiles;
    ``stored_images`` keeps the packed release and the Dataset yields the unpacked images.
    """

    def __init__(self, payload: dict[str, Any]) -> None:
        self.factor: int = int(payload.get("factor", 1))
        self.stored_images: torch.Tensor = payload["images"]
        self.stored_labels: torch.Tensor = payload["labels"]
        self.images, self.labels = expand_multi_formation(self.stored_images, self.stored_labels, self.factor)
        self.class_names: list[str] = list(payload["class_names"])
        self.mean: tuple[float, ...] = tuple(payload["mean"])
        self.std: tuple[float, ...] = tuple(payload["std"])
        self.config: dict[str, Any] = payload.get("config", {})

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])

    def denormalised(self) -> torch.Tensor:
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return (self.images * std + mean).clamp(0, 1)


def load_distilled(path: str | Path) -> DistilledDataset:
    """Load ``distilled.pt`` (or its run folder or release folder) as a torch Dataset."""
    payload = torch.load(_in_release(path, DISTILLED_FILE), map_location="cpu", weights_only=True)
    return DistilledDataset(payload)

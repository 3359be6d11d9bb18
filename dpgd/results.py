"""The run's artifacts: ``results.json``, ``distilled.pt``, ``distilled.png``.

These files are the product's contract with users and downstream scripts
(``scripts/summarize.py``, ``scripts/compare_methods.py``); change keys with care.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision.utils import make_grid, save_image

RESULTS_FILE = "results.json"
DISTILLED_FILE = "distilled.pt"
GRID_FILE = "distilled.png"
LEDGER_FILE = "privacy_ledger.json"


def _json_ready(value: Any) -> Any:
    """Floats stay floats (``Infinity`` is written explicitly); tensors become lists."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return value


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(_json_ready(payload), indent=2, allow_nan=True) + "\n")


def read_results(path: Path) -> dict[str, Any]:
    """Read a ``results.json`` (or the folder holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
    return json.loads(path.read_text())


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
    torch.save(
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
        from dpgd.initialisation import expand_multi_formation

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
    """Load ``distilled.pt`` (or the run folder holding it) as a torch Dataset."""
    path = Path(path)
    if path.is_dir():
        path = path / DISTILLED_FILE
    payload = torch.load(path, map_location="cpu", weights_only=True)
    return DistilledDataset(payload)

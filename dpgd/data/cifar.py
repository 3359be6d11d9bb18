"""CIFAR-10 and CIFAR-100 through torchvision's pickled batches."""

from __future__ import annotations

import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import CIFAR10, CIFAR100

from dpgd.data.bundle import ImageDataset
from dpgd.data.tensors import normalised_dataset, resize_batch, uint8_to_unit
from dpgd.errors import DataNotFoundError


@dataclass(frozen=True)
class _CifarSpec:
    title: str
    cls: type[CIFAR10]
    # The constants the literature uses, so normalisation never reads the (private) data.
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


_SPECS: dict[str, _CifarSpec] = {
    "cifar10": _CifarSpec("CIFAR-10", CIFAR10, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": _CifarSpec("CIFAR-100", CIFAR100, (0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762)),
}

# What torchvision raises for missing, truncated or foreign files and for failed downloads
# (urllib's URLError is an OSError).
_LOAD_ERRORS = (
    OSError, RuntimeError, EOFError, KeyError, ValueError, pickle.UnpicklingError, tarfile.TarError
)


def _how_to_get(spec: _CifarSpec, root: Path) -> str:
    folder = spec.cls.base_folder
    return (
        f"Pass dataset.download=true to fetch it (needs network) into {root}, "
        f"or download {spec.cls.url}, extract it and place {folder}/ under {root} "
        f"(or point dataset.root / $DPGD_DATA_ROOT at the folder that holds {folder}/)."
    )


def load_cifar(name: str, root: Path, download: bool, image_size: int | None = None) -> ImageDataset:
    """Read the torchvision arrays directly (``.data``/``.targets``): no per-image PIL loop."""
    spec = _SPECS[name]
    folder = root / spec.cls.base_folder
    if not download and not folder.is_dir():
        raise DataNotFoundError(f"{spec.title} not found: expected {folder}/. {_how_to_get(spec, root)}")
    try:
        if download:
            root.mkdir(parents=True, exist_ok=True)
        train = spec.cls(root=str(root), train=True, download=download)
        test = spec.cls(root=str(root), train=False, download=False)
    except _LOAD_ERRORS as exc:
        what = "could not be downloaded or read" if download else "is missing files or corrupted"
        raise DataNotFoundError(
            f"{spec.title} at {folder}/ {what} ({type(exc).__name__}: {exc}). {_how_to_get(spec, root)}"
        ) from exc

    def split(ds: CIFAR10) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        images = resize_batch(uint8_to_unit(pixels), image_size)
        return images, torch.as_tensor(ds.targets, dtype=torch.int64)

    train_x, train_y = split(train)
    test_x, test_y = split(test)
    return normalised_dataset(
        name, train_x, train_y, test_x, test_y, tuple(train.classes), mean=spec.mean, std=spec.std
    )

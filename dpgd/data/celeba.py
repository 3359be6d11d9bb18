"""CelebA aligned faces labelled by one binary attribute, read through torchvision.

Never downloaded: torchvision fetches it from Google Drive, whose quota makes that fail
more often than not, so the files must be placed by hand.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.datasets import CelebA

from dpgd.data.bundle import ImageDataset
from dpgd.data.tensors import neutral_stats, normalised_dataset, pil_to_uint8, uint8_to_unit
from dpgd.errors import ConfigError, DataNotFoundError
from dpgd.progress import progress_bar

URL = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"
# With image_size null CelebA is brought to 32x32 (the size of the DP distillation
# literature); the native 178x218 would need ~19 GB as float tensors.
DEFAULT_SIZE = 32
# Every text file torchvision's CelebA opens (it checks each one's md5).
TEXT_FILES = tuple(name for _, _, name in CelebA.file_list if name.endswith(".txt"))


def _how_to_get(root: Path) -> str:
    return (
        f"Download the aligned CelebA from {URL} (Google Drive) and lay it out as "
        f"{root / 'celeba'}/img_align_celeba/*.jpg plus {', '.join(TEXT_FILES)} in {root / 'celeba'}/ "
        "(the layout torchvision.datasets.CelebA reads; or point dataset.root / $DPGD_DATA_ROOT "
        "at the folder that holds celeba/). It is never downloaded automatically."
    )


def _open(root: Path, split: str) -> CelebA:
    try:
        return CelebA(root=str(root), split=split, target_type="attr", download=False)
    except (OSError, RuntimeError, ValueError) as exc:
        raise DataNotFoundError(
            f"CelebA at {root / 'celeba'}/ is incomplete or its text files are not the official ones "
            f"(torchvision checks their md5: {type(exc).__name__}: {exc}). {_how_to_get(root)}"
        ) from exc


def _decode(ds: CelebA, size: int, desc: str) -> torch.Tensor:
    """One pass through torchvision's dataset, faces centre-cropped and resized to ``size``."""
    out = torch.empty((len(ds), 3, size, size), dtype=torch.uint8)
    for i in progress_bar(range(len(ds)), desc=desc, unit="img", mininterval=1.0):
        img, _ = ds[i]
        with img:
            out[i] = pil_to_uint8(img, "RGB", size)
    return out


def load_celeba(root: Path, target_attr: str, image_size: int | None = None) -> ImageDataset:
    """Train/test are CelebA's official partitions; label 1 = the attribute is present.

    Normalised to [-1, 1] with public constants (never statistics of the train split).
    """
    base = root / "celeba"
    needed = [base / "img_align_celeba", *(base / name for name in TEXT_FILES)]
    missing = [base] if not base.is_dir() else [p for p in needed if not p.exists()]
    if missing:
        listed = "" if missing == [base] else f" (missing {', '.join(str(p) for p in missing)})"
        raise DataNotFoundError(f"CelebA not found: expected {base}/{listed}. {_how_to_get(root)}")

    train = _open(root, "train")
    attr_names = [a for a in train.attr_names if a]
    if target_attr not in attr_names:
        raise ConfigError(
            f"dataset.target_attr={target_attr!r} is not a CelebA attribute; "
            f"valid ones: {', '.join(attr_names)}"
        )
    column = attr_names.index(target_attr)
    test = _open(root, "test")

    size = image_size or DEFAULT_SIZE
    train_x = uint8_to_unit(_decode(train, size, "celeba train"))
    test_x = uint8_to_unit(_decode(test, size, "celeba test"))
    return normalised_dataset(
        "celeba",
        train_x,
        train.attr[:, column],
        test_x,
        test.attr[:, column],
        (f"not {target_attr}", target_attr),
        *neutral_stats(3),
    )

"""Any ``<root>/train/<class>/*`` + ``<root>/test/<class>/*`` tree (torchvision ``ImageFolder``).

Channels: 1 when every image is greyscale (PIL mode "L"), otherwise all are converted to RGB
(palette, RGBA, CMYK, 16-bit ... included), so one set never mixes channel counts.
Normalised to [-1, 1] with public constants (never statistics of the private train split).
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torchvision.datasets import ImageFolder
from tqdm import tqdm

from dpgd.data.bundle import ImageDataset
from dpgd.data.tensors import neutral_stats, normalised_dataset, pil_to_uint8, uint8_to_unit
from dpgd.errors import ConfigError, DataNotFoundError

LAYOUT = "<root>/train/<class>/<image> and <root>/test/<class>/<image>"


def _scan(folder: Path) -> ImageFolder:
    if not folder.is_dir():
        raise DataNotFoundError(
            f"Image folder not found: expected {folder}/. "
            f"Set dataset.root to a folder laid out as {LAYOUT}."
        )
    try:
        return ImageFolder(str(folder))
    except FileNotFoundError as exc:  # no class folders, or a class folder with no images
        raise DataNotFoundError(f"No usable images under {folder}/ ({exc}). Expected {LAYOUT}.") from exc


def _headers(samples: list[tuple[str, int]]) -> tuple[set[str], set[tuple[int, int]]]:
    """Modes and sizes of every image, read from headers only (PIL opens lazily)."""
    modes: set[str] = set()
    sizes: set[tuple[int, int]] = set()
    for path, _ in samples:
        with Image.open(path) as img:
            modes.add(img.mode)
            sizes.add(img.size)
    return modes, sizes


def _decode(samples: list[tuple[str, int]], mode: str, size: int | None, desc: str) -> torch.Tensor:
    images = []
    for path, _ in tqdm(samples, desc=desc, unit="img", mininterval=1.0, disable=len(samples) < 20_000):
        with Image.open(path) as img:
            images.append(pil_to_uint8(img, mode, size))
    return torch.stack(images)


def load_imagefolder(root: Path, image_size: int | None = None) -> ImageDataset:
    """Class names and indices come from ``train/``; ``test/`` must have the same classes."""
    train = _scan(root / "train")
    test = _scan(root / "test")
    if train.classes != test.classes:
        only_train = sorted(set(train.classes) - set(test.classes))
        only_test = sorted(set(test.classes) - set(train.classes))
        raise ConfigError(
            f"Class folders of {root / 'train'}/ and {root / 'test'}/ differ: "
            f"only in train: {only_train or 'none'}; only in test: {only_test or 'none'}."
        )

    modes, sizes = _headers(train.samples + test.samples)
    if image_size is None and len(sizes) > 1:
        shown = ", ".join(f"{w}x{h}" for w, h in sorted(sizes)[:5])
        raise ConfigError(
            f"Images under {root}/ have {len(sizes)} different sizes ({shown}, ...); "
            "set dataset.image_size to resize them all (shorter side + centre crop)."
        )
    mode = "L" if modes == {"L"} else "RGB"

    train_x = uint8_to_unit(_decode(train.samples, mode, image_size, "imagefolder train"))
    test_x = uint8_to_unit(_decode(test.samples, mode, image_size, "imagefolder test"))
    return normalised_dataset(
        "imagefolder",
        train_x,
        torch.tensor(train.targets, dtype=torch.int64),
        test_x,
        torch.tensor(test.targets, dtype=torch.int64),
        tuple(train.classes),
        *neutral_stats(train_x.shape[1]),
    )

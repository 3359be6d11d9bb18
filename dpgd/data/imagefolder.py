"""Any ``<root>/train/<class>/*`` + ``<root>/test/<class>/*`` tree (torchvision ``ImageFolder``).

The output shape is configuration, never read from the files: every image (train and test)
is converted to ``channels`` (1 = PIL mode "L", 3 = "RGB"; palette, RGBA, CMYK, 16-bit ...
included) and resized to ``image_size`` x ``image_size`` with :func:`fit_square` (shorter
side + centre crop). No image header decides anything, so adding or removing one private
image (greyscale, odd-sized or not) can neither change the release's shape nor stop the run.
Normalised to [-1, 1] with public constants (never statistics of the private train split).
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torchvision.datasets import ImageFolder
from dpgd.progress import progress_bar

from dpgd.data.bundle import ImageDataset
from dpgd.data.tensors import neutral_stats, normalised_dataset, pil_to_uint8, uint8_to_unit
from dpgd.errors import ConfigError, DataNotFoundError

LAYOUT = "<root>/train/<class>/<image> and <root>/test/<class>/<image>"
MODES = {1: "L", 3: "RGB"}


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


def _check_shape(image_size: int | None, channels: int) -> None:
    """Refuse a shape that is not fully configured, before any private file is read."""
    if image_size is None or int(image_size) < 1:
        raise ConfigError(
            f"dataset=imagefolder needs dataset.image_size (e.g. 32), got {image_size}: every image "
            "is resized to it, so the shape never depends on the files."
        )
    if channels not in MODES:
        raise ConfigError(
            f"dataset.channels must be 1 (greyscale) or 3 (RGB), got {channels}; "
            "e.g. dataset.channels=3."
        )


def _decode(samples: list[tuple[str, int]], mode: str, size: int, desc: str) -> torch.Tensor:
    images = []
    for path, _ in progress_bar(samples, desc=desc, unit="img", mininterval=1.0, disable=len(samples) < 20_000):
        with Image.open(path) as img:
            images.append(pil_to_uint8(img, mode, size))
    return torch.stack(images)


def load_imagefolder(root: Path, image_size: int, channels: int) -> ImageDataset:
    """Every image as ``(channels, image_size, image_size)``, whatever its mode and size.

    Class names and indices come from ``train/``; ``test/`` must have the same classes.
    """
    _check_shape(image_size, channels)
    mode, size = MODES[channels], int(image_size)
    train = _scan(root / "train")
    test = _scan(root / "test")
    if train.classes != test.classes:
        only_train = sorted(set(train.classes) - set(test.classes))
        only_test = sorted(set(test.classes) - set(train.classes))
        raise ConfigError(
            f"Class folders of {root / 'train'}/ and {root / 'test'}/ differ: "
            f"only in train: {only_train or 'none'}; only in test: {only_test or 'none'}."
        )

    train_x = uint8_to_unit(_decode(train.samples, mode, size, "imagefolder train"))
    test_x = uint8_to_unit(_decode(test.samples, mode, size, "imagefolder test"))
    return normalised_dataset(
        "imagefolder",
        train_x,
        torch.tensor(train.targets, dtype=torch.int64),
        test_x,
        torch.tensor(test.targets, dtype=torch.int64),
        tuple(train.classes),
        *neutral_stats(channels),
    )

"""Any ``<root>/train/<class>/*`` + ``<root>/test/<class>/*`` tree (torchvision ``ImageFolder``).

The output shape is configuration, never read from the files: every image (train and test)
is converted to ``channels`` (1 = PIL mode "L", 3 = "RGB") and resized to ``image_size`` x
``image_size`` with :func:`fit_square` (shorter side + centre crop). No image header decides
anything, so adding or removing one private image (greyscale, odd-sized or not) can neither
change the release's shape nor stop the run. Normalised to [-1, 1] with public constants
(never statistics of the private train split).

Hostile folders: every case is either handled the same way on every run, or refused with a
one-line error naming the file or folder. Loading comes before any DP stage, so a refusal
spends no privacy budget.

* Which files count: only torchvision's ``IMG_EXTENSIONS`` (.jpg .jpeg .png .ppm .bmp .pgm
  .tif .tiff .webp, any case), found recursively inside each class folder and read in sorted
  order. Anything else (``notes.txt``, ``Thumbs.db``, ``.gif``) and files lying directly in
  ``train/`` or ``test/`` are ignored: they are not part of the layout.
* Hidden names (starting with ".") are ignored, files and folders alike, at any depth: a
  ``.ipynb_checkpoints`` folder is not a class and macOS ``._x.jpg`` / ``.DS_Store`` junk
  is not an image.
* A file with an image extension that cannot be decoded (truncated JPEG, text named
  ``.png``, decompression bomb): ConfigError naming the file. Never patched up
  (``ImageFile.LOAD_TRUNCATED_IMAGES`` stays off): half an image is not the user's data.
* Modes: transparent images (RGBA, LA, PA, or P/L/RGB with a transparency key) are
  composited on opaque black, so hidden colour under alpha 0 never matters; 16-bit
  ("I;16*", and "I", which is how older Pillow decodes 16-bit PNGs) is scaled to 8 bits by
  ``>> 8`` (PIL's own convert would clip at 255, turning most of the image white); every
  other mode (L, P, CMYK, "1", "F", ...) goes through PIL's ``convert``. Multi-frame files
  give their first frame; EXIF orientation is not applied (pixels as stored, as torchvision).
* Mixed sizes: all resized with :func:`fit_square`.
* Class names are the folder names exactly as on disk (unicode, spaces), sorted by code
  point as ``ImageFolder`` does; class indices come from ``train/``.
* A class folder with no image (only hidden or non-image files counts as none), in either
  split, or a split with no class folder: DataNotFoundError naming the folder(s).
* ``test/`` with other class folders than ``train/``: ConfigError listing both differences.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from dpgd.data.bundle import ImageDataset
from dpgd.data.tensors import neutral_stats, normalised_dataset, pil_to_uint8, uint8_to_unit
from dpgd.errors import ConfigError, DataNotFoundError
from dpgd.progress import progress_bar

LAYOUT = "<root>/train/<class>/<image> and <root>/test/<class>/<image>"
MODES = {1: "L", 3: "RGB"}
ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")
KEYED_MODES = ("P", "L", "RGB")  # modes whose "transparency" key PIL can turn into alpha
MAX_NAMED = 5  # folders named in one error message


def _show(path: object) -> str:
    """``path`` for a one-line message: control characters (a newline in a file name) escaped."""
    text = str(path)
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def _hidden(name: str) -> bool:
    return name.startswith(".")


class _VisibleImageFolder(ImageFolder):
    """``ImageFolder`` whose classes are the non-hidden folders (no ``.ipynb_checkpoints``)."""

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        with os.scandir(directory) as entries:
            classes = sorted(e.name for e in entries if e.is_dir() and not _hidden(e.name))
        if not classes:
            raise FileNotFoundError(f"no class folder in {_show(directory)}/ (hidden folders are ignored)")
        return classes, {name: i for i, name in enumerate(classes)}


def _visible_image(split: Path):
    """``is_valid_file`` for one split: an image extension and no hidden part below ``split``."""
    base = str(split)

    def valid(path: str) -> bool:
        parts = Path(os.path.relpath(path, base)).parts
        return not any(_hidden(p) for p in parts) and has_file_allowed_extension(path, IMG_EXTENSIONS)

    return valid


def _scan(folder: Path) -> ImageFolder:
    if not folder.is_dir():
        raise DataNotFoundError(
            f"Image folder not found: expected {_show(folder)}/. "
            f"Set dataset.root to a folder laid out as {LAYOUT}."
        )
    try:
        found = _VisibleImageFolder(str(folder), is_valid_file=_visible_image(folder), allow_empty=True)
    except FileNotFoundError as exc:  # no (visible) class folder at all
        raise DataNotFoundError(
            f"No usable images under {_show(folder)}/ ({exc}). Expected {LAYOUT}."
        ) from exc
    counts = np.bincount(np.asarray(found.targets, dtype=np.int64), minlength=len(found.classes))
    empty = [_show(folder / name) + "/" for name, n in zip(found.classes, counts) if n == 0]
    if empty:
        named = ", ".join(empty[:MAX_NAMED])
        if len(empty) > MAX_NAMED:
            named += f" and {len(empty) - MAX_NAMED} more"
        raise DataNotFoundError(
            f"Class folder{'s' if len(empty) > 1 else ''} with no image: {named} "
            f"(read: {' '.join(IMG_EXTENSIONS)}; hidden files ignored). "
            "Add images, or delete the class from both train/ and test/."
        )
    return found


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


def _to_8bit_opaque(img: Image.Image) -> Image.Image:
    """16-bit to 8-bit by ``>> 8``, transparency composited on black (see the module doc)."""
    if img.mode.startswith("I;16") or img.mode == "I":
        wide = np.asarray(img).astype(np.int64)
        img = Image.fromarray((np.clip(wide, 0, 65535) >> 8).astype(np.uint8))
    if img.mode in ALPHA_MODES or (img.mode in KEYED_MODES and "transparency" in img.info):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB")
    return img


def _decode_one(path: str, mode: str, size: int) -> torch.Tensor:
    try:
        with Image.open(path) as img:
            return pil_to_uint8(_to_8bit_opaque(img), mode, size)
    except UnidentifiedImageError:
        reason = "not an image Pillow can read"
    except Image.DecompressionBombError as exc:
        reason = str(exc)
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # truncated or corrupt data
        reason = str(exc) or type(exc).__name__
    reason = " ".join(reason.split())
    raise ConfigError(f"Cannot decode image {_show(path)} ({reason}): remove or fix that file.")


def _decode(samples: list[tuple[str, int]], mode: str, size: int, desc: str) -> torch.Tensor:
    images = [
        _decode_one(path, mode, size)
        for path, _ in progress_bar(samples, desc=desc, unit="img", mininterval=1.0, disable=len(samples) < 20_000)
    ]
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
            f"Class folders of {_show(root / 'train')}/ and {_show(root / 'test')}/ differ: "
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

"""Tiny ImageNet (200 classes, 64x64 RGB) from the standard ``tiny-imagenet-200/`` layout.

The official test split has no labels, so the labelled ``val/`` split is the test set.
Classes are the wnids sorted by name, the order torchvision's ``ImageFolder`` gives
``train/``, so indices agree with other code that reads the tree that way.
Normalisation uses the ImageNet constants: public, so it reads nothing from the train data,
and it spares a pass over 100,000 images.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from dpgd.data.bundle import ImageDataset
from dpgd.data.tensors import normalised_dataset, pil_to_uint8, uint8_to_unit
from dpgd.errors import DataNotFoundError
from dpgd.progress import progress_bar

FOLDER = "tiny-imagenet-200"
URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NATIVE_SIZE = 64


def _how_to_get(root: Path) -> str:
    return (
        f"Download {URL}, unzip it so that {root / FOLDER}/ holds wnids.txt, words.txt, "
        "train/<wnid>/images/*.JPEG and val/images/*.JPEG with val/val_annotations.txt "
        "(or point dataset.root / $DPGD_DATA_ROOT at the folder that holds tiny-imagenet-200/). "
        "It is never downloaded automatically."
    )


def _class_names(base: Path, wnids: list[str]) -> tuple[str, ...]:
    """First synonym from ``words.txt`` (e.g. "goldfish"); the wnid when absent or ambiguous."""
    words: dict[str, str] = {}
    words_file = base / "words.txt"
    if words_file.is_file():
        for line in words_file.read_text(encoding="utf-8").splitlines():
            wnid, _, text = line.partition("\t")
            words[wnid.strip()] = text.split(",")[0].strip()
    names = [words.get(w) or w for w in wnids]
    return tuple(n if names.count(n) == 1 else f"{n} ({w})" for n, w in zip(names, wnids))


def _decode(paths: list[Path], size: int, desc: str) -> torch.Tensor:
    """Decode JPEGs (a few are greyscale; converted to RGB) into one uint8 tensor."""
    out = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    for i, path in enumerate(progress_bar(paths, desc=desc, unit="img", mininterval=1.0)):
        with Image.open(path) as img:
            out[i] = pil_to_uint8(img, "RGB", size)
    return out


def _train_files(base: Path, wnids: list[str], root: Path) -> tuple[list[Path], list[int]]:
    paths: list[Path] = []
    labels: list[int] = []
    for label, wnid in enumerate(wnids):
        folder = base / "train" / wnid / "images"
        files = sorted(folder.glob("*.JPEG"))
        if not files:
            raise DataNotFoundError(f"Tiny ImageNet: no train images in {folder}/. {_how_to_get(root)}")
        paths += files
        labels += [label] * len(files)
    return paths, labels


def _val_files(base: Path, wnids: list[str], root: Path) -> tuple[list[Path], list[int]]:
    """``val_annotations.txt`` rows: filename, wnid, then a bounding box (ignored), tab separated."""
    index = {w: i for i, w in enumerate(wnids)}
    annotations = base / "val" / "val_annotations.txt"
    paths: list[Path] = []
    labels: list[int] = []
    for line in annotations.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) < 2:
            continue
        filename, wnid = fields[0].strip(), fields[1].strip()
        if wnid not in index:
            raise DataNotFoundError(
                f"Tiny ImageNet: {annotations} labels {filename} {wnid}, which is not in wnids.txt."
            )
        paths.append(base / "val" / "images" / filename)
        labels.append(index[wnid])
    absent = [p for p in paths if not p.is_file()]
    if absent:
        raise DataNotFoundError(
            f"Tiny ImageNet: {len(absent)} images listed in {annotations} are missing, "
            f"e.g. {absent[0]}. {_how_to_get(root)}"
        )
    return paths, labels


def load_tinyimagenet(root: Path, image_size: int | None = None) -> ImageDataset:
    """Train: ``train/<wnid>/images/*.JPEG``; test: ``val/images/*.JPEG``."""
    base = root / FOLDER
    needed = [base / "wnids.txt", base / "train", base / "val" / "images", base / "val" / "val_annotations.txt"]
    missing = [base] if not base.is_dir() else [p for p in needed if not p.exists()]
    if missing:
        listed = "" if missing == [base] else f" (missing {', '.join(str(p) for p in missing)})"
        raise DataNotFoundError(f"Tiny ImageNet not found: expected {base}/{listed}. {_how_to_get(root)}")

    wnids = sorted({w for w in (base / "wnids.txt").read_text().split()})
    train_paths, train_labels = _train_files(base, wnids, root)
    test_paths, test_labels = _val_files(base, wnids, root)

    size = image_size or NATIVE_SIZE
    train_x = uint8_to_unit(_decode(train_paths, size, "tinyimagenet train"))
    test_x = uint8_to_unit(_decode(test_paths, size, "tinyimagenet val"))
    return normalised_dataset(
        "tinyimagenet",
        train_x,
        torch.tensor(train_labels, dtype=torch.int64),
        test_x,
        torch.tensor(test_labels, dtype=torch.int64),
        _class_names(base, wnids),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )

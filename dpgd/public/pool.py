"""The public image pool: list, fingerprint, decode and adapt a folder declared public.

One place reads ``public.root``: :func:`public_files` lists it (sorted relative paths, the
image suffixes below), :func:`fingerprint` hashes every file's relative name and bytes,
and :func:`load_public_pool` decodes the files at the private data's image size and
channels (shorter side resized, centre crop, like the data loaders). The label of an image
is the path of its folder relative to ``root`` (``tinyimagenet/n01443537``); files
directly under ``root`` have the empty label (unlabelled).

The folder is public: its fingerprint is a plain SHA-256 (recorded in results.json, so a
release names the public data it used). Nothing here sees a private record; the private
data set contributes only its public shape (channels, image size) and normalisation
constants.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from dpgd.errors import ConfigError, DataNotFoundError
from dpgd.data.tensors import pil_to_uint8

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class PublicPool:
    """Decoded public images at the private data's size and channels.

    ``pixels``: uint8 ``(M, C, H, W)``; ``labels``: int64 ``(M,)`` indices into
    ``label_names`` (the folder of each file relative to the root, ``""`` for files at the
    root); ``fingerprint``: :func:`fingerprint` of the files read; ``skipped``: files that
    could not be decoded (relative paths).
    """

    root: str
    pixels: torch.Tensor
    labels: torch.Tensor
    label_names: tuple[str, ...]
    files: tuple[str, ...]
    fingerprint: str
    skipped: tuple[str, ...] = field(default_factory=tuple)

    def __len__(self) -> int:
        return int(self.pixels.shape[0])

    def label_counts(self) -> torch.Tensor:
        return torch.bincount(self.labels, minlength=len(self.label_names))

    def normalised(self, mean: tuple[float, ...], std: tuple[float, ...],
                   index: torch.Tensor | None = None) -> torch.Tensor:
        """Float images normalised with the private data set's public constants."""
        pixels = self.pixels if index is None else self.pixels[index]
        m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        return (pixels.to(torch.float32) / 255.0 - m) / s

    def describe(self) -> dict[str, object]:
        """What results.json records about the pool (public: the files are public)."""
        return {"root": self.root, "fingerprint": self.fingerprint, "images": len(self),
                "labels": len([n for n in self.label_names if n]), "skipped": len(self.skipped)}


def public_root(root: str | None) -> Path:
    """``public.root`` as an existing folder, or a clear error."""
    if not root:
        raise ConfigError("public=folder needs public.root: a folder of images you declare public "
                          "(class subfolders or flat), never private records; e.g. public.root=../shared/data/public32.")
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise DataNotFoundError(f"public.root={folder} is not a folder.")
    return folder


def public_files(root: str | None) -> list[Path]:
    """The image files under ``root``, sorted by relative path (the order of the pool)."""
    folder = public_root(root)
    return sorted((p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                  key=lambda p: p.relative_to(folder).as_posix())


def check_public_files(root: str | None, min_images: int) -> int:
    """Before any data is read: the folder exists and lists at least ``min_images`` image
    files (whether they decode is judged by :func:`load_public_pool`, still before any
    budget is spent). Returns the number of files."""
    if min_images < 1:
        raise ConfigError(f"public.min_images={min_images} must be at least 1.")
    count = len(public_files(root))
    if count < min_images:
        raise DataNotFoundError(
            f"public.root={root} holds {count} image files ({', '.join(IMAGE_SUFFIXES)}); public=folder needs at "
            f"least public.min_images={min_images}."
        )
    return count


def fingerprint(root: str | Path, files: list[Path] | None = None) -> str:
    """SHA-256 of every file's relative path and bytes, in :func:`public_files` order."""
    folder = Path(root).expanduser()
    files = public_files(str(folder)) if files is None else files
    digest = hashlib.sha256()
    for path in files:
        name = path.relative_to(folder).as_posix().encode()
        data = path.read_bytes()
        digest.update(len(name).to_bytes(8, "little") + name)
        digest.update(len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()


def load_public_pool(root: str | None, channels: int, image_size: tuple[int, int], min_images: int) -> PublicPool:
    """Decode every image under ``root`` at ``channels`` x ``image_size``.

    Raises :class:`~dpgd.errors.DataNotFoundError` when fewer than ``min_images`` decode,
    and :class:`~dpgd.errors.ConfigError` when the images cannot be made square at the
    private size (the private data must be square, as every dpgd data set is).
    """
    if channels not in (1, 3):
        raise ConfigError(f"public=folder adapts public images to 1 or 3 channels, not {channels}.")
    if image_size[0] != image_size[1]:
        raise ConfigError(f"public=folder needs square private images, got {tuple(image_size)}.")
    folder = public_root(root)
    files = public_files(root)
    mode = "L" if channels == 1 else "RGB"
    decoded, labels, names, kept, skipped = [], [], {}, [], []
    digest = hashlib.sha256()
    for path in files:
        relative = path.relative_to(folder)
        data = path.read_bytes()
        name = relative.as_posix().encode()
        digest.update(len(name).to_bytes(8, "little") + name)
        digest.update(len(data).to_bytes(8, "little") + data)
        try:
            with Image.open(path) as img:
                img.load()
                decoded.append(pil_to_uint8(img, mode, image_size[0]))
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
            skipped.append(relative.as_posix())
            continue
        label = relative.parent.as_posix()
        label = "" if label == "." else label
        labels.append(names.setdefault(label, len(names)))
        kept.append(relative.as_posix())
    if len(decoded) < min_images:
        raise DataNotFoundError(
            f"public.root={folder}: {len(decoded)} of {len(files)} image files could be decoded; public=folder needs "
            f"at least public.min_images={min_images}."
        )
    return PublicPool(
        root=str(folder), pixels=torch.stack(decoded), labels=torch.tensor(labels, dtype=torch.int64),
        label_names=tuple(names), files=tuple(kept), fingerprint=digest.hexdigest(), skipped=tuple(skipped),
    )

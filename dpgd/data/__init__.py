"""Data set loading: one entry point, :func:`load_dataset`, from a ``DatasetConfig``.

Every loader returns an :class:`ImageDataset` of normalised tensors; subsetting
(``max_train_per_class``, ``max_test``) is applied here, once, for all of them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
from pathlib import Path
from typing import Optional

import torch

from dpgd.config import DatasetConfig
from dpgd.data.bundle import ImageDataset
from dpgd.errors import ConfigError

__all__ = ["DATASET_NAMES", "ImageDataset", "dataset_fingerprint", "default_data_root", "hash_train_split", "load_dataset"]

DATASET_NAMES = ("digits", "cifar10", "cifar100", "tinyimagenet", "celeba", "imagefolder")
DATA_ROOT_ENV = "DPGD_DATA_ROOT"
# The test subset (max_test) is drawn with this fixed seed, not the run seed, so runs that
# differ only in seed are scored on the same test images.
TEST_SUBSET_SEED = 0


def default_data_root() -> Path:
    """Where data sets live when ``dataset.root`` is null.

    ``$DPGD_DATA_ROOT`` when set, else ``~/.cache/dpgd/data``.
    """
    env = os.environ.get(DATA_ROOT_ENV, "").strip()
    return Path(env or "~/.cache/dpgd/data").expanduser()


def _resolve_root(cfg: DatasetConfig) -> Path:
    return Path(cfg.root).expanduser() if cfg.root else default_data_root()


def _check_positive(cfg: DatasetConfig) -> None:
    for key in ("image_size", "max_train_per_class", "max_test"):
        value = getattr(cfg, key)
        if value is not None and int(value) < 1:
            raise ConfigError(f"dataset.{key} must be a positive integer or null, got {value}")


def load_dataset(cfg: DatasetConfig, seed: int = 0) -> ImageDataset:
    """Load ``cfg.name`` and apply the subsetting options.

    ``seed`` only chooses which train images ``max_train_per_class`` keeps; the test set
    never depends on it.
    """
    name = cfg.name
    if name not in DATASET_NAMES:
        raise ConfigError(f"Unknown dataset.name={name!r}; valid names: {', '.join(DATASET_NAMES)}")
    _check_positive(cfg)
    size = cfg.image_size if cfg.image_size is not None else None

    # Imports are per source so a digits run never pays for (or needs) the others' modules.
    if name == "digits":
        from dpgd.data.digits import load_digits

        ds = load_digits(size)
    elif name in ("cifar10", "cifar100"):
        from dpgd.data.cifar import load_cifar

        ds = load_cifar(name, _resolve_root(cfg), cfg.download, size)
    elif name == "tinyimagenet":
        from dpgd.data.tinyimagenet import load_tinyimagenet

        ds = load_tinyimagenet(_resolve_root(cfg), size)
    elif name == "celeba":
        from dpgd.data.celeba import load_celeba

        ds = load_celeba(_resolve_root(cfg), cfg.target_attr, size)
    else:
        if not cfg.root:
            raise ConfigError(
                "dataset.name=imagefolder needs dataset.root: "
                "a folder holding train/<class>/ and test/<class>/"
            )
        from dpgd.data.imagefolder import load_imagefolder

        ds = load_imagefolder(Path(cfg.root).expanduser(), size, cfg.channels)
    return _subset(ds, cfg.max_train_per_class, cfg.max_test, seed)


def _subset(
    ds: ImageDataset, per_class: Optional[int], max_test: Optional[int], seed: int
) -> ImageDataset:
    """Keep ``per_class`` train images per class, chosen record by record; a fixed-seed test subset.

    Each train record is ranked by a keyed hash of its own content only,
    ``sha256(f"{seed}|" + image bytes + f"|{label}")`` (the normalised float32 tensor's bytes;
    ties, i.e. identical records, broken by index), and each class keeps its ``per_class``
    smallest. A record's rank never depends on how many other records there are, so adding or
    removing one record changes the kept set by at most one record in and one out (a swap);
    a seeded shuffle of all N indices would instead reshuffle everything. Kept records stay in
    their original order.

    Privacy: the DP guarantee then covers the kept subset as the private data set. With respect
    to the full folder, one added/removed record is at worst a swap, i.e. two add/remove steps
    (group privacy with k=2: (eps, delta) becomes (2 eps, (1 + e^eps) delta)), so use
    ``max_train_per_class`` for quick runs, not for a release meant to protect the full data.
    """
    changes: dict[str, torch.Tensor] = {}
    if per_class is not None:
        k = int(per_class)
        if ds.num_train and int(torch.bincount(ds.train_labels).max()) > k:
            labels = ds.train_labels.tolist()
            rows = ds.train_images.detach().cpu().contiguous().flatten(1).numpy()
            keyed = hashlib.sha256(f"{int(seed)}|".encode())
            ranked: dict[int, list[tuple[bytes, int]]] = {}
            for i, (row, label) in enumerate(zip(rows, labels)):
                h = keyed.copy()
                h.update(row)
                h.update(f"|{label}".encode())
                ranked.setdefault(label, []).append((h.digest(), i))
            kept = sorted(i for records in ranked.values() for _, i in sorted(records)[:k])
            keep = torch.tensor(kept, dtype=torch.int64)
            changes |= {"train_images": ds.train_images[keep], "train_labels": ds.train_labels[keep]}
    n_test = int(ds.test_labels.shape[0])
    if max_test is not None and int(max_test) < n_test:
        gen = torch.Generator().manual_seed(TEST_SUBSET_SEED)
        keep = torch.randperm(n_test, generator=gen)[: int(max_test)].sort().values
        changes |= {"test_images": ds.test_images[keep], "test_labels": ds.test_labels[keep]}
    return dataclasses.replace(ds, **changes) if changes else ds


def hash_train_split(digest: "hashlib._Hash | hmac.HMAC", ds: ImageDataset) -> None:
    """Feed the name, train images and labels of ``ds`` (dtype, shape, bytes) to a hash or HMAC."""
    digest.update(ds.name.encode())
    for t in (ds.train_images, ds.train_labels):
        arr = t.detach().cpu().contiguous().numpy()
        digest.update(f"|{arr.dtype}{tuple(arr.shape)}|".encode())
        digest.update(memoryview(arr).cast("B"))


def dataset_fingerprint(ds: ImageDataset) -> str:
    """Short sha256 of name, train images and labels: a private cache key that changes with the data.

    Anyone holding candidate data can recompute it: never log or publish it (the pool
    cache uses a keyed HMAC instead, :func:`dpgd.generators.cache.keyed_fingerprint`).
    """
    h = hashlib.sha256()
    hash_train_split(h, ds)
    return h.hexdigest()[:16]

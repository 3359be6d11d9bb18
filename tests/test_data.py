"""Loaders, on tiny data sets written to disk in each source's real format.

torchvision's CIFAR and CelebA readers compare every file with the md5 of the official
release, which a hand-built file can never match. The tests replace only the module-level
``check_integrity`` those readers call with an existence check (``md5=None``), so the real
file parsing still runs on the fake files.
"""

from __future__ import annotations

import dataclasses
import pickle
import urllib.error
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import utils as tv_utils

from dpgd.config import DatasetConfig
from dpgd.data import ImageDataset, _subset, dataset_fingerprint, default_data_root, load_dataset
from dpgd.errors import ConfigError, DataNotFoundError


def cfg(name: str, **kw) -> DatasetConfig:
    return DatasetConfig(name=name, **kw)


def exists_only(fpath, md5=None) -> bool:
    """torchvision's check_integrity without the md5 comparison: the file must exist."""
    return tv_utils.check_integrity(fpath, None)


@pytest.fixture
def no_md5(monkeypatch):
    import torchvision.datasets.celeba as tv_celeba
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", exists_only)
    monkeypatch.setattr(tv_celeba, "check_integrity", exists_only)


def pixel(ds: ImageDataset, split: str, i: int) -> torch.Tensor:
    """Mean colour of one image back in [0, 255] (robust to JPEG noise)."""
    images = ds.train_images if split == "train" else ds.test_images
    return ds.denormalise(images[i : i + 1])[0].mean(dim=(1, 2)) * 255


def assert_normalised_shape(ds: ImageDataset, n_train: int, n_test: int, chw: tuple[int, int, int]) -> None:
    assert ds.train_images.shape == (n_train, *chw) and ds.test_images.shape == (n_test, *chw)
    assert ds.train_images.dtype == torch.float32 and ds.train_labels.dtype == torch.int64
    assert ds.test_labels.shape == (n_test,) and ds.test_labels.dtype == torch.int64
    assert len(ds.mean) == len(ds.std) == chw[0]


# --- digits -------------------------------------------------------------------------------


def test_digits_shapes_split_and_balance():
    a = load_dataset(cfg("digits"), seed=0)
    b = load_dataset(cfg("digits"), seed=1)
    assert_normalised_shape(a, 1437, 360, (1, 8, 8))
    assert a.class_names == tuple(str(d) for d in range(10))
    # The split is fixed, whatever the run seed.
    assert torch.equal(a.test_images, b.test_images) and torch.equal(a.train_labels, b.train_labels)
    counts = a.class_counts()
    assert counts.min() >= 0.9 * counts.max()
    assert torch.bincount(a.test_labels, minlength=10).min() >= 30
    # Public constants map pixels [0, 1] to [-1, 1]; nothing is computed from the train split.
    assert a.mean == (0.5,) and a.std == (0.5,)
    assert a.train_images.min() >= -1.0 and a.train_images.max() <= 1.0
    levels = a.denormalise(a.train_images) * 16  # back on the 16 grey levels
    assert torch.allclose(levels, levels.round(), atol=1e-3)


def test_digits_image_size_resizes():
    ds = load_dataset(cfg("digits", image_size=16))
    assert ds.image_size == (16, 16)


def test_max_train_per_class_and_max_test():
    full = load_dataset(cfg("digits"))
    a = load_dataset(cfg("digits", max_train_per_class=5, max_test=50), seed=0)
    a2 = load_dataset(cfg("digits", max_train_per_class=5, max_test=50), seed=0)
    b = load_dataset(cfg("digits", max_train_per_class=5, max_test=50), seed=1)
    assert a.class_counts().tolist() == [5] * 10
    assert a.test_images.shape[0] == 50
    assert torch.equal(a.train_images, a2.train_images)
    assert not torch.equal(a.train_images, b.train_images)  # the run seed picks the images
    assert torch.equal(a.test_images, b.test_images)  # ... never the test set
    # Kept images are real rows of the full set, with their own labels.
    rows = (a.train_images.flatten(1)[:, None] == full.train_images.flatten(1)[None]).all(-1)
    assert rows.any(1).all()
    assert torch.equal(full.train_labels[rows.float().argmax(1)], a.train_labels)
    # Larger than a class: everything is kept.
    assert load_dataset(cfg("digits", max_train_per_class=10_000)).num_train == full.num_train


def records(ds: ImageDataset) -> Counter:
    """The train split as a multiset of (image bytes, label): what a subset kept, order aside."""
    rows = ds.train_images.flatten(1).numpy()
    return Counter((row.tobytes(), int(y)) for row, y in zip(rows, ds.train_labels.tolist()))


def at_most_a_swap(a: ImageDataset, b: ImageDataset) -> bool:
    ra, rb = records(a), records(b)
    return sum((ra - rb).values()) <= 1 and sum((rb - ra).values()) <= 1


def with_train(ds: ImageDataset, images: torch.Tensor, labels: torch.Tensor) -> ImageDataset:
    return dataclasses.replace(ds, train_images=images.contiguous(), train_labels=labels.contiguous())


def test_max_train_per_class_is_stable_under_one_record():
    """Adjacent data sets (one record added or removed) keep subsets that differ by at most a swap.

    A seeded shuffle of all N indices (the old selection) reshuffles everything when N changes.
    """
    k = 50  # about a third of each digits class, so many of the changes below reach the subset
    full = load_dataset(cfg("digits"))
    kept = _subset(full, k, None, seed=0)
    assert kept.class_counts().tolist() == [k] * 10
    assert records(_subset(full, k, None, seed=0)) == records(kept)  # deterministic for one seed
    assert records(_subset(full, k, None, seed=1)) != records(kept)  # the seed picks the images
    images, labels = full.train_images, full.train_labels

    changed = 0
    for j in range(20):  # add one new record (a flipped image) at various positions and classes
        src, pos = 71 * j % full.num_train, 37 * j % (full.num_train + 1)
        x, y = images[src : src + 1].flip(-1), labels[src : src + 1]
        bigger = with_train(
            full, torch.cat([images[:pos], x, images[pos:]]), torch.cat([labels[:pos], y, labels[pos:]])
        )
        kept_plus = _subset(bigger, k, None, seed=0)
        assert kept_plus.class_counts().tolist() == [k] * 10
        assert at_most_a_swap(kept, kept_plus)
        changed += records(kept_plus) != records(kept)
    assert changed > 0  # the new record was kept (and one other dropped) at least once

    kept_rows = set(records(kept))
    dropped_kept = 0
    for i in range(0, full.num_train, 97):  # remove one record, kept or not
        keep = torch.arange(full.num_train) != i
        kept_minus = _subset(with_train(full, images[keep], labels[keep]), k, None, seed=0)
        assert at_most_a_swap(kept, kept_minus)
        dropped_kept += (images[i].flatten().numpy().tobytes(), int(labels[i])) in kept_rows
    assert dropped_kept > 0

    # A record's rank is its own content's: the order of the files does not matter ...
    perm = torch.randperm(full.num_train, generator=torch.Generator().manual_seed(3))
    assert records(_subset(with_train(full, images[perm], labels[perm]), k, None, seed=0)) == records(kept)
    # ... and kept records keep their original order (images tagged with their index).
    index = torch.arange(full.num_train, dtype=torch.float32).view(-1, 1, 1, 1)
    tagged = with_train(full, index.expand_as(images), labels)
    order = _subset(tagged, k, None, seed=0).train_images[:, 0, 0, 0]
    assert torch.all(order[1:] > order[:-1])


def test_fingerprint_stable_and_data_sensitive():
    a = load_dataset(cfg("digits"))
    fp = dataset_fingerprint(a)
    assert fp == dataset_fingerprint(load_dataset(cfg("digits"))) and len(fp) == 16
    assert dataset_fingerprint(load_dataset(cfg("digits", max_train_per_class=5))) != fp
    changed = a.train_images.clone()
    changed[0, 0, 0, 0] += 1.0
    assert dataset_fingerprint(dataclasses.replace(a, train_images=changed)) != fp
    assert dataset_fingerprint(dataclasses.replace(a, name="other")) != fp


# --- errors and roots ---------------------------------------------------------------------


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ConfigError, match="cifar10.*imagefolder"):
        load_dataset(cfg("mnist"))


def test_non_positive_limits_are_config_errors():
    with pytest.raises(ConfigError, match="max_train_per_class"):
        load_dataset(cfg("digits", max_train_per_class=0))


@pytest.mark.parametrize(
    "name, expected",
    [
        ("cifar10", "cifar-10-batches-py"),
        ("cifar100", "cifar-100-python"),
        ("tinyimagenet", "tiny-imagenet-200"),
        ("celeba", "celeba"),
        ("imagefolder", "train"),
    ],
)
def test_missing_folder_names_the_path(tmp_path, name, expected):
    root = tmp_path / "nowhere"
    with pytest.raises(DataNotFoundError) as info:
        load_dataset(cfg(name, root=str(root), image_size=32))
    assert str(root / expected) in str(info.value)


def test_cifar_missing_message_says_how(tmp_path):
    with pytest.raises(DataNotFoundError, match="dataset.download=true"):
        load_dataset(cfg("cifar10", root=str(tmp_path)))


def test_imagefolder_needs_root():
    with pytest.raises(ConfigError, match="dataset.root"):
        load_dataset(cfg("imagefolder"))


def test_root_falls_back_to_env_then_home(tmp_path, monkeypatch):
    monkeypatch.setenv("DPGD_DATA_ROOT", str(tmp_path / "env-root"))
    assert default_data_root() == tmp_path / "env-root"
    with pytest.raises(DataNotFoundError, match=str(tmp_path / "env-root" / "cifar-10-batches-py")):
        load_dataset(cfg("cifar10"))
    monkeypatch.delenv("DPGD_DATA_ROOT")
    assert default_data_root() == Path.home() / ".cache" / "dpgd" / "data"


def test_failed_download_is_data_not_found(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", offline)
    with pytest.raises(DataNotFoundError, match="could not be downloaded") as info:
        load_dataset(cfg("cifar10", root=str(tmp_path), download=True))
    assert str(tmp_path) in str(info.value)


# --- cifar10 / cifar100 -------------------------------------------------------------------


def write_pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def colour_rows(labels: list[int]) -> np.ndarray:
    """CIFAR rows (3072 = R plane, G plane, B plane): a flat colour that encodes the label."""
    rows = np.zeros((len(labels), 3, 32, 32), dtype=np.uint8)
    for i, y in enumerate(labels):
        rows[i, 0], rows[i, 1], rows[i, 2] = 10 * y, 100, 200 - 10 * y
    return rows.reshape(len(labels), 3072)


def test_cifar10_real_format(tmp_path, no_md5):
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    for k in range(1, 6):
        labels = [k % 3, (k + 1) % 3]
        batch = {"batch_label": f"batch {k}", "labels": labels, "data": colour_rows(labels), "filenames": ["a", "b"]}
        write_pickle(base / f"data_batch_{k}", batch)
    write_pickle(base / "test_batch", {"labels": [0, 1, 2], "data": colour_rows([0, 1, 2])})
    write_pickle(base / "batches.meta", {"label_names": ["airplane", "automobile", "bird"], "num_vis": 3072})

    ds = load_dataset(cfg("cifar10", root=str(tmp_path)))
    assert_normalised_shape(ds, 10, 3, (3, 32, 32))
    assert ds.class_names == ("airplane", "automobile", "bird")
    assert ds.mean == (0.4914, 0.4822, 0.4465)
    assert ds.test_labels.tolist() == [0, 1, 2]
    for i, y in enumerate(ds.train_labels.tolist()):
        assert torch.allclose(pixel(ds, "train", i), torch.tensor([10.0 * y, 100, 200 - 10 * y]), atol=1e-3)

    small = load_dataset(cfg("cifar10", root=str(tmp_path), image_size=16))
    assert small.image_size == (16, 16)


def test_cifar100_real_format(tmp_path, no_md5):
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    train_labels = [0, 1, 2, 3, 0, 1]
    write_pickle(base / "train", {"fine_labels": train_labels, "coarse_labels": [0] * 6, "data": colour_rows(train_labels)})
    write_pickle(base / "test", {"fine_labels": [3, 2], "coarse_labels": [0, 0], "data": colour_rows([3, 2])})
    fine_names = ["apple", "bear", "cloud", "dolphin"]
    write_pickle(base / "meta", {"fine_label_names": fine_names, "coarse_label_names": ["x"]})

    ds = load_dataset(cfg("cifar100", root=str(tmp_path)))
    assert_normalised_shape(ds, 6, 2, (3, 32, 32))
    assert ds.class_names == ("apple", "bear", "cloud", "dolphin")
    assert ds.std == (0.2673, 0.2564, 0.2762)
    assert ds.train_labels.tolist() == train_labels
    assert torch.allclose(pixel(ds, "test", 0), torch.tensor([30.0, 100, 170]), atol=1e-3)


def test_cifar_corrupt_file_is_data_not_found(tmp_path, no_md5):
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    for name in ("train", "test", "meta"):
        (base / name).write_bytes(b"not a pickle")
    with pytest.raises(DataNotFoundError, match="corrupted"):
        load_dataset(cfg("cifar100", root=str(tmp_path)))


# --- tinyimagenet -------------------------------------------------------------------------


def solid(path: Path, colour, size=(64, 64), mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path, quality=95)


TINY_COLOURS = {"n02000000": (200, 30, 30), "n01000000": (30, 30, 200)}


def test_tinyimagenet_real_format(tmp_path):
    base = tmp_path / "tiny-imagenet-200"
    base.mkdir()
    wnids = list(TINY_COLOURS)  # deliberately not sorted
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (base / "words.txt").write_text(
        "n01000000\tgoldfish, Carassius auratus\nn02000000\tsea slug, nudibranch\nn09999999\tunused\n"
    )
    for wnid, colour in TINY_COLOURS.items():
        for k in range(3):
            solid(base / "train" / wnid / "images" / f"{wnid}_{k}.JPEG", colour)
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text(f"{wnid}_0.JPEG\t0\t0\t63\t63\n")
    solid(base / "train" / "n01000000" / "images" / "n01000000_3.JPEG", 90, mode="L")  # greyscale, as some are
    annotations = []
    for i, wnid in enumerate(["n02000000", "n01000000", "n01000000"]):
        solid(base / "val" / "images" / f"val_{i}.JPEG", TINY_COLOURS[wnid])
        annotations.append(f"val_{i}.JPEG\t{wnid}\t0\t32\t44\t62")
    (base / "val" / "val_annotations.txt").write_text("\n".join(annotations) + "\n")

    ds = load_dataset(cfg("tinyimagenet", root=str(tmp_path)))
    assert_normalised_shape(ds, 7, 3, (3, 64, 64))
    assert ds.class_names == ("goldfish", "sea slug")  # sorted wnids, first synonym
    assert ds.class_counts().tolist() == [4, 3]
    assert ds.test_labels.tolist() == [1, 0, 0]
    assert ds.mean == (0.485, 0.456, 0.406)
    assert torch.allclose(pixel(ds, "test", 0), torch.tensor([200.0, 30, 30]), atol=3)
    assert torch.allclose(pixel(ds, "train", 3), torch.tensor([90.0, 90, 90]), atol=3)

    (base / "val" / "images" / "val_2.JPEG").unlink()
    with pytest.raises(DataNotFoundError, match="val_2.JPEG"):
        load_dataset(cfg("tinyimagenet", root=str(tmp_path)))


# --- celeba -------------------------------------------------------------------------------

# (file, partition, 5_o_Clock_Shadow, Male, Young); the real files are space separated with
# a count line and a header line (attr: trailing space, "-1" / " 1" padded to two columns).
CELEBA_ROWS = [
    ("000001.jpg", 0, -1, 1, 1),
    ("000002.jpg", 0, -1, -1, 1),
    ("000003.jpg", 0, 1, 1, -1),
    ("000004.jpg", 0, -1, -1, -1),
    ("000005.jpg", 1, -1, 1, 1),
    ("000006.jpg", 2, 1, 1, 1),
    ("000007.jpg", 2, -1, -1, 1),
]


def write_celeba(root: Path) -> Path:
    base = root / "celeba"
    n = len(CELEBA_ROWS)
    for i, (fname, _, _, male, _) in enumerate(CELEBA_ROWS):
        solid(base / "img_align_celeba" / fname, (220, 180, 150) if male == 1 else (40, 60, 80), size=(178, 218))

    def pad(v: int) -> str:
        return f"{v:2d}"

    (base / "list_eval_partition.txt").write_text("".join(f"{f} {p}\n" for f, p, *_ in CELEBA_ROWS))
    (base / "identity_CelebA.txt").write_text("".join(f"{f} {100 + i}\n" for i, (f, *_) in enumerate(CELEBA_ROWS)))
    (base / "list_attr_celeba.txt").write_text(
        f"{n}\n5_o_Clock_Shadow Male Young \n"
        + "".join(f"{f} {pad(a)} {pad(m)} {pad(y)}\n" for f, _, a, m, y in CELEBA_ROWS)
    )
    (base / "list_bbox_celeba.txt").write_text(
        f"{n}\nimage_id x_1 y_1 width height\n" + "".join(f"{f}    95  71 226 313\n" for f, *_ in CELEBA_ROWS)
    )
    (base / "list_landmarks_align_celeba.txt").write_text(
        f"{n}\nlefteye_x lefteye_y righteye_x righteye_y nose_x nose_y "
        "leftmouth_x leftmouth_y rightmouth_x rightmouth_y\n"
        + "".join(f"{f}    69  109  106  113   77  142   73  152  108  154\n" for f, *_ in CELEBA_ROWS)
    )
    return base


def test_celeba_real_format(tmp_path, no_md5):
    write_celeba(tmp_path)
    ds = load_dataset(cfg("celeba", root=str(tmp_path)))
    assert_normalised_shape(ds, 4, 2, (3, 32, 32))  # image_size null -> 32
    assert ds.class_names == ("not Male", "Male")
    assert ds.train_labels.tolist() == [1, 0, 1, 0] and ds.test_labels.tolist() == [1, 0]
    assert torch.allclose(pixel(ds, "test", 0), torch.tensor([220.0, 180, 150]), atol=3)

    young = load_dataset(cfg("celeba", root=str(tmp_path), target_attr="Young", image_size=16))
    assert young.train_labels.tolist() == [1, 1, 0, 0] and young.image_size == (16, 16)
    assert young.class_names == ("not Young", "Young")


def test_celeba_unknown_attribute_lists_valid_ones(tmp_path, no_md5):
    write_celeba(tmp_path)
    with pytest.raises(ConfigError, match="5_o_Clock_Shadow, Male, Young"):
        load_dataset(cfg("celeba", root=str(tmp_path), target_attr="Smiling"))


def test_celeba_missing_text_file_is_named(tmp_path, no_md5):
    base = write_celeba(tmp_path)
    (base / "list_eval_partition.txt").unlink()
    with pytest.raises(DataNotFoundError, match="list_eval_partition.txt"):
        load_dataset(cfg("celeba", root=str(tmp_path)))


def test_celeba_unofficial_files_fail_md5_clearly(tmp_path):
    write_celeba(tmp_path)  # without no_md5: torchvision's real check rejects the files
    with pytest.raises(DataNotFoundError, match="md5"):
        load_dataset(cfg("celeba", root=str(tmp_path)))


# --- imagefolder --------------------------------------------------------------------------


def test_imagefolder_cifar10_mini(cifar10_mini):
    ds = load_dataset(cfg("imagefolder", root=str(cifar10_mini), image_size=32))
    assert_normalised_shape(ds, 5000, 1000, (3, 32, 32))
    assert ds.num_classes == 10 and ds.class_names[0] == "airplane"
    assert ds.class_counts().tolist() == [500] * 10
    assert torch.bincount(ds.test_labels).tolist() == [100] * 10
    # Public [-1, 1] normalisation, not the slice's own statistics (those would be a release).
    assert ds.mean == (0.5, 0.5, 0.5) and ds.std == (0.5, 0.5, 0.5)
    assert ds.train_images.min() >= -1.0 and ds.train_images.max() <= 1.0
    assert ds.train_images.std() > 0.3  # real images, not a constant fill


def write_folder(root: Path, classes=("a", "b"), mode="RGB", size=(8, 8)) -> None:
    for split, n in (("train", 3), ("test", 2)):
        for c, name in enumerate(classes):
            for k in range(n):
                colour = 50 + 100 * c if mode == "L" else (50 + 100 * c, 20, 20)
                solid(root / split / name / f"{k}.png", colour, size=size, mode=mode)


def folder(root: Path, **kw) -> DatasetConfig:
    """An imagefolder config; the shape is always given (8x8 RGB unless told)."""
    return cfg("imagefolder", root=str(root), **{"image_size": 8, **kw})


def test_imagefolder_greyscale_and_resize(tmp_path):
    write_folder(tmp_path, mode="L")
    ds = load_dataset(folder(tmp_path, channels=1))
    assert_normalised_shape(ds, 6, 4, (1, 8, 8))
    assert ds.class_names == ("a", "b") and ds.test_labels.tolist() == [0, 0, 1, 1]
    assert torch.allclose(pixel(ds, "train", 5), torch.tensor([150.0]), atol=1e-3)
    assert load_dataset(folder(tmp_path, channels=1, image_size=4)).image_size == (4, 4)
    # The same greyscale files as RGB: channels come from the config, not from the files.
    rgb = load_dataset(folder(tmp_path, channels=3))
    assert_normalised_shape(rgb, 6, 4, (3, 8, 8))
    assert torch.allclose(pixel(rgb, "train", 5), torch.tensor([150.0, 150, 150]), atol=1e-3)


def test_imagefolder_shape_is_configuration(tmp_path):
    """One greyscale or odd-sized private image changes neither the shape nor stops the run."""
    write_folder(tmp_path, size=(32, 32))
    plain = load_dataset(folder(tmp_path, image_size=32, channels=3))
    assert_normalised_shape(plain, 6, 4, (3, 32, 32))

    solid(tmp_path / "train" / "a" / "grey.png", 90, size=(32, 32), mode="L")
    solid(tmp_path / "train" / "b" / "odd.png", (10, 200, 30, 255), size=(50, 21), mode="RGBA")
    ds = load_dataset(folder(tmp_path, image_size=32, channels=3))
    assert_normalised_shape(ds, 8, 4, (3, 32, 32))
    assert ds.train_images.shape[1:] == plain.train_images.shape[1:]
    assert torch.equal(ds.test_images, plain.test_images)
    # Files are sorted within a class: a/0-2.png, a/grey.png, b/0-2.png, b/odd.png.
    assert ds.train_labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert torch.allclose(pixel(ds, "train", 3), torch.tensor([90.0, 90, 90]), atol=1e-3)
    assert torch.allclose(pixel(ds, "train", 7), torch.tensor([10.0, 200, 30]), atol=1e-3)

    grey = load_dataset(folder(tmp_path, image_size=32, channels=1))
    assert_normalised_shape(grey, 8, 4, (1, 32, 32))
    assert load_dataset(folder(tmp_path, image_size=16, channels=1)).image_size == (16, 16)


def test_imagefolder_shape_must_be_configured(tmp_path):
    write_folder(tmp_path)
    with pytest.raises(ConfigError, match=r"dataset=imagefolder needs dataset.image_size \(e.g. 32\)"):
        load_dataset(folder(tmp_path, image_size=None))
    with pytest.raises(ConfigError, match="dataset.channels must be 1 .* or 3"):
        load_dataset(folder(tmp_path, channels=2))
    # Refused before any file is read: a missing folder is not even looked at.
    with pytest.raises(ConfigError, match="image_size"):
        load_dataset(folder(tmp_path / "nowhere", image_size=None))


def test_imagefolder_class_mismatch(tmp_path):
    write_folder(tmp_path)
    solid(tmp_path / "test" / "c" / "0.png", (0, 0, 0), size=(8, 8))
    with pytest.raises(ConfigError, match=r"only in test: \['c'\]"):
        load_dataset(folder(tmp_path))


def test_imagefolder_fingerprint_follows_the_files(tmp_path):
    write_folder(tmp_path)
    fp = dataset_fingerprint(load_dataset(folder(tmp_path)))
    assert fp == dataset_fingerprint(load_dataset(folder(tmp_path)))
    solid(tmp_path / "train" / "a" / "0.png", (0, 255, 0), size=(8, 8))
    assert dataset_fingerprint(load_dataset(folder(tmp_path))) != fp


def test_imagefolder_root_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    write_folder(tmp_path / "imgs")
    assert load_dataset(cfg("imagefolder", root="~/imgs", image_size=8)).num_train == 6


# --- imagefolder: hostile folders ---------------------------------------------------------


def one_line(exc: pytest.ExceptionInfo) -> str:
    """The error's message, checked to be one line (the CLI prints it as `dpgd: error: ...`)."""
    message = str(exc.value)
    assert "\n" not in message and "\r" not in message
    return message


def test_imagefolder_truncated_jpeg_is_named(tmp_path):
    from PIL import ImageFile

    write_folder(tmp_path)
    bad = tmp_path / "train" / "b" / "photo.jpg"
    Image.radial_gradient("L").convert("RGB").save(bad, quality=95)
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError) as exc:
        load_dataset(folder(tmp_path))
    message = one_line(exc)
    assert str(bad) in message and "truncated" in message and "remove or fix that file" in message
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # never patched up, globally or otherwise


def test_imagefolder_not_an_image_with_an_image_extension_is_named(tmp_path):
    write_folder(tmp_path)
    bad = tmp_path / "test" / "a" / "bad.png"
    bad.write_text("this is not a PNG")
    with pytest.raises(ConfigError) as exc:
        load_dataset(folder(tmp_path))
    message = one_line(exc)
    assert str(bad) in message and "not an image" in message and "remove or fix" in message
    # A newline in the file name stays escaped: the error is still one line.
    bad.unlink()
    odd = tmp_path / "train" / "a" / "odd\nname.png"
    odd.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ConfigError) as exc:
        load_dataset(folder(tmp_path))
    assert "odd\\nname.png" in one_line(exc)


def test_imagefolder_alpha_and_palette_are_composited_on_black(tmp_path):
    write_folder(tmp_path)
    a = tmp_path / "train" / "a"
    # Left half opaque red, right half fully transparent green: the green must not show.
    rgba = Image.new("RGBA", (8, 8), (0, 255, 0, 0))
    rgba.paste((200, 0, 0, 255), (0, 0, 4, 8))
    rgba.save(a / "x1_rgba.png")
    # Half-transparent grey (LA): 200 at alpha 128 -> 200 * 128 / 255 on black.
    Image.new("LA", (8, 8), (200, 128)).save(a / "x2_la.png")
    # Palette with a transparent index: index 1 (blue) is transparent, index 0 is white.
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([255, 255, 255, 0, 0, 255] + [0] * 762)
    pal.paste(1, (0, 0, 8, 4))
    pal.save(a / "x3_p.png", transparency=1)
    ds = load_dataset(folder(tmp_path))
    assert_normalised_shape(ds, 9, 4, (3, 8, 8))
    img = lambda i: (ds.denormalise(ds.train_images[i : i + 1])[0] * 255).round()  # noqa: E731
    assert img(3)[:, :, :4].tolist() == torch.tensor([200.0, 0, 0]).view(3, 1, 1).expand(3, 8, 4).tolist()
    assert img(3)[:, :, 4:].abs().max() == 0  # transparent -> black, hidden colour ignored
    assert torch.allclose(img(4), torch.full((3, 8, 8), 100.0), atol=1)
    assert img(5)[:, :4].abs().max() == 0 and img(5)[:, 4:].min() == 255
    # The same files in greyscale: same shape rule, same compositing, deterministic.
    grey = load_dataset(folder(tmp_path, channels=1))
    assert_normalised_shape(grey, 9, 4, (1, 8, 8))
    assert torch.equal(grey.train_images, load_dataset(folder(tmp_path, channels=1)).train_images)
    g = (grey.denormalise(grey.train_images[5:6])[0] * 255).round()
    assert g[:, :4].abs().max() == 0 and g[:, 4:].min() == 255


def test_imagefolder_16bit_is_scaled_not_clipped(tmp_path):
    write_folder(tmp_path)
    values = np.array([0, 255, 256, 4096, 40000, 65535], dtype=np.uint16)
    # One value per row (the last repeated), constant along each row: an 8x8 16-bit image.
    wide = Image.fromarray(np.repeat(values[[0, 1, 2, 3, 4, 5, 5, 5], None], 8, axis=1))
    assert wide.mode == "I;16"
    wide.save(tmp_path / "train" / "a" / "x_16bit.png")
    assert Image.open(tmp_path / "train" / "a" / "x_16bit.png").mode == "I;16"
    grey = load_dataset(folder(tmp_path, channels=1))
    assert_normalised_shape(grey, 7, 4, (1, 8, 8))
    rows = (grey.denormalise(grey.train_images[3:4])[0, 0] * 255).round()[:, 0]
    # >> 8: 65535 -> 255 and 40000 -> 156, where PIL's convert("L") would clip both to 255.
    assert rows.tolist() == [0, 0, 1, 16, 156, 255, 255, 255]
    rgb = load_dataset(folder(tmp_path, channels=3))
    assert torch.equal(rgb.train_images[3], grey.train_images[3].expand(3, 8, 8))


def test_imagefolder_mixed_sizes_are_resized(tmp_path):
    from dpgd.data.tensors import fit_square

    write_folder(tmp_path)
    a = tmp_path / "train" / "a"
    for name, size in (("x1.png", (50, 21)), ("x2.png", (3, 100)), ("x3.png", (1, 1)), ("x4.png", (8, 9))):
        solid(a / name, (10, 200, 30), size=size)
    gradient = Image.linear_gradient("L").resize((40, 24))
    gradient.save(a / "x5.png")
    ds = load_dataset(folder(tmp_path))
    assert_normalised_shape(ds, 11, 4, (3, 8, 8))
    for i in range(3, 7):
        assert torch.allclose(pixel(ds, "train", i), torch.tensor([10.0, 200, 30]), atol=1e-3)
    expected = torch.tensor(np.asarray(fit_square(gradient, 8)), dtype=torch.float32)
    assert torch.equal((ds.denormalise(ds.train_images[7:8])[0, 0] * 255).round(), expected)


def test_imagefolder_non_image_files_are_ignored(tmp_path):
    write_folder(tmp_path)
    clean = load_dataset(folder(tmp_path))
    (tmp_path / "train" / "a" / "notes.txt").write_text("labelling notes")
    (tmp_path / "train" / "b" / "Thumbs.db").write_bytes(b"\x00\x01")
    (tmp_path / "test" / "a" / "README").write_text("no extension")
    Image.new("RGB", (8, 8)).save(tmp_path / "train" / "a" / "anim.gif")  # not in IMG_EXTENSIONS
    (tmp_path / "train" / "stray.png").write_text("not in a class folder")
    ds = load_dataset(folder(tmp_path))
    assert ds.class_names == clean.class_names and ds.num_train == clean.num_train
    assert dataset_fingerprint(ds) == dataset_fingerprint(clean)
    # Extensions are matched in any case: PHOTO.PNG is read.
    solid(tmp_path / "train" / "a" / "PHOTO.PNG", (0, 0, 0), size=(8, 8))
    assert load_dataset(folder(tmp_path)).num_train == clean.num_train + 1


def test_imagefolder_hidden_files_and_folders_are_ignored(tmp_path):
    write_folder(tmp_path)
    clean = load_dataset(folder(tmp_path))
    for split in ("train", "test"):
        # Jupyter's checkpoint folder holds valid images but is not a class.
        solid(tmp_path / split / ".ipynb_checkpoints" / "0.png", (1, 2, 3), size=(8, 8))
        # macOS junk: ._ files carry an image extension but are not images.
        (tmp_path / split / "a" / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
        (tmp_path / split / "a" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    solid(tmp_path / "train" / "b" / ".thumbs" / "0.png", (9, 9, 9), size=(8, 8))  # hidden subfolder
    solid(tmp_path / "train" / "b" / ".hidden.png", (9, 9, 9), size=(8, 8))
    ds = load_dataset(folder(tmp_path))
    assert ds.class_names == ("a", "b") and ds.num_train == clean.num_train
    assert dataset_fingerprint(ds) == dataset_fingerprint(clean)
    assert torch.equal(ds.test_images, clean.test_images)
    # Only hidden classes: no class at all, said in one line.
    hidden_only = tmp_path / "hidden_only"
    solid(hidden_only / "train" / ".cache" / "0.png", (0, 0, 0), size=(8, 8))
    solid(hidden_only / "test" / ".cache" / "0.png", (0, 0, 0), size=(8, 8))
    with pytest.raises(DataNotFoundError) as exc:
        load_dataset(folder(hidden_only))
    assert "no class folder" in one_line(exc) and str(hidden_only / "train") in str(exc.value)


def test_imagefolder_empty_class_folder_is_named(tmp_path):
    write_folder(tmp_path)
    (tmp_path / "train" / "c").mkdir()
    (tmp_path / "test" / "c").mkdir()
    solid(tmp_path / "test" / "c" / "0.png", (0, 0, 0), size=(8, 8))
    with pytest.raises(DataNotFoundError) as exc:
        load_dataset(folder(tmp_path))
    message = one_line(exc)
    assert f"Class folder with no image: {tmp_path / 'train' / 'c'}/" in message
    assert "Add images, or delete the class from both train/ and test/" in message
    # Only hidden or non-image files still counts as empty; several folders are all named.
    (tmp_path / "train" / "c" / "notes.txt").write_text("todo")
    (tmp_path / "train" / "c" / ".DS_Store").write_bytes(b"\x00")
    (tmp_path / "train" / "d").mkdir()
    (tmp_path / "test" / "d").mkdir()
    with pytest.raises(DataNotFoundError) as exc:
        load_dataset(folder(tmp_path))
    message = one_line(exc)
    assert f"Class folders with no image: {tmp_path / 'train' / 'c'}/, {tmp_path / 'train' / 'd'}/ " in message


def test_imagefolder_unicode_and_spaces_in_class_names(tmp_path):
    classes = ("vélo", "chat noir", "Zèbre 🦓")
    write_folder(tmp_path, classes=classes)
    ds = load_dataset(folder(tmp_path))
    # Kept exactly as on disk, sorted by code point as ImageFolder does.
    assert ds.class_names == ("Zèbre 🦓", "chat noir", "vélo") == tuple(sorted(classes))
    assert ds.class_counts().tolist() == [3, 3, 3] and ds.test_labels.tolist() == [0, 0, 1, 1, 2, 2]
    # Labels follow the names: "vélo" was written with colour index 0 (red 50).
    assert torch.allclose(pixel(ds, "train", 6), torch.tensor([50.0, 20, 20]), atol=1e-3)


def test_imagefolder_test_split_missing_a_class(tmp_path):
    write_folder(tmp_path, classes=("a", "b", "c"))
    for f in (tmp_path / "test" / "c").iterdir():
        f.unlink()
    (tmp_path / "test" / "c").rmdir()
    solid(tmp_path / "test" / "d" / "0.png", (0, 0, 0), size=(8, 8))
    with pytest.raises(ConfigError) as exc:
        load_dataset(folder(tmp_path))
    assert one_line(exc).endswith("only in train: ['c']; only in test: ['d'].")

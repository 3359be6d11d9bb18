"""The pool cache key: local secret, keyed data fingerprint, code version and noise mode."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import os
import stat
import threading

import pytest
import torch

from dpgd.config import GeneratorConfig
from dpgd.data import hash_train_split
from dpgd.errors import ConfigError
from dpgd.generators import cache
from dpgd.generators.base import Pool
from dpgd.privacy import SubsampledGaussian


def plain_sha256(ds) -> str:
    """The unkeyed hash of the same bytes (what dataset_fingerprint computes, in full)."""
    h = hashlib.sha256()
    hash_train_split(h, ds)
    return h.hexdigest()


def with_one_more_record(ds):
    return dataclasses.replace(
        ds,
        train_images=torch.cat([ds.train_images, ds.train_images[:1]]),
        train_labels=torch.cat([ds.train_labels, ds.train_labels[:1]]),
    )


@pytest.fixture
def key_args(digits, tmp_path):
    secret = cache.local_secret(tmp_path)
    return {
        "cfg": GeneratorConfig(name="dp_merf"),
        "noise_multiplier": 2.0,
        "seed": 0,
        "fingerprint": cache.keyed_fingerprint(digits, secret),
        "noise_mode": "secret",
    }


def key(**kw) -> str:
    return cache.cache_key(kw.pop("cfg"), kw.pop("noise_multiplier"), kw.pop("seed"), **kw)


# --- local secret -------------------------------------------------------------------------


def test_secret_created_once_with_mode_0600_and_reused(tmp_path):
    folder = tmp_path / "pools"  # does not exist yet
    first = cache.local_secret(folder)
    path = folder / ".key"
    assert isinstance(first, bytes) and len(first) == 32
    assert path.read_bytes() == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    mtime = path.stat().st_mtime_ns
    assert cache.local_secret(folder) == first
    assert path.stat().st_mtime_ns == mtime  # not rewritten
    assert sorted(p.name for p in folder.iterdir()) == [".key"]  # no temp file left behind


def test_secrets_differ_between_cache_folders(tmp_path):
    assert cache.local_secret(tmp_path / "a") != cache.local_secret(tmp_path / "b")


def test_racing_creators_share_one_secret(tmp_path):
    folder = tmp_path / "pools"
    results: list[bytes] = []
    barrier = threading.Barrier(8)

    def create() -> None:
        barrier.wait()
        results.append(cache.local_secret(folder))

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and len(set(results)) == 1
    assert (folder / ".key").read_bytes() == results[0]
    assert sorted(p.name for p in folder.iterdir()) == [".key"]


def test_truncated_secret_is_an_error(tmp_path):
    (tmp_path / ".key").write_bytes(b"short")
    with pytest.raises(ConfigError, match="delete it"):
        cache.local_secret(tmp_path)


def test_secret_with_loose_mode_is_tightened(tmp_path):
    path = tmp_path / ".key"
    path.write_bytes(os.urandom(32))
    path.chmod(0o644)
    assert cache.local_secret(tmp_path) == path.read_bytes()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# --- keyed fingerprint --------------------------------------------------------------------


def test_keyed_fingerprint_depends_on_the_secret(digits):
    a, b = os.urandom(32), os.urandom(32)
    assert cache.keyed_fingerprint(digits, a) == cache.keyed_fingerprint(digits, a)
    assert cache.keyed_fingerprint(digits, a) != cache.keyed_fingerprint(digits, b)
    assert len(cache.keyed_fingerprint(digits, a)) == 64


def test_keyed_fingerprint_changes_when_one_record_is_added(digits):
    secret = os.urandom(32)
    bigger = with_one_more_record(digits)
    assert cache.keyed_fingerprint(bigger, secret) != cache.keyed_fingerprint(digits, secret)


def test_keyed_fingerprint_is_not_the_plain_hash(digits):
    from dpgd.data import dataset_fingerprint

    secret = os.urandom(32)
    keyed = cache.keyed_fingerprint(digits, secret)
    plain = plain_sha256(digits)
    assert plain.startswith(dataset_fingerprint(digits))  # same bytes hashed
    assert plain not in keyed and plain[:16] not in keyed and keyed != plain


def test_keyed_fingerprint_needs_a_secret(digits):
    with pytest.raises(ConfigError):
        cache.keyed_fingerprint(digits, b"")


# --- code version and key -----------------------------------------------------------------


def test_code_version_names_the_package_and_its_sources():
    cache.code_version.cache_clear()
    version = cache.code_version()
    assert version == cache.code_version()
    assert cache.code_version.cache_info().hits >= 1
    pkg, _, digest = version.partition("+")
    try:
        assert pkg == importlib.metadata.version("dpgd")
    except importlib.metadata.PackageNotFoundError:
        assert pkg == "unknown"
    assert len(digest) == 64 and int(digest, 16) >= 0


def test_cache_key_is_stable(key_args):
    assert key(**key_args) == key(**key_args)
    assert cache.CACHE_VERSION == 2


def test_cache_key_changes_with_noise_mode(key_args):
    assert key(**key_args) != key(**{**key_args, "noise_mode": "reproducible"})


def test_cache_key_changes_with_code_version(key_args, monkeypatch):
    before = key(**key_args)
    monkeypatch.setattr(cache, "code_version", lambda: "other")
    assert key(**key_args) != before


def test_cache_key_changes_with_noise_multiplier_and_seed(key_args):
    base = key(**key_args)
    assert key(**{**key_args, "noise_multiplier": 2.0000001}) != base
    assert key(**{**key_args, "noise_multiplier": None}) != base
    assert key(**{**key_args, "seed": 1}) != base


def test_cache_key_changes_with_the_data_and_the_secret(digits, key_args, tmp_path):
    base = key(**key_args)
    secret = cache.local_secret(tmp_path)
    bigger = cache.keyed_fingerprint(with_one_more_record(digits), secret)
    assert key(**{**key_args, "fingerprint": bigger}) != base
    other_secret = cache.keyed_fingerprint(digits, cache.local_secret(tmp_path / "other"))
    assert key(**{**key_args, "fingerprint": other_secret}) != base


def test_cache_key_requires_keyword_fingerprint_and_noise_mode(key_args):
    cfg = key_args["cfg"]
    with pytest.raises(TypeError):
        cache.cache_key(cfg, 2.0, 0, key_args["fingerprint"], "secret")  # type: ignore[misc]
    with pytest.raises(ConfigError):
        cache.cache_key(cfg, 2.0, 0, fingerprint=key_args["fingerprint"], noise_mode="")


def test_cache_path_does_not_contain_the_plain_hash(digits, key_args, tmp_path):
    path = cache.cache_path(tmp_path, key(**key_args))
    plain = plain_sha256(digits)
    assert plain[:16] not in path.name and plain[:32] not in path.name


# --- save / load --------------------------------------------------------------------------


def test_save_load_round_trip_and_miss_under_another_key(key_args, tmp_path):
    mechanism = SubsampledGaussian("generator", 2.0, 1.0, 1, "test")
    images = torch.randn(6, 1, 8, 8)
    labels = torch.tensor([0, 0, 1, 1, 2, 2], dtype=torch.int64)
    pool = Pool(images, labels, (mechanism,))
    k = key(**key_args)
    path = cache.cache_path(tmp_path, k)
    cache.save_pool(path, pool, k)
    assert path.is_file()

    loaded = cache.load_pool(path, k)
    assert loaded is not None
    assert torch.equal(loaded.images, images) and torch.equal(loaded.labels, labels)
    assert loaded.mechanisms == (mechanism,) and loaded.synthetic

    other = key(**{**key_args, "noise_mode": "reproducible"})
    assert other != k
    assert cache.load_pool(path, other) is None  # same file, other key: a miss
    assert cache.load_pool(cache.cache_path(tmp_path, other), other) is None  # no file


def test_corrupt_file_is_a_miss_without_logging_the_path(key_args, tmp_path, caplog):
    k = key(**key_args)
    path = cache.cache_path(tmp_path, k)
    path.write_bytes(b"not a pool")
    with caplog.at_level("WARNING", logger="dpgd"):
        assert cache.load_pool(path, k) is None
    assert caplog.records and all(path.name not in r.getMessage() for r in caplog.records)

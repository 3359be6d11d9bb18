"""dpgd.storage: atomic writes and the one loader every cache goes through."""

from __future__ import annotations

import logging

import torch

from dpgd.storage import atomic_torch_save, load_versioned


def _payload(version: int = 2, key: str = "k") -> dict:
    return {"version": version, "key": key, "value": torch.arange(3)}


def test_a_matching_file_is_decoded(tmp_path):
    path = tmp_path / "cache.pt"
    atomic_torch_save(_payload(), path)
    assert torch.equal(load_versioned(path, 2, "k", lambda d: d["value"], "test"), torch.arange(3))


def test_absent_stale_or_foreign_files_are_misses(tmp_path):
    path = tmp_path / "cache.pt"
    assert load_versioned(path, 2, "k", dict, "test") is None
    assert load_versioned(None, 2, "k", dict, "test") is None
    atomic_torch_save(_payload(version=1), path)
    assert load_versioned(path, 2, "k", dict, "test") is None
    atomic_torch_save(_payload(key="other"), path)
    assert load_versioned(path, 2, "k", dict, "test") is None
    atomic_torch_save([1, 2, 3], path)  # not a mapping at all
    assert load_versioned(path, 2, "k", dict, "test") is None


def test_torn_files_and_bad_payloads_are_misses_logged_without_the_path(tmp_path, caplog):
    path = tmp_path / "secret-derived-name.pt"
    atomic_torch_save(_payload(), path)
    path.write_bytes(path.read_bytes()[:40])  # a torn write
    with caplog.at_level(logging.WARNING):
        assert load_versioned(path, 2, "k", dict, "test") is None
    atomic_torch_save(_payload(), path)
    with caplog.at_level(logging.WARNING):
        assert load_versioned(path, 2, "k", lambda d: d["missing field"], "test") is None
    assert len(caplog.records) == 2
    assert all("secret-derived-name" not in record.getMessage() for record in caplog.records)
    assert "KeyError" in caplog.records[1].getMessage()


def test_a_decoder_may_refuse_a_payload(tmp_path):
    path = tmp_path / "cache.pt"
    atomic_torch_save(_payload(), path)
    assert load_versioned(path, 2, "k", lambda d: None, "test") is None

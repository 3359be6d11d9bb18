"""Read the records of an offline W&B run (``run-<id>.wandb``) for assertions in tests.

wandb >= 0.2x writes offline runs only as this record log (no ``wandb-summary.json``), and
no longer ships a Python reader. The format is a LevelDB-style log: a 7-byte header
(``:W&B``, magic 0xBEE1, version 0), then 32 KiB blocks of chunks, each with a 7-byte
header (crc32, length, type FULL/FIRST/MIDDLE/LAST); each record is a ``wandb.proto``
``Record`` message.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any, Iterator

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32 * 1024
CHUNK_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def iter_records(path: Path) -> Iterator[pb.Record]:
    data = Path(path).read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B" and magic == 0xBEE1 and version == 0, "not a W&B record log"
    offset, pending = 7, b""
    while offset + CHUNK_HEADER <= len(data):
        room = BLOCK - offset % BLOCK
        if room < CHUNK_HEADER:
            offset += room
            continue
        _, length, kind = struct.unpack("<IHB", data[offset : offset + CHUNK_HEADER])
        payload = data[offset + CHUNK_HEADER : offset + CHUNK_HEADER + length]
        offset += CHUNK_HEADER + length
        if kind == 0 and length == 0:
            continue
        if kind in (FULL, FIRST):
            pending = payload
        else:
            pending += payload
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            yield record


def wait_for_exit_record(log: Path, timeout_s: float = 30.0) -> None:
    """``run.finish()`` can return before W&B's service process has flushed the run's last
    records (summary, history) to disk; a finished log ends with an ``exit`` record."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(record.WhichOneof("record_type") == "exit" for record in iter_records(log)):
            return
        time.sleep(0.2)
    raise AssertionError(f"{log} has no exit record after {timeout_s:g} s: the run was not finished")


def run_contents(run_dir: Path) -> dict[str, Any]:
    """Summary, history rows, config and run metadata of one finished offline run folder."""
    [log] = list(Path(run_dir).glob("run-*.wandb"))
    wait_for_exit_record(log)
    summary: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    config: dict[str, Any] = {}
    meta: dict[str, str] = {}
    tags: list[str] = []
    artifacts: dict[str, list[str]] = {}
    for record in iter_records(log):
        kind = record.WhichOneof("record_type")
        if kind == "summary":
            for item in record.summary.update:
                key = item.key or "/".join(item.nested_key)
                summary[key] = json.loads(item.value_json)
        elif kind == "history":
            history.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.history.item})
        elif kind == "config":
            for item in record.config.update:
                config[item.key] = json.loads(item.value_json)
        elif kind == "run":
            for item in record.run.config.update:
                config[item.key] = json.loads(item.value_json)
            meta = {"name": record.run.display_name, "group": record.run.run_group, "job_type": record.run.job_type}
            tags = list(record.run.tags)
        elif kind == "artifact":
            artifacts[f"{record.artifact.name}:{record.artifact.type}"] = sorted(
                entry.path for entry in record.artifact.manifest.contents)
    return {"summary": summary, "history": history, "config": config, "run": meta, "tags": tags,
            "artifacts": artifacts}

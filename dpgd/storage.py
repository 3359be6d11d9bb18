"""Atomic writes for the files dpgd resumes from or trusts later (pool cache, shadow runs, ledger).

Each write goes to a uniquely named temporary file beside the target and is then renamed
over it (:func:`os.replace`, atomic on POSIX), so a crash or a concurrent writer never
leaves a half-written file that a later run would load. Formats version themselves: the
payload carries its own version field; these helpers only make the write all-or-nothing.
Callers create the folder. :func:`load_versioned` is the one way back: a missing, stale,
torn or foreign file is a miss (the caller recomputes), never a crash and never trusted.
"""

from __future__ import annotations

import logging
import os
import pickle
import secrets
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import torch

from dpgd.errors import ConfigError

log = logging.getLogger(__name__)

Decoded = TypeVar("Decoded")

# What a torn, truncated or foreign file raises in torch.load or in a payload's decoder
# (ConfigError: a decoder's own check of the payload).
_UNREADABLE = (OSError, EOFError, RuntimeError, KeyError, TypeError, ValueError, pickle.UnpicklingError, ConfigError)


def _temporary(path: Path) -> Path:
    """A fresh name in ``path``'s folder (same file system, so the rename is atomic)."""
    return path.with_name(f"{path.name}.tmp{os.getpid()}.{secrets.token_hex(4)}")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)``, all or nothing."""
    path = Path(path)
    tmp = _temporary(path)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(data: bytes, path: str | os.PathLike, mode: int = 0o600) -> None:
    """Write ``data`` to ``path``, all or nothing, readable by the owner only (``mode``):
    for secrets such as a run's noise key."""
    path = Path(path)
    tmp = _temporary(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(text: str, path: str | os.PathLike, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path``, all or nothing."""
    path = Path(path)
    tmp = _temporary(path)
    try:
        with open(tmp, "w", encoding=encoding) as fh:
            fh.write(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_versioned(path: str | os.PathLike | None, version: int, key: str,
                   decode: Callable[[Mapping[str, Any]], Decoded | None], what: str) -> Decoded | None:
    """``decode(payload)`` of the cache file at ``path`` written as ``{"version": version, "key":
    key, ...}``, or None when the file is absent, from another version or key, or unreadable.

    Only the error's type is logged, never the path or the message (which may hold it): cache
    paths derive from private data (see :mod:`dpgd.generators.cache`). ``decode`` may return
    None to refuse a payload on its own terms.
    """
    if path is None or not Path(path).is_file():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(data, Mapping) or data.get("version") != version or data.get("key") != key:
            return None
        return decode(data)
    except _UNREADABLE as exc:
        log.warning("ignoring an unreadable %s cache file (%s); recomputing it", what, type(exc).__name__)
        return None

"""On-disk cache of fitted pools, keyed by everything that determines them.

The cache path is a PRIVATE OUTPUT. Never log it, print it, store it in a W&B run, a
report or a results file, and never publish or share the cache folder: the file name is
derived from the private train set, and a cache folder is only as safe as its ``.key``.

Key: sha256 of the JSON of

* ``version``: :data:`CACHE_VERSION`, the cache file format;
* ``code``: :func:`code_version`, the installed ``dpgd`` version plus a sha256 of the
  source files of :mod:`dpgd.generators`. Any change to a generator's code gives a new
  key, so a code change never silently reuses pools the old code produced;
* ``dataset``: :func:`keyed_fingerprint`, an HMAC-SHA256 of the data set name, train
  images and labels under the cache folder's local secret (see below);
* ``generator``: the generator's name, ``pool_per_class`` and ITS OWN settings section
  (:func:`key_settings`). Settings of other generators, ``cache``/``cache_dir`` and
  ``report`` are not in the key: they do not change the pool;
* ``noise_multiplier`` (every bit of the float) and ``seed``;
* ``noise_mode``: where the DP noise comes from, e.g. ``"secret"`` (fresh secret per-run
  randomness: DP) or ``"reproducible"`` (noise derived from the public seed: NOT DP). A
  pool made one way is never served to a run of the other way;
* ``public`` (only with ``public=folder``): the public pool's fingerprint and the public
  network's key, which PE's candidates and votes depend on.

Local secret: ``<cache_dir>/.key`` holds 32 random bytes (:func:`local_secret`), created
on first use with mode 0o600 and never logged. The data set enters the key only through
an HMAC under that secret, never as a plain hash: a plain hash of the train set could be
recomputed by anyone holding D and D+x and, matched against a logged or shared cache
path, would tell whether x was in the private data (a membership oracle). Deleting
``.key`` only empties the cache (every key changes).

A file stores the pool and the mechanisms that produced it; the stage re-declares those to
the run's ledger on every hit.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import importlib.metadata
import json
import logging
import os
import secrets
import stat
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dpgd.config import GeneratorConfig
from dpgd.data import ImageDataset, hash_train_split
from dpgd.errors import ConfigError
from dpgd.generators.base import Pool
from dpgd.storage import atomic_torch_save, load_versioned

log = logging.getLogger("dpgd")

CACHE_ENV = "DPGD_CACHE_DIR"
# The cache file format and key layout. Generator code changes are caught by code_version().
CACHE_VERSION = 2
# The local secret: file name inside the cache folder and its length in bytes.
SECRET_FILE = ".key"
SECRET_BYTES = 32


def default_cache_dir() -> Path:
    """``$DPGD_CACHE_DIR`` when set, else ``~/.cache/dpgd/pools``."""
    env = os.environ.get(CACHE_ENV, "").strip()
    return Path(env or "~/.cache/dpgd/pools").expanduser()


def resolve_cache_dir(cache_dir: str | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir else default_cache_dir()


def _plain(node: Any) -> Any:
    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True)
    if is_dataclass(node) and not isinstance(node, type):
        return asdict(node)
    return node


def key_settings(cfg: GeneratorConfig) -> dict[str, Any]:
    """The part of the generator config that determines its pool."""
    name = cfg.name
    own = getattr(cfg, name, None)
    return {"name": name, "pool_per_class": cfg.pool_per_class, name: _plain(own)}


def local_secret(cache_dir: Path) -> bytes:
    """The cache folder's 32-byte secret, from ``cache_dir/.key`` (created on first use).

    Created with :func:`secrets.token_bytes`, mode 0o600, written to a temp file in the
    same folder and then published atomically. When two processes race to create it, the
    first published file wins and both use it: the file is always re-read after publishing.
    The secret is never logged.
    """
    cache_dir = Path(cache_dir)
    path = cache_dir / SECRET_FILE
    secret = _read_secret(path)
    if secret is not None:
        return secret
    cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = cache_dir / f"{SECRET_FILE}.tmp{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)  # exactly 0o600, whatever the umask
            data = secrets.token_bytes(SECRET_BYTES)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            # Publish without overwriting: a racing process that published first wins.
            os.link(tmp, path)
        except FileExistsError:
            pass
        except OSError:
            # No hard links on this file system: atomic replace; the re-read below then
            # yields whichever file was published last.
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    secret = _read_secret(path)
    if secret is None:
        raise ConfigError(f"could not create the pool cache secret in {cache_dir}")
    return secret


def _read_secret(path: Path) -> bytes | None:
    """The secret in ``path``, None when the file does not exist."""
    try:
        with open(path, "rb") as fh:
            mode = stat.S_IMODE(os.fstat(fh.fileno()).st_mode)
            data = fh.read(SECRET_BYTES + 1)
    except FileNotFoundError:
        return None
    if len(data) != SECRET_BYTES:
        # Never the content: only its length.
        raise ConfigError(
            f"the pool cache secret {path} holds {len(data)} bytes, not {SECRET_BYTES}; "
            "delete it (this only empties the pool cache) and rerun."
        )
    if mode & 0o077:
        try:
            os.chmod(path, 0o600)
        except OSError:
            log.warning("the pool cache secret %s is readable by other users; make it mode 0600", path)
    return data


def keyed_fingerprint(dataset: ImageDataset, secret: bytes) -> str:
    """HMAC-SHA256 under ``secret`` of the data set name, train images and labels (hex).

    The same bytes as :func:`dpgd.data.dataset_fingerprint` hashes, but keyed: without the
    local secret nobody can recompute it from candidate data sets.
    """
    if not isinstance(secret, (bytes, bytearray)) or len(secret) == 0:
        raise ConfigError("keyed_fingerprint needs a non-empty secret (bytes)")
    mac = hmac.new(bytes(secret), digestmod=hashlib.sha256)
    hash_train_split(mac, dataset)
    return mac.hexdigest()


@functools.lru_cache(maxsize=None)
def code_version() -> str:
    """``<dpgd version>+<sha256 of the dpgd.generators sources>``, computed once.

    The sources are the ``.py`` files of this package's folder, sorted by name; each file's
    name and bytes enter the hash, so any edit to a generator gives a new cache key.
    """
    try:
        version = importlib.metadata.version("dpgd")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    digest = hashlib.sha256()
    for source in sorted(Path(__file__).resolve().parent.glob("*.py"), key=lambda p: p.name):
        digest.update(f"|{source.name}|".encode())
        data = source.read_bytes()
        digest.update(f"{len(data)}|".encode())
        digest.update(data)
    return f"{version}+{digest.hexdigest()}"


def cache_key(
    cfg: GeneratorConfig,
    noise_multiplier: float | None,
    seed: int,
    *,
    fingerprint: str,
    noise_mode: str,
    public: str | None = None,
) -> str:
    """The key of a pool; ``fingerprint`` is :func:`keyed_fingerprint` of the data set and
    ``noise_mode`` says where the DP noise comes from (``"secret"``, ``"reproducible"``)."""
    if not isinstance(fingerprint, str) or not fingerprint:
        raise ConfigError("cache_key needs the data set's keyed fingerprint")
    if not isinstance(noise_mode, str) or not noise_mode:
        raise ConfigError(f"cache_key needs a noise mode (e.g. 'secret' or 'reproducible'), got {noise_mode!r}")
    payload = {
        "version": CACHE_VERSION,
        "code": code_version(),
        "dataset": fingerprint,
        "generator": key_settings(cfg),
        # repr keeps every bit of the float: a different multiplier is a different pool.
        "noise_multiplier": None if noise_multiplier is None else repr(float(noise_multiplier)),
        "seed": int(seed),
        # Reproducible (seed-derived, not DP) and secret noise never share a pool.
        "noise_mode": noise_mode,
    }
    if public is not None:
        # The public pool's fingerprint and the public network's key (public=folder): PE draws
        # its candidates from them. Absent without public knowledge (keys as before).
        payload["public"] = public
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def cache_path(cache_dir: Path, key: str) -> Path:
    """The pool file for ``key``: a private output, never to be logged or published."""
    return cache_dir / f"pool-{key[:32]}.pt"


def save_pool(path: Path, pool: Pool, key: str) -> None:
    """Write atomically (a crash never leaves a half-written pool)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(
        {"version": CACHE_VERSION, "key": key, **pool.to_payload()},
        path,
    )


def load_pool(path: Path, key: str) -> Pool | None:
    """The cached pool, or None when absent, unreadable or written under another key (a miss,
    never a crash: the pool is refitted)."""
    return load_versioned(path, CACHE_VERSION, key, Pool.from_payload, "pool")

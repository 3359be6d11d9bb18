"""Where DP mechanisms draw their noise and Poisson masks from.

The public ``seed`` is published (results, W&B, ``.hydra/config.yaml``), so randomness
derived from it is known to everyone: noise drawn from it can be subtracted from a
release (``r - sigma * z`` recovers the clean statistic), and a known Poisson mask voids
subsampling amplification. Every DP mechanism therefore draws from a :class:`NoiseSource`
keyed by 32 bytes of the operating system's CSPRNG (``secrets``), made fresh for each run
(and each shadow run), held only in memory, never logged or saved. Independent runs, for
example the points of an epsilon sweep, then draw independent noise and compose as
independent mechanisms.

Resuming a run (``resume=true``, the default) is the one exception to "never saved": while
the run is unfinished its key sits in ``private/checkpoints/noise.key`` (owner-only file
mode), so the rerun that continues it draws exactly the noise the killed process would have
drawn; a statistic is never released twice with different noise. The key is deleted as soon
as the release is written. ``resume=false`` keeps it in memory only.

The public ``seed`` keeps only randomness that the guarantee does not rest on: initial
weights, DSA parameters, evaluation, k-means, DP-MERF's random frequencies.

``reproducible_noise=true`` keys the source by the public seed instead: useful for tests
and debugging, and NOT differentially private. Such a run is marked as not DP in
``results.json`` and the log. A non-private run (``epsilon=inf``) adds no noise; its
source is keyed by the seed so the run is reproducible.

Each stream is a ``torch.Generator`` (MT19937 on the CPU, Philox on CUDA) seeded with 63
bits of HMAC-SHA256(key, stream name). These are not cryptographically secure generators:
their state could in principle be recovered from many exact outputs, which a release
never shows (only statistics plus noise). opacus's ``secure_mode`` would use torchcsprng,
which is not maintained for current torch releases.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path

import torch

from dpgd.storage import atomic_write_bytes

SECRET = "secret"
REPRODUCIBLE = "reproducible"
_KEY_BYTES = 32


class NoiseSource:
    """Named, independent random streams for DP mechanisms, keyed by a secret (or the seed)."""

    __slots__ = ("_key", "mode")

    def __init__(self, key: bytes, mode: str) -> None:
        if mode not in (SECRET, REPRODUCIBLE):
            raise ValueError(f"noise mode must be {SECRET!r} or {REPRODUCIBLE!r}, got {mode!r}")
        self._key = bytes(key)
        self.mode = mode

    @classmethod
    def secret(cls) -> "NoiseSource":
        """A fresh source keyed by the OS's CSPRNG: nobody, this process included, can redraw it later."""
        return cls(secrets.token_bytes(_KEY_BYTES), SECRET)

    @classmethod
    def from_public_seed(cls, seed: int) -> "NoiseSource":
        """A source anyone with ``seed`` can regenerate: tests, debugging and non-private runs only."""
        return cls(hashlib.sha256(f"dpgd-public-noise/{int(seed)}".encode()).digest(), REPRODUCIBLE)

    @classmethod
    def for_run(cls, seed: int, private: bool, reproducible: bool) -> "NoiseSource":
        """The run's source: secret for a private run unless reproducible noise was asked for."""
        if private and not reproducible:
            return cls.secret()
        return cls.from_public_seed(seed)

    @classmethod
    def for_resumable_run(cls, seed: int, private: bool, reproducible: bool, key_file: Path) -> "NoiseSource":
        """:meth:`for_run`, with a secret key kept in ``key_file`` until the run finishes.

        The first process of a run makes the key and writes it (owner-only); a rerun that
        continues the run reads it back, so both draw the same noise streams.
        """
        if not (private and not reproducible):
            return cls.from_public_seed(seed)
        key_file = Path(key_file)
        if key_file.is_file():
            key = key_file.read_bytes()
            if len(key) != _KEY_BYTES:
                raise ValueError(f"{key_file} is not a noise key ({len(key)} bytes); the run cannot be resumed")
            return cls(key, SECRET)
        source = cls.secret()
        key_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(source._key, key_file)
        return source

    @property
    def is_secret(self) -> bool:
        return self.mode == SECRET

    def child(self, *names: object) -> "NoiseSource":
        """An independent source for a sub-run (e.g. one shadow run of the attack)."""
        return NoiseSource(self._digest("child", *names), self.mode)

    def seed_for(self, *names: object) -> int:
        """63 bits for one named stream (the key never leaves this object)."""
        return int.from_bytes(self._digest("stream", *names)[:8], "little") >> 1

    def generator(self, *names: object, device: torch.device | str = "cpu") -> torch.Generator:
        """A ``torch.Generator`` for one named stream (e.g. ``"match", "noise"``)."""
        generator = torch.Generator(device=device)
        generator.manual_seed(self.seed_for(*names))
        return generator

    def _digest(self, kind: str, *names: object) -> bytes:
        message = "/".join([kind, *map(str, names)]).encode()
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def __repr__(self) -> str:  # never show the key
        return f"NoiseSource(mode={self.mode!r})"

    def __reduce__(self):  # picklable for worker processes (shadow runs); only for_resumable_run writes a key
        return (NoiseSource, (self._key, self.mode))


def describe(source: NoiseSource | None) -> str:
    """One line for ``results.json["privacy"]["noise"]`` and the log."""
    if source is None or source.mode == REPRODUCIBLE:
        return ("reproducible: noise and sampling derived from the public seed (reproducible_noise=true); "
                "NOT differentially private")
    return "secret: noise and Poisson masks from per-run OS randomness, never stored"

"""Explicit, named random streams.

Each stage draws from its own ``torch.Generator`` derived from (run seed, stage name), so
adding a draw in one stage never shifts the randomness of another, and DP noise comes from
a generator the run controls (never the global RNG).
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(seed: int, *names: object) -> int:
    """A 63-bit seed that depends on the run seed and a path of names."""
    text = "/".join([str(seed), *map(str, names)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def stage_generator(seed: int, *names: object, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator for one stage (and optionally one sub-step) of a run."""
    generator = torch.Generator(device=device)
    generator.manual_seed(derive_seed(seed, *names))
    return generator

"""Noise schedules across iterations: relative multipliers stored as constant pieces.

A schedule is a tuple of ``(relative_multiplier, steps)`` pieces, run in order. The
actual noise multiplier of a piece is ``s * relative_multiplier``, where the planner
calibrates the scale ``s`` so the component's composed epsilon meets its share. The
last piece has relative multiplier 1.0, so ``s`` is the final sigma and the first piece's
sigma is about ``ratio * s``.

Continuous shapes (linear, exponential) are quantised into at most ``pieces`` constant
pieces of (nearly) equal length and the run USES the quantised sigmas, so the ledger (one
:class:`~dpgd.privacy.SubsampledGaussian` record per piece) is exactly what ran and stays
small. ``step`` drops sigma geometrically over ``phases`` equal phases.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from dpgd.errors import ConfigError

__all__ = ["SCHEDULE_KINDS", "Pieces", "relative_schedule", "schedule_from_config", "expand", "validate_pieces"]

SCHEDULE_KINDS = ("constant", "linear", "exponential", "step")
MAX_PIECES = 200

Pieces = tuple[tuple[float, int], ...]


def _split(steps: int, n: int) -> list[int]:
    """``steps`` split into ``n`` near-equal positive lengths (longer ones first)."""
    base, extra = divmod(steps, n)
    return [base + (1 if k < extra else 0) for k in range(n)]


def _merge(pieces: Sequence[tuple[float, int]]) -> Pieces:
    out: list[tuple[float, int]] = []
    for value, n in pieces:
        if n <= 0:
            continue
        if out and out[-1][0] == value:
            out[-1] = (value, out[-1][1] + n)
        else:
            out.append((float(value), int(n)))
    return tuple(out)


def relative_schedule(kind: str, steps: int, ratio: float = 3.0, phases: int = 3, pieces: int = 20) -> Pieces:
    """Relative multipliers of a decreasing schedule, from about ``ratio`` down to 1.0.

    ``kind``: constant | linear (values evenly spaced) | exponential (geometrically
    spaced) | step (``phases`` geometric drops). Raises ConfigError for bad settings.
    """
    if kind not in SCHEDULE_KINDS:
        raise ConfigError(f"noise_schedule.kind={kind!r} is unknown; choose one of {', '.join(SCHEDULE_KINDS)}")
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ConfigError(f"a noise schedule needs steps >= 1, got {steps!r}")
    steps = int(steps)
    if kind == "constant":
        return ((1.0, steps),)
    ratio = float(ratio)
    if not (math.isfinite(ratio) and ratio >= 1.0):
        raise ConfigError(
            f"noise_schedule.ratio={ratio!r} must be >= 1 (sigma_start / sigma_end of a decreasing schedule)"
        )
    if kind == "step":
        n = int(phases)
        if n < 1:
            raise ConfigError(f"noise_schedule.phases={phases!r} must be >= 1")
    else:
        n = int(pieces)
        if not (1 <= n <= MAX_PIECES):
            raise ConfigError(f"noise_schedule.pieces={pieces!r} must be in [1, {MAX_PIECES}] (ledger records)")
    n = min(n, steps)
    if n == 1:
        return ((1.0, steps),)
    values = []
    for k in range(n):
        u = k / (n - 1)
        if kind == "linear":
            values.append(ratio + (1.0 - ratio) * u)
        else:  # exponential and step: geometric spacing
            values.append(ratio ** (1.0 - u))
    values[-1] = 1.0
    return _merge(list(zip(values, _split(steps, n))))


def schedule_from_config(schedule_cfg: Any, steps: int) -> Pieces:
    """Pieces for a ``noise_schedule`` config node (None or missing = constant)."""
    if schedule_cfg is None:
        return ((1.0, int(steps)),)
    return relative_schedule(
        schedule_cfg.kind, int(steps), schedule_cfg.ratio, schedule_cfg.phases,
        int(getattr(schedule_cfg, "pieces", 20)),
    )


def relative_pieces(schedule_cfg: Any, steps: int) -> Pieces | None:
    """A component's relative noise schedule for its :class:`~dpgd.privacy.components.PrivacyNeed`:
    None for constant noise (the planner's default), else the pieces."""
    if schedule_cfg is None or steps < 1:
        return None
    pieces = schedule_from_config(schedule_cfg, steps)
    return None if len(pieces) == 1 else pieces


def validate_pieces(name: str, pieces: Sequence[tuple[float, int]], steps: int) -> Pieces:
    """Check a schedule against a component's step count; returns it as a tuple."""
    out = []
    for piece in pieces:
        try:
            value, n = piece
        except (TypeError, ValueError):
            raise ConfigError(f"component '{name}': schedule pieces are (relative_multiplier, steps), got {piece!r}") from None
        value = float(value)
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"component '{name}': relative multipliers must be finite and > 0, got {value!r}")
        if isinstance(n, bool) or int(n) != n or n < 1:
            raise ConfigError(f"component '{name}': piece steps must be integers >= 1, got {n!r}")
        out.append((value, int(n)))
    if not out:
        raise ConfigError(f"component '{name}': an empty noise schedule")
    total = sum(n for _, n in out)
    if total != steps:
        raise ConfigError(f"component '{name}': schedule pieces cover {total} steps but the component runs {steps}")
    return tuple(out)


def expand(pieces: Sequence[tuple[float, int]]) -> list[float]:
    """One value per step."""
    return [float(value) for value, n in pieces for _ in range(int(n))]

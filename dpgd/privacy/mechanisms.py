"""Privacy mechanisms as immutable records.

A record says what was released, not what was spent: the epsilon of a list of records is
computed by :mod:`dpgd.privacy.analysis`. Several records may share a component (a noise
schedule stored as runs of equal noise multiplier, or a stage that ran twice).
"""

from __future__ import annotations

import math
import operator
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from dpgd.errors import ConfigError


@dataclass(frozen=True)
class SubsampledGaussian:
    """``steps`` releases of ``f(batch) + N(0, (noise_multiplier * S)^2 I)``.

    Each batch is a Poisson sample of the records at ``sample_rate`` (1.0 = every record,
    no subsampling) and ``S`` is the L2 sensitivity of ``f`` to adding or removing one
    record; ``sensitivity`` says in words what bounds it (e.g. "L2 clip C of each record's
    embedding"). The noise std is ``noise_multiplier * S``, never ``noise_multiplier``.
    """

    component: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    sensitivity: str = "clip_norm"

    def __post_init__(self) -> None:
        if not isinstance(self.component, str) or not self.component:
            raise ConfigError(f"a mechanism needs a non-empty component name, got {self.component!r}")
        name = self.component
        try:
            sigma = float(self.noise_multiplier)
            rate = float(self.sample_rate)
        except (TypeError, ValueError):
            raise ConfigError(
                f"component '{name}': noise_multiplier and sample_rate must be numbers, got "
                f"{self.noise_multiplier!r} and {self.sample_rate!r}"
            ) from None
        if not (math.isfinite(sigma) and sigma > 0):
            raise ConfigError(
                f"component '{name}': noise_multiplier must be finite and > 0, got {sigma!r} "
                "(noise_multiplier 0 is no privacy; do not record a DP mechanism for it)"
            )
        if not (rate > 0 and rate <= 1):
            raise ConfigError(
                f"component '{name}': sample_rate must be in (0, 1], got {rate!r} "
                "(1.0 means every record is used at every step)"
            )
        if isinstance(self.steps, bool):
            raise ConfigError(f"component '{name}': steps must be an integer >= 1, got {self.steps!r}")
        try:
            steps = operator.index(self.steps)
        except TypeError:
            raise ConfigError(
                f"component '{name}': steps must be an integer >= 1, got {self.steps!r}"
            ) from None
        if steps < 1:
            raise ConfigError(f"component '{name}': steps must be >= 1, got {steps}")
        if not isinstance(self.sensitivity, str):
            raise ConfigError(f"component '{name}': sensitivity must be a string describing the bound")
        # Normalise numpy scalars to plain Python numbers so records compare and serialise.
        object.__setattr__(self, "noise_multiplier", sigma)
        object.__setattr__(self, "sample_rate", rate)
        object.__setattr__(self, "steps", int(steps))

    def noise_std(self, sensitivity_bound: float) -> float:
        """Standard deviation of the added noise for a sensitivity bound (e.g. clip norm C)."""
        return self.noise_multiplier * float(sensitivity_bound)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SubsampledGaussian":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(
                f"unknown keys {sorted(unknown)} in a mechanism record; expected {sorted(known)}"
            )
        missing = {"component", "noise_multiplier", "sample_rate", "steps"} - set(data)
        if missing:
            raise ConfigError(f"mechanism record {dict(data)!r} lacks {sorted(missing)}")
        return cls(**data)

"""The one contract every DP component follows: need -> plan -> declare -> run -> check.

1. Before any data is read, a component states its :class:`PrivacyNeed`: the Gaussian
   releases it will run (sample rate, steps, optional relative noise schedule, what bounds
   the sensitivity). The planner turns the needs into a :class:`~dpgd.privacy.NoisePlan`.
2. Before it touches data, :func:`declare_planned` declares the component's planned
   records to the run's ledger and returns the per-step noise multipliers it must use.
3. While it runs, the code that draws the noise records each release in a
   :class:`ReleaseLog` (where the noise is drawn, or in opacus's optimizer step hook,
   which fires after ``add_noise``).
4. Afterwards :meth:`ReleaseLog.check` compares the releases that ran with the declared
   records, step by step, and fails the run with "privacy bug" on any difference: a
   skipped, repeated or re-noised release is caught, not silently mis-accounted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

from dpgd.privacy.ledger import PrivacyLedger
from dpgd.privacy.mechanisms import SubsampledGaussian
from dpgd.privacy.schedules import Pieces, expand

if TYPE_CHECKING:
    from dpgd.privacy.plan import ComponentRequest, NoisePlan


@dataclass(frozen=True)
class PrivacyNeed:
    """What a component will release, known before any data is read."""

    component: str
    sample_rate: float
    steps: int
    sensitivity: str
    # Relative noise schedule ((relative multiplier, steps) pieces); None = constant.
    schedule: Pieces | None = None

    def request(self, fraction: float) -> "ComponentRequest":
        """The planner's request for this component at a share of epsilon."""
        from dpgd.privacy.plan import ComponentRequest

        return ComponentRequest(self.component, float(fraction), float(self.sample_rate), int(self.steps),
                                self.sensitivity, self.schedule)

    def mechanisms(self, noise_multiplier: float) -> tuple[SubsampledGaussian, ...]:
        """The records of running this need at one constant ``noise_multiplier``."""
        return (SubsampledGaussian(self.component, float(noise_multiplier), self.sample_rate, self.steps,
                                   self.sensitivity),)


def declare_planned(ledger: PrivacyLedger, plan: "NoisePlan", component: str,
                    release_id: str | None = None) -> list[float]:
    """Declare ``component``'s planned records to ``ledger``; return its per-step sigmas."""
    records = plan.mechanisms_for(component)
    for record in records:
        ledger.declare(record, release_id)
    return expand([(r.noise_multiplier, r.steps) for r in records])


@dataclass
class ReleaseLog:
    """The Gaussian releases a component actually drew, in order (one sigma per release)."""

    component: str
    sigmas: list[float] = field(default_factory=list)

    def record(self, noise_multiplier: float) -> None:
        self.sigmas.append(float(noise_multiplier))

    def check(self, declared: Sequence[SubsampledGaussian]) -> None:
        """Fail if the releases that ran differ from the declared records.

        A record of ``steps`` releases at sample rate q stands for ``steps`` draws at its
        multiplier; the comparison is per release, in order.
        """
        expected = expand([(r.noise_multiplier, r.steps) for r in declared if r.component == self.component])
        if len(self.sigmas) != len(expected) or any(
            abs(ran - planned) > 1e-12 * max(1.0, abs(planned)) for ran, planned in zip(self.sigmas, expected)
        ):
            raise RuntimeError(
                f"privacy bug: component '{self.component}' ran {len(self.sigmas)} Gaussian releases "
                f"({_summary(self.sigmas)}) but declared {len(expected)} ({_summary(expected)})"
            )


def _summary(sigmas: Sequence[float]) -> str:
    if not sigmas:
        return "none"
    return f"sigma {sigmas[0]:.4g} .. {sigmas[-1]:.4g}"

"""The class-count release: the one place the run learns how many records each class has.

Under add/remove adjacency the number of records N (and each N_c) is itself private: a
published exact count tells whether one record is in. Every normaliser that needs a count
(DP-MERF's class means, the matcher's expected batch q*N_c, DP-SGD's expected batch
q*N) and every data-size check (``ipc`` against the smallest class, ``delta`` against
1/N) reads the counts released here instead: the class histogram plus Gaussian noise,
released ONCE per run, before any other stage, and declared to the ledger as component
``counts``. One record changes one count by 1, so the L2 sensitivity is 1.

Why a noisy histogram and not replace-one adjacency with public counts: replace-one
doubles the sensitivity of every release (each mechanism's noise variance x4, roughly
2x epsilon), while the histogram costs a small share of the budget once (``budget.counts``)
and leaves the add/remove guarantee, the field's convention, intact.

Post-processing: the released counts are clamped to at least 1 (they are divisors).
``results.json["class_counts"]`` publishes them rounded; exact counts appear only in a
non-private run (``epsilon=inf``), where nothing is DP.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dpgd.privacy.components import PrivacyNeed, ReleaseLog

COMPONENT = "counts"
SENSITIVITY_TEXT = "one record changes one class count by 1: L2 sensitivity 1"


@dataclass(frozen=True)
class ClassCounts:
    """Per-class record counts as the run may use them (noisy unless the run is non-private)."""

    values: torch.Tensor  # float32 (num_classes,), each >= 1
    noisy: bool
    noise_std: float = 0.0  # std of the Gaussian noise on each count (0 when exact)

    @property
    def total(self) -> float:
        return float(self.values.sum())

    def smallest(self) -> tuple[int, float]:
        """Index and (released) size of the smallest class."""
        index = int(self.values.argmin())
        return index, float(self.values[index])

    def to_payload(self) -> dict[str, object]:
        """The full state (for a run's checkpoint; ``to_dict`` is the published form)."""
        return {"values": self.values.clone(), "noisy": self.noisy, "noise_std": self.noise_std}

    @classmethod
    def from_payload(cls, data: dict) -> "ClassCounts":
        return cls(data["values"], bool(data["noisy"]), float(data["noise_std"]))

    def to_dict(self) -> dict[str, object]:
        """The published form: rounded counts (post-processing of the noisy release)."""
        return {
            "per_class": [int(round(float(v))) for v in self.values],
            "total": int(round(self.total)),
            "noisy": self.noisy,
        }


def privacy_request() -> PrivacyNeed:
    """The count release: one Gaussian release of the whole histogram."""
    return PrivacyNeed(COMPONENT, 1.0, 1, SENSITIVITY_TEXT)


def release_class_counts(
    labels: torch.Tensor, num_classes: int, noise_multiplier: float | None, generator: torch.Generator,
    releases: ReleaseLog | None = None,
) -> ClassCounts:
    """The Gaussian release of the class histogram (``None`` = non-private run: exact counts).

    Noise is drawn once, on the CPU, from ``generator`` (a secret stream) and added in place:
    the clean histogram does not survive this function.
    """
    counts = torch.bincount(labels.cpu(), minlength=num_classes).to(torch.float32)
    if noise_multiplier is None:
        return ClassCounts(counts.clamp_(min=1.0), noisy=False)
    counts.add_(torch.randn(counts.shape, generator=generator), alpha=float(noise_multiplier))
    if releases is not None:
        releases.record(noise_multiplier)
    return ClassCounts(counts.clamp_(min=1.0), noisy=True, noise_std=float(noise_multiplier))

"""The generator interface: say what will be released, then fit and sample a pool.

A DP generator declares its Gaussian release BEFORE it sees data
(:meth:`PoolGenerator.privacy_request`: sample rate, steps, what bounds the sensitivity),
so the budget planner can calibrate its noise multiplier at the start of the run. Given
that multiplier it then builds exactly the :class:`SubsampledGaussian` records it will run
(:meth:`PoolGenerator.mechanisms`), which the stage declares to the ledger before calling
:meth:`PoolGenerator.fit_and_sample`. The :class:`Pool` it returns carries the same
records, so a cached pool can be accounted for without refitting.

Neighbouring relation: add/remove one record (see :mod:`dpgd.privacy`).
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import torch

from dpgd.config import GeneratorConfig
from dpgd.counts import ClassCounts
from dpgd.data import ImageDataset
from dpgd.errors import ConfigError
from dpgd.privacy import SubsampledGaussian
from dpgd.privacy.components import PrivacyNeed, ReleaseLog
from dpgd.privacy.randomness import NoiseSource
from dpgd.tracking import Curve

# The component name every generator mechanism is recorded under (the budget's key).
GENERATOR_COMPONENT = "generator"


@dataclass
class Pool:
    """Generated images (normalised like the data set, on the CPU) and their labels.

    ``mechanisms`` are exactly the DP releases that produced the pool (empty for a
    non-private pool); ``synthetic`` is False when the pool holds private images
    (``generator=real``), which must then never be logged. ``info`` holds metrics computed
    from DP outputs only (fit seconds, losses), never statistics of the private data.
    """

    images: torch.Tensor
    labels: torch.Tensor
    mechanisms: tuple[SubsampledGaussian, ...] = ()
    synthetic: bool = True
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.dim() != 4:
            raise ValueError(f"pool images must be (N, C, H, W), got shape {tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"pool labels must be int64 of shape ({self.images.shape[0]},), "
                f"got {self.labels.dtype} {tuple(self.labels.shape)}"
            )
        self.mechanisms = tuple(self.mechanisms)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def for_class(self, label: int) -> torch.Tensor:
        return self.images[self.labels == label]

    def class_counts(self, num_classes: int) -> torch.Tensor:
        return torch.bincount(self.labels, minlength=num_classes)

    def to_payload(self) -> dict[str, Any]:
        """Plain tensors, lists and strings (loadable with ``torch.load(weights_only=True)``)."""
        return {
            "images": self.images.detach().cpu(),
            "labels": self.labels.detach().cpu(),
            "mechanisms": [m.to_dict() for m in self.mechanisms],
            "synthetic": self.synthetic,
            "info": json.loads(json.dumps(self.info, default=str)),
        }

    @classmethod
    def from_payload(cls, data: Mapping[str, Any]) -> "Pool":
        mechanisms = tuple(SubsampledGaussian.from_dict(m) for m in data["mechanisms"])
        return cls(data["images"], data["labels"], mechanisms, bool(data["synthetic"]), dict(data["info"]))


class PoolGenerator(ABC):
    """One way of producing a pool; subclasses set ``name`` and read ``cfg.<name>``."""

    name: ClassVar[str]
    # True when the pool is the private data itself (generator=real): epsilon=inf only.
    non_private_only: ClassVar[bool] = False
    # Whether a fitted pool may be stored in the pool cache.
    cacheable: ClassVar[bool] = True
    # The run's public knowledge (dpgd.public), set by the stage when the run has it;
    # generators that use none ignore it.
    public: Any = None

    def __init__(self, cfg: GeneratorConfig, progress: bool = True, curve: Curve | None = None) -> None:
        self.cfg = cfg
        self.progress = progress
        # Step curve of the fit (losses against the released statistics: post-processing).
        self.curve = curve
        if cfg.pool_per_class < 1:
            raise ConfigError(
                f"generator.pool_per_class={cfg.pool_per_class} must be at least 1 for generator={self.name}."
            )
        self.pool_per_class = cfg.pool_per_class

    @abstractmethod
    def privacy_request(self) -> PrivacyNeed | None:
        """The DP release this generator will run, or None if it runs none."""

    def mechanisms(self, noise_multiplier: float | None) -> tuple[SubsampledGaussian, ...]:
        """The records :meth:`fit_and_sample` will run at ``noise_multiplier``.

        ``None`` means a non-private run (epsilon=inf): the generator adds no noise and
        records nothing. The stage refuses ``None`` in a private run.
        """
        need = self.privacy_request()
        if need is None or noise_multiplier is None:
            return ()
        return need.mechanisms(float(noise_multiplier))

    @abstractmethod
    def fit_and_sample(
        self, dataset: ImageDataset, noise_multiplier: float | None, seed: int, device: torch.device,
        *, noise: NoiseSource, counts: ClassCounts, releases: ReleaseLog | None = None,
    ) -> Pool:
        """Fit on ``dataset`` with noise ``noise_multiplier`` and sample the pool.

        Noise and Poisson masks of the DP release come from ``noise`` (secret per run);
        ``seed`` drives only public randomness (initial weights, latents, sampling the
        pool). Any class count comes from ``counts`` (the run's noisy histogram). Every
        Gaussian release drawn is recorded in ``releases`` (the stage checks it against
        the declared records).
        """


def check_multiplier(name: str, noise_multiplier: float | None) -> float:
    """Noise multiplier as a float; 0.0 stands for None (a non-private run, no noise)."""
    if noise_multiplier is None:
        return 0.0
    sigma = float(noise_multiplier)
    if not (math.isfinite(sigma) and sigma > 0):
        raise ConfigError(
            f"generator={name}: noise multiplier must be finite and > 0 (or None for epsilon=inf), got {sigma!r}"
        )
    return sigma


def to_tanh_space(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Normalised images -> pixels in [-1, 1] (the range a tanh decoder produces)."""
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images * s + m) * 2.0 - 1.0


def from_tanh_space(pixels: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Pixels in [-1, 1] -> the data set's normalised space (inverse of :func:`to_tanh_space`)."""
    m = torch.tensor(mean, dtype=pixels.dtype, device=pixels.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=pixels.dtype, device=pixels.device).view(1, -1, 1, 1)
    return ((pixels + 1.0) * 0.5 - m) / s

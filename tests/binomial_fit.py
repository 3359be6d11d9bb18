"""Goodness of fit of Poisson-sampled batch sizes to Binomial(N, q) (tests only).

The mean batch size is checked with a z-test and its dispersion (the sum of squared
standardised sizes) against its chi-square law, both two-sided at ``level``: a halved or
ignored q moves the mean by many standard errors, fixed-size batches have no dispersion.
"""

from __future__ import annotations

import math

import torch
from scipy.stats import chi2, norm


def assert_binomial(sizes: torch.Tensor, population: torch.Tensor, q: float, level: float = 1e-4) -> None:
    """``sizes`` (draws, groups): column g is Binomial(population[g], q), draws independent."""
    sizes, population = sizes.double(), population.double()
    expected, variance = population * q, population * q * (1 - q)
    standardised = (sizes - expected) / variance.sqrt()
    draws = standardised.numel()
    z = float(standardised.sum()) / math.sqrt(draws)
    assert abs(z) < norm.isf(level / 2), f"mean batch size off by {z:.1f} standard errors (q={q})"
    dispersion = float(standardised.pow(2).sum())
    low, high = chi2.ppf(level / 2, draws), chi2.isf(level / 2, draws)
    assert low < dispersion < high, f"batch-size dispersion {dispersion:.0f} outside [{low:.0f}, {high:.0f}]"

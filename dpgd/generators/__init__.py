"""DP generators: build a synthetic pool from the private data under a share of the budget.

``generator=none`` (no pool), ``real`` (the private data, epsilon=inf only), ``dp_merf``
(one Gaussian release of a random-feature mean embedding), ``dp_sgd`` (a conditional VAE
trained with DP-SGD) and ``pe`` (Private Evolution over public candidates).

For the run: :func:`privacy_request` (budget planning, before any data is read),
:func:`generate_pool` (the stage: declares the mechanisms, fits or loads the cached pool)
and :func:`pool_report` (pool accuracy and grid, reporting only).
"""

from dpgd.generators.base import GENERATOR_COMPONENT, Pool, PoolGenerator
from dpgd.privacy.components import PrivacyNeed
from dpgd.generators.registry import GENERATOR_NAMES, GENERATORS, build_generator, privacy_request
from dpgd.generators.stage import declare_pool, generate_pool, pool_report

__all__ = [
    "GENERATOR_COMPONENT",
    "GENERATOR_NAMES",
    "GENERATORS",
    "Pool",
    "PoolGenerator",
    "PrivacyNeed",
    "build_generator",
    "declare_pool",
    "generate_pool",
    "pool_report",
    "privacy_request",
]

"""Feature matching (the ``matcher`` group): DP feature matching (NDPDC) and DM.

One iteration of ``dp_feature`` is one Poisson-subsampled Gaussian mechanism over the whole
train set: every record joins the batch with probability q, each real embedding is clipped
to L2 norm C, embeddings are summed per class (classes are disjoint, so one record touches
one sum), and N(0, (sigma*C)^2 I) is added to every class sum once. Only the noisy sums
leave :func:`~dpgd.matching.release.release_noisy_class_sums`; the clean sums are
overwritten in place and never stored. The noisy sum is divided by the expected batch size q*N_c, with N_c the run's
released (noisy) class count (:mod:`dpgd.counts`). Poisson masks and noise come from the
run's secret :class:`~dpgd.privacy.randomness.NoiseSource`; DSA parameters and the
extractors from the public seed.

``dm`` is the same loop with a fixed number of real images per class, no clipping and no
noise: the non-private upper bound.

Synthetic embeddings go through the same clipping as the real ones, so both sides of the
matching loss live in the same space (a deterministic map, no privacy cost).

Modules: ``extractors`` (the networks matched through), ``release`` (batch sampling and
the Gaussian mechanism: everything that reads private records), ``loop`` (the matching
loop and its two class targets), ``to_pool`` (DM of an initial selection to its DP pool:
post-processing).
"""

from dpgd.matching.extractors import ExtractorSource, PoolTrainedExtractors, RandomExtractors
from dpgd.matching.loop import DmTarget, DpTarget, LoopCheckpoint, MatchingStats, match
from dpgd.matching.to_pool import match_to_pool
from dpgd.matching.release import (
    NoiseSpec,
    class_means,
    clip_rows,
    fixed_per_class_batches,
    noise_schedule_fn,
    poisson_batches,
    privacy_request,
    release_noisy_class_sums,
)

__all__ = [
    "DmTarget",
    "DpTarget",
    "ExtractorSource",
    "LoopCheckpoint",
    "MatchingStats",
    "NoiseSpec",
    "PoolTrainedExtractors",
    "RandomExtractors",
    "class_means",
    "clip_rows",
    "fixed_per_class_batches",
    "match",
    "match_to_pool",
    "noise_schedule_fn",
    "poisson_batches",
    "privacy_request",
    "release_noisy_class_sums",
]

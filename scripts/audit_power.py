"""How often the canary audits catch a mechanism whose noise is scaled by a factor f while
the ledger claims sigma (the table in docs/privacy-audit.md).

The game of tests/test_audit.py on the real count release (or the matcher's class-sum
release): a class histogram of 200 digits with and without one canary record, each
release with fresh seeded noise at f x sigma, the score normalised so the canary moves it
by 1. Per repetition, 500 releases per side; the GDP audit (dpgd.mia.audit.audit_release_gdp's
bound, threshold 0.5) uses all of them, the threshold audit (epsilon at delta 1e-5,
dpgd.mia.audit.epsilon_lower_bound) the first 300 per side, as the tests do. A detection is
a bound above the claim: mu > 1/sigma, or epsilon > the ledger's epsilon for one release.

    python scripts/audit_power.py --mechanism counts --repetitions 200
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from dpgd.config import DatasetConfig
from dpgd.counts import release_class_counts
from dpgd.data import load_dataset
from dpgd.matching.release import clip_rows, release_noisy_class_sums
from dpgd.mia.audit import epsilon_lower_bound, gdp_lower_bound
from dpgd.privacy import analysis
from dpgd.privacy.mechanisms import SubsampledGaussian

DELTA = 1e-5


def game(mechanism: str, digits):
    """score(canary_in, sigma, generator): the normalised statistic of one release."""
    labels = digits.train_labels[:200]
    if mechanism == "counts":
        with_canary = torch.cat([labels, torch.tensor([0])])
        clean = float((labels == 0).sum())

        def score(canary_in: bool, sigma: float, generator: torch.Generator) -> float:
            released = release_class_counts(with_canary if canary_in else labels, digits.num_classes, sigma, generator)
            return float(released.values[0]) - clean

        return score
    embeddings = digits.train_images[:200].flatten(1)
    canary, canary_label = digits.train_images[200:201].flatten(1), int(digits.train_labels[200])
    direction = clip_rows(canary, 1.0)[0]
    base = float(release_noisy_class_sums(embeddings, labels, digits.num_classes, 1.0, 0.0,
                                          torch.Generator())[canary_label] @ direction)
    rows, names = torch.cat([embeddings, canary]), torch.cat([labels, torch.tensor([canary_label])])

    def score(canary_in: bool, sigma: float, generator: torch.Generator) -> float:
        sums = release_noisy_class_sums(rows if canary_in else embeddings, names if canary_in else labels,
                                        digits.num_classes, 1.0, sigma, generator)
        return float(sums[canary_label] @ direction) - base

    return score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mechanism", choices=("counts", "matcher"), default="counts")
    parser.add_argument("--sigma", type=float, default=2.0)
    parser.add_argument("--factors", type=float, nargs="+", default=[1.0, 0.9, 0.75, 0.6, 0.5, 0.25, 0.05])
    parser.add_argument("--repetitions", type=int, default=200)
    parser.add_argument("--trials", type=int, default=500, help="releases per side for the GDP audit")
    parser.add_argument("--threshold-trials", type=int, default=300, help="releases per side, threshold audit")
    args = parser.parse_args()
    torch.set_num_threads(1)
    digits = load_dataset(DatasetConfig(name="digits"))
    score = game(args.mechanism, digits)
    claimed_mu = 1.0 / args.sigma
    claimed_eps = analysis.compose_epsilon([SubsampledGaussian("audit", args.sigma, 1.0, 1, "C")], DELTA)
    started = time.perf_counter()
    print(f"{args.mechanism}: sigma {args.sigma} claimed (mu {claimed_mu:.3g}, epsilon {claimed_eps:.3g} at delta "
          f"{DELTA:g}); {args.repetitions} repetitions")
    print("noise factor | true mu | GDP audit detects | threshold audit detects | mean mu bound")
    for factor in args.factors:
        gdp_hits = eps_hits = 0
        bounds = []
        for repetition in range(args.repetitions):
            generator = torch.Generator().manual_seed(int(1e6 * factor) * 1000 + repetition)
            scores_in = np.array([score(True, factor * args.sigma, generator) for _ in range(args.trials)])
            scores_out = np.array([score(False, factor * args.sigma, generator) for _ in range(args.trials)])
            mu = gdp_lower_bound(scores_in, scores_out, 0.5).mu_lower_bound
            bounds.append(mu)
            gdp_hits += mu > claimed_mu
            half = args.threshold_trials // 2
            eps = epsilon_lower_bound(scores_in[:half], scores_out[:half], scores_in[half:args.threshold_trials],
                                      scores_out[half:args.threshold_trials], DELTA).epsilon_lower_bound
            eps_hits += eps > claimed_eps
        print(f"{factor:g} | {1 / (factor * args.sigma):.3g} | {gdp_hits / args.repetitions:.1%} | "
              f"{eps_hits / args.repetitions:.1%} | {np.mean(bounds):.3f}", flush=True)
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()

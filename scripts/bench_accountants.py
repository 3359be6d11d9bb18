"""Reported epsilon, planning time and the other accountants on the presets' planned ledgers.

    python scripts/bench_accountants.py [--epsilons 1 10] [--presets dpgeng ndpdc]

For each data set (digits, cifar10-mini), preset and target epsilon: the time to plan the
run (noise calibration, PLD), then the plan's records (counts, generator, expert, matcher)
composed by the reported accountant (dp-accounting PLD, pessimistic, at dpgd's default
discretisation), PLD at a fixed fine interval of 1e-5, a plain opacus PRV accountant
(upper bound at eps_error 0.5 % of epsilon) and opacus
RDP (the cross-check). Prints a markdown table: epsilon and seconds per accountant.
Planning needs no data.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from opacus.accountants import PRVAccountant

from dpgd.budget import plan_run
from dpgd.config import compose, typed
from dpgd.privacy import analysis
from dpgd.report import dataset_overrides


def opacus_prv(mechanisms, delta: float) -> float:
    """A plain opacus PRV accountant: its upper bound at eps_error = 0.5 % of epsilon."""
    accountant = PRVAccountant()
    accountant.history = [(m.noise_multiplier, m.sample_rate, m.steps) for m in mechanisms]
    eps_error = max(0.005 * analysis.rdp_epsilon(mechanisms, delta), 1e-3)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return float(accountant.get_epsilon(delta=delta, eps_error=eps_error))


def timed(fn):
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 10.0])
    parser.add_argument("--presets", nargs="+", default=["dpgeng", "ndpdc"])
    parser.add_argument("--datasets", nargs="+", default=["digits", "cifar10-mini"])
    args = parser.parse_args()
    print("| data set | preset | target | records | plan s | PLD (reported) | interval | s "
          "| PLD 1e-5 | s | PRV (opacus) | s | RDP | s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for dataset in args.datasets:
        for preset in args.presets:
            for epsilon in args.epsilons:
                cfg = typed(compose(*dataset_overrides(dataset), f"experiment={preset}", f"epsilon={epsilon}"))
                plan, plan_s = timed(lambda: plan_run(cfg))
                mechs, delta = plan.mechanisms, cfg.delta
                pld, pld_s = timed(lambda: analysis.pld_epsilon(mechs, delta))
                fine, fine_s = timed(lambda: analysis.pld_epsilon(mechs, delta, 1e-5))
                prv, prv_s = timed(lambda: opacus_prv(mechs, delta))
                rdp, rdp_s = timed(lambda: analysis.rdp_epsilon(mechs, delta))
                cells = [f"{plan_s:.2f}", f"{pld:.4f}", f"{analysis.pld_interval(mechs, delta):.1e}", f"{pld_s:.2f}",
                         f"{fine:.4f}", f"{fine_s:.2f}", f"{prv:.4f}", f"{prv_s:.2f}", f"{rdp:.4f}", f"{rdp_s:.2f}"]
                print(f"| {dataset} | {preset} | {epsilon:g} | {len(mechs)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

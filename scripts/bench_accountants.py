"""Reported epsilon and time of three accountants on the presets' planned ledgers.

    python scripts/bench_accountants.py [--epsilons 1 10] [--presets dpgeng ndpdc]

For each data set (digits, cifar10-mini), preset and target epsilon, the plan's records
(counts, generator, expert, matcher) are composed by opacus PRV (the reported epsilon
today, with dpgd's domain override), Google's dp-accounting PLD (connect-the-dots, at two
discretisations) and opacus RDP (the cross-check). Prints a markdown table: epsilon and
seconds per accountant. Planning needs no data. dp-accounting is optional: ``pip install
dp-accounting``; without it the PLD columns say so.
"""

from __future__ import annotations

import argparse
import importlib.util
import time

from dpgd.budget import plan_run
from dpgd.config import compose, typed
from dpgd.privacy import analysis
from dpgd.report import dataset_overrides


def pld_epsilon(mechanisms, delta: float, discretization: float) -> float:
    """dp-accounting's PLD accountant (add/remove adjacency, as opacus) over the records."""
    import dp_accounting
    from dp_accounting.pld import pld_privacy_accountant

    accountant = pld_privacy_accountant.PLDAccountant(value_discretization_interval=discretization)
    for m in mechanisms:
        event = dp_accounting.GaussianDpEvent(m.noise_multiplier)
        if m.sample_rate < 1:
            event = dp_accounting.PoissonSampledDpEvent(m.sample_rate, event)
        accountant.compose(dp_accounting.SelfComposedDpEvent(event, m.steps))
    return float(accountant.get_epsilon(delta))


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
    have_pld = importlib.util.find_spec("dp_accounting") is not None
    print("| data set | preset | target | records | PRV (opacus) | s | PLD 1e-4 | s | PLD 1e-3 | s | RDP | s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for dataset in args.datasets:
        for preset in args.presets:
            for epsilon in args.epsilons:
                cfg = typed(compose(*dataset_overrides(dataset), f"experiment={preset}", f"epsilon={epsilon}"))
                plan = plan_run(cfg)
                mechs, delta = plan.mechanisms, cfg.delta
                prv, prv_s = timed(lambda: analysis.prv_epsilon(mechs, delta))
                rdp, rdp_s = timed(lambda: analysis.rdp_epsilon(mechs, delta))
                cells = [f"{prv:.4f}", f"{prv_s:.2f}"]
                for interval in (1e-4, 1e-3):
                    if have_pld:
                        pld, pld_s = timed(lambda: pld_epsilon(mechs, delta, interval))
                        cells += [f"{pld:.4f}", f"{pld_s:.2f}"]
                    else:
                        cells += ["not installed", "-"]
                cells += [f"{rdp:.4f}", f"{rdp_s:.2f}"]
                print(f"| {dataset} | {preset} | {epsilon:g} | {len(mechs)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

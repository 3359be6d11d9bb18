"""Compare noise schedules for DP feature matching (constant vs decaying sigma).

    python scripts/compare_schedules.py --epsilon 1 --ipc 10 --seeds 0 1 2
    python scripts/compare_schedules.py --dataset cifar10-mini --kinds constant exponential step

Every (schedule, seed) runs ``dpgd.train.run`` in this process with the same preset
(default ``experiment=ndpdc`` on digits: the whole budget on matching, so the schedule is
the only difference) and the same total (epsilon, delta). Prints a markdown table of test
accuracy (mean +- std over seeds), the composed epsilon and the first/last sigma, and writes
it with every run's numbers into --out. Nothing is selected on the test set. Resumable like
``compare_methods.py``: a finished run made with the same resolved config is read back.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
from pathlib import Path

from dpgd.report import DATASETS, dataset_overrides, run_or_reuse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits", help=f"one of {', '.join(DATASETS)} or a folder (imagefolder)")
    parser.add_argument("--epsilon", type=float, default=1.0)
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--kinds", nargs="+", default=["constant", "exponential"],
                        choices=["constant", "linear", "exponential", "step"])
    parser.add_argument("--ratio", type=float, default=3.0)
    parser.add_argument("--experiment", default="ndpdc")
    parser.add_argument("--set", nargs="*", default=[], help="extra Hydra overrides for every run")
    parser.add_argument("--out", type=Path, default=Path("outputs/compare_schedules"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    dataset = dataset_overrides(args.dataset)
    args.out.mkdir(parents=True, exist_ok=True)
    rows, runs = [], []
    for kind in args.kinds:
        accs, eps, seconds = [], [], []
        sigmas = (float("nan"), float("nan"))
        for seed in args.seeds:
            overrides = [*dataset, f"experiment={args.experiment}", "logger=none", f"epsilon={args.epsilon}", f"ipc={args.ipc}",
                         f"seed={seed}", f"matcher.noise_schedule.kind={kind}",
                         f"matcher.noise_schedule.ratio={args.ratio}", *args.set]
            results, run_seconds, reused = run_or_reuse(overrides, args.out / f"{kind}_seed{seed}")
            seconds.append(run_seconds)
            privacy = results["privacy"]
            matcher = [m for m in privacy["mechanisms"] if m["component"] == "matcher"]
            sigmas = (matcher[0]["noise_multiplier"], matcher[-1]["noise_multiplier"])
            accs.append(float(results["test_acc_mean"]))
            eps.append(privacy["epsilon"])
            runs.append({"kind": kind, "seed": seed, "test_acc_mean": results["test_acc_mean"],
                         "epsilon": privacy["epsilon"], "matcher_records": len(matcher),
                         "sigma_first": sigmas[0], "sigma_last": sigmas[1], "seconds": seconds[-1],
                         "overrides": overrides})
            print(f"{kind} seed {seed}: {results['test_acc_mean']:.2f}% at epsilon {privacy['epsilon']:.3f} "
                  f"({seconds[-1]:.0f} s{', reused' if reused else ''})", flush=True)
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        rows.append(f"| {kind} | {sigmas[0]:.2f} -> {sigmas[1]:.2f} | {max(eps):.3f} | "
                    f"{statistics.mean(accs):.2f} +- {std:.2f} | {statistics.mean(seconds):.0f} |")
    table = "\n".join([
        f"{args.dataset}, epsilon={args.epsilon:g}, IPC {args.ipc}, experiment={args.experiment}, seeds {args.seeds}, "
        f"ratio {args.ratio:g}; extra: {' '.join(args.set) or '-'}",
        "",
        "| schedule | matcher sigma first -> last | epsilon (max over seeds) | test acc % (mean +- std over seeds) | s / run |",
        "|---|---|---|---|---|",
        *rows,
    ])
    print("\n" + table)
    (args.out / "schedules.md").write_text(table + "\n")
    (args.out / "schedules.json").write_text(json.dumps(runs, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Compare DP-GenG with NDPDC, DM, generator-only and the ablations on one data set.

    python scripts/compare_methods.py --dataset digits --epsilons 1 10 --ipc 10 --seeds 0 1 2
    python scripts/compare_methods.py --dataset cifar10-mini --epsilons 1 10 --set evaluation.epochs=100
    python scripts/compare_methods.py --dataset cifar10-mini --methods dpgeng_public ndpdc_public \
        generator_only_public ndpdc --set public.root=../shared/data/public32

Runs every (method, epsilon, seed) in this process with the packaged configs, prints a
markdown table of test accuracy (mean +- std over seeds) and epsilon spent per method, and
writes it (with every run's numbers) as JSON and markdown into --out. Nothing is selected
on the test set: each method runs with its preset's settings.

Resumable: a run whose folder already holds results made with the same resolved config is
read back, not rerun. So several processes can split the work (e.g. one per epsilon, with
the same --out) and a last call with everything prints the whole table.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from dpgd.report import DATASETS, RunRecord, aggregate, dataset_overrides, markdown_table, read_diagnostics, run_or_reuse
from dpgd.results import release_dir, to_json

METHODS = {
    "dpgeng": ["experiment=dpgeng"],
    "ndpdc": ["experiment=ndpdc"],
    "dm": ["experiment=dm"],
    "generator_only": ["experiment=dpgeng_init_only"],
    "dpgeng_match_only": ["experiment=dpgeng_match_only"],
    "dpgeng_no_expert": ["experiment=dpgeng_no_expert"],
    # Public knowledge (public=folder): pass --set public.root=<public images>.
    "dpgeng_public": ["experiment=dpgeng_public"],
    "ndpdc_public": ["experiment=ndpdc_public"],
    "generator_only_public": ["experiment=dpgeng_public_init_only"],
}
# Methods that need public.root (the others ignore it, so --set public.root=... fits all).
PUBLIC = {"dpgeng_public", "ndpdc_public", "generator_only_public"}
NON_PRIVATE = {"dm"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits", help=f"one of {', '.join(DATASETS)} or a folder (imagefolder)")
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 10.0])
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=[m for m in METHODS if m not in PUBLIC], choices=list(METHODS),
                        help="default: every method without public knowledge")
    parser.add_argument("--set", nargs="*", default=[], help="extra Hydra overrides for every run")
    parser.add_argument("--out", type=Path, default=Path("outputs/compare"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    dataset = dataset_overrides(args.dataset)
    args.out.mkdir(parents=True, exist_ok=True)
    records: list[RunRecord] = []
    runs_json = []
    # Seed-major, so a run cut short still has every method at its first seeds.
    for seed in args.seeds:
        for method in args.methods:
            epsilons = [float("inf")] if method in NON_PRIVATE else args.epsilons
            for epsilon in epsilons:
                overrides = [*dataset, *METHODS[method], f"epsilon={epsilon}", f"ipc={args.ipc}", f"seed={seed}",
                             "logger=none", f"method={method}", *args.set]
                folder = args.out / f"{method}_eps{epsilon:g}_seed{seed}"
                results, seconds, reused = run_or_reuse(overrides, folder)
                records.append(RunRecord(release_dir(folder), results))
                runs_json.append({"method": method, "epsilon_target": epsilon, "seed": seed, "seconds": seconds,
                                  "test_acc_mean": results["test_acc_mean"], "epsilon_spent": results["privacy"]["epsilon"],
                                  "timings_s": read_diagnostics(folder).get("timings_s", {}),
                                  "stages": results.get("stages", {})})
                print(f"{method:18s} eps={epsilon:<5g} seed={seed}: {results['test_acc_mean']:6.2f} % "
                      f"(eps spent {results['privacy']['epsilon']:.3g}, {seconds:.0f} s{', reused' if reused else ''})",
                      flush=True)
    rows = aggregate(records)
    table = markdown_table(rows)
    print("\n" + table)
    (args.out / "comparison.md").write_text(table)
    payload = {"dataset": args.dataset, "ipc": args.ipc, "seeds": args.seeds, "overrides": args.set,
               "rows": [row.__dict__ for row in rows], "runs": runs_json}
    (args.out / "comparison.json").write_text(to_json(payload) + "\n")


if __name__ == "__main__":
    main()

"""Benchmark the membership-inference stage on digits (CPU): cost, and leakage per method.

1. Cost: time per run of the pipeline (distill + attack models + query) and for the whole
   LiRA attack at K=4 and K=16 runs (in-process, and K=16 on 2 worker processes), on
   NDPDC at epsilon 1.
2. Leakage: AUC and TPR at 0.1% / 1% FPR (LiRA online and offline) at K=8 for the leaky
   baseline (real images released), DM with real init (non-private), NDPDC and, when
   ``experiment=dpgeng`` exists, DP-GenG at epsilon 1; with ``--rest`` also DM, NDPDC and
   DP-GenG with each run's private set at the release's scale (``mia.include_rest=true``).

Every attack faces the same settings (printed first), shortened to fit ~10 minutes on 2
CPU cores: population 400 (20 records per class, 10 members per run per class, so DM's
real init of ipc=10 does not already equal the member set), 100 matching iterations,
100-epoch attack models; DP-GenG shortened as DPGENG says. Runs use one torch thread
each (tiny models; on shared cores a second intra-op thread only waits).

Example (about 9 minutes on 2 shared CPU cores; 14 with --rest):
    python scripts/bench_mia.py
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from dpgd.config import compose
from dpgd.data import load_dataset
from dpgd.mia.stage import run_attack
from dpgd.tracking import Tracker

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SHARED = ["logger=none", "mia=lira", "mia.population=400", "mia.epochs=100", "mia.eval_models=1"]
NDPDC = ["experiment=ndpdc", "epsilon=1", "matcher.iterations=100"]
DM = ["experiment=dm", "init=real", "matcher.iterations=100"]
# DP-GenG shortened to ~15 s a run on one core (its defaults take minutes): fewer DP-MERF
# steps, a smaller pool, shorter pool-net / expert training, 50 matching iterations.
DPGENG = ["experiment=dpgeng", "epsilon=1", "matcher.iterations=50", "generator.dp_merf.steps=150",
          "generator.pool_per_class=100", "pool_nets.epochs=10", "expert.steps=100"]
REST = "mia.include_rest=true"  # the release's scale: members + the 1037 records outside the population
METHODS = [
    ("leaky baseline (real images, eps=inf)", ["experiment=leaky_baseline"]),
    ("DM, real init (eps=inf)", DM),
    ("NDPDC (eps=1)", NDPDC),
    ("DP-GenG (eps=1)", DPGENG),
]
# --rest: the same at the release's scale (about 5 more minutes).
REST_METHODS = [
    ("DM, real init, + rest (eps=inf)", [*DM, REST]),
    ("NDPDC, + rest (eps=1)", [*NDPDC, REST]),
    ("DP-GenG, + rest (eps=1)", [*DPGENG, REST]),
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=1, help="parallel shadow processes for the leakage table")
    parser.add_argument("--shadows", type=int, default=8, help="K of the leakage table (8 keeps it ~10 min)")
    parser.add_argument("--rest", action="store_true", help="add rows with mia.include_rest=true (~5 min more)")
    parser.add_argument("--out", type=Path, default=None, help="keep the attack folders here (default: a temp dir)")
    return parser.parse_args()


def attack(overrides: list[str], folder: Path, dataset) -> dict:
    cfg = compose(*SHARED, *overrides)
    return run_attack(cfg, dataset, torch.device("cpu"), folder, Tracker(), progress=False)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    root = args.out or Path(tempfile.mkdtemp(prefix="bench_mia_"))
    dataset = load_dataset(compose("logger=none").dataset)
    print(f"settings: digits ({dataset.num_train} train records), {' '.join(SHARED)}, evaluation protocol "
          f"otherwise (batch 256, DSA); torch threads 1; folders under {root}")
    methods = METHODS + (REST_METHODS if args.rest else [])
    for name, overrides in methods:
        print(f"  {name}: {' '.join(overrides)}")
    print()

    print("| attack | runs | workers | s / run | whole attack (s) |")
    print("|---|---|---|---|---|")
    for runs, workers in ((4, 1), (16, 1), (16, 2)):
        started = time.perf_counter()
        result = attack([*NDPDC, f"mia.num_shadow={runs}", f"mia.workers={workers}"],
                        root / f"timing_k{runs}_w{workers}", dataset)
        print(f"| NDPDC eps=1, LiRA | {runs} | {workers} | {result['seconds_per_run']:.1f} "
              f"| {time.perf_counter() - started:.1f} |", flush=True)

    print("\n| method | variant | AUC | TPR@0.1% FPR | TPR@1% FPR | balanced acc | run test acc % |")
    print("|---|---|---|---|---|---|---|")
    for name, overrides in methods:
        experiment = overrides[0].split("=", 1)[1]
        if not (CONFIGS / "experiment" / f"{experiment}.yaml").is_file():
            print(f"| {name} | skipped: no configs/experiment/{experiment}.yaml | | | | | |", flush=True)
            continue
        folder = root / name.split(" (")[0].replace(" ", "_").replace(",", "").replace("+", "plus")
        result = attack([*overrides, f"mia.num_shadow={args.shadows}", f"mia.workers={args.workers}"], folder, dataset)
        for variant, metrics in result["variants"].items():
            print(f"| {name} | {variant} | {metrics['auc']:.3f} | {metrics['tpr_at_0.1pct_fpr']:.3f} "
                  f"| {metrics['tpr_at_1pct_fpr']:.3f} | {metrics['balanced_accuracy']:.3f} "
                  f"| {result['run_test_acc_mean']:.1f} |", flush=True)
    print(f"\n{args.shadows} runs x 400 records = {args.shadows * 400} scored pairs per row "
          f"({args.shadows * 200} members): TPR at 0.1% FPR rests on ~{args.shadows * 200 / 1000:.1f} "
          "false positives, so read it as a coarse figure.")


if __name__ == "__main__":
    main()

"""Benchmark the membership-inference stage on digits (CPU): cost, and leakage per method.

1. Cost: time per run of the pipeline (distill + attack models + query) and for the whole
   LiRA attack at K=4 and K=16 runs, on NDPDC at epsilon 1.
2. Leakage: AUC and TPR at 0.1% / 1% FPR (LiRA online and offline) at K=16 for the leaky
   baseline (real images released), DM with real init (non-private), NDPDC and, when
   ``experiment=dpgeng`` exists, DP-GenG at epsilon 1.

Every attack faces the same settings (printed first), shortened to fit ~10 minutes on 2
CPU cores: population 400 (20 records per class, 10 members per run per class, so DM's
real init of ipc=10 does not already equal the member set), 100 matching iterations,
100-epoch attack models. Runs use one torch thread each (tiny models; on shared cores a
second intra-op thread only waits).

Example:
    python scripts/bench_mia.py --workers 1
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_module

from dpgd.config import register_configs
from dpgd.data import load_dataset
from dpgd.mia.stage import run_attack
from dpgd.tracking import Tracker

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SHARED = ["logger=none", "mia=lira", "mia.population=400", "mia.epochs=100", "mia.eval_models=1"]
METHODS = [
    ("leaky baseline (real images, eps=inf)", ["experiment=leaky_baseline"]),
    ("DM, real init (eps=inf)", ["experiment=dm", "init=real", "matcher.iterations=100"]),
    ("NDPDC (eps=1)", ["experiment=ndpdc", "epsilon=1", "matcher.iterations=100"]),
    ("DP-GenG (eps=1)", ["experiment=dpgeng", "epsilon=1", "matcher.iterations=100"]),
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=1, help="parallel shadow processes for the K=16 attacks")
    parser.add_argument("--shadows", type=int, default=16, help="K of the leakage table")
    parser.add_argument("--out", type=Path, default=None, help="keep the attack folders here (default: a temp dir)")
    return parser.parse_args()


def attack(overrides: list[str], folder: Path, dataset) -> dict:
    with initialize_config_module(config_module="dpgd.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*SHARED, *overrides])
    return run_attack(cfg, dataset, torch.device("cpu"), folder, Tracker(), progress=False)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    register_configs()
    root = args.out or Path(tempfile.mkdtemp(prefix="bench_mia_"))
    with initialize_config_module(config_module="dpgd.configs", version_base="1.3"):
        dataset = load_dataset(compose(config_name="train", overrides=["logger=none"]).dataset)
    print(f"settings: digits ({dataset.num_train} train records), {' '.join(SHARED)}, matcher.iterations=100, "
          f"evaluation protocol otherwise (batch 256, DSA); torch threads 1; folders under {root}\n")

    print("| attack | runs | workers | s / run | whole attack (s) |")
    print("|---|---|---|---|---|")
    ndpdc = METHODS[2][1]
    timed: dict[int, dict] = {}
    for runs, workers in ((4, 1), (args.shadows, args.workers)):
        started = time.perf_counter()
        result = attack([*ndpdc, f"mia.num_shadow={runs}", f"mia.workers={workers}"], root / f"timing_k{runs}", dataset)
        timed[runs] = result
        print(f"| NDPDC eps=1, LiRA | {runs} | {workers} | {result['seconds_per_run']:.1f} "
              f"| {time.perf_counter() - started:.1f} |", flush=True)

    print("\n| method | variant | AUC | TPR@0.1% FPR | TPR@1% FPR | balanced acc | run test acc % |")
    print("|---|---|---|---|---|---|---|")
    for name, overrides in METHODS:
        experiment = overrides[0].split("=", 1)[1]
        if not (CONFIGS / "experiment" / f"{experiment}.yaml").is_file():
            print(f"| {name} | skipped: no configs/experiment/{experiment}.yaml | | | | | |", flush=True)
            continue
        if overrides is ndpdc and args.shadows in timed:
            result = timed[args.shadows]
        else:
            result = attack([*overrides, f"mia.num_shadow={args.shadows}", f"mia.workers={args.workers}"],
                            root / experiment, dataset)
        for variant, metrics in result["variants"].items():
            print(f"| {name} | {variant} | {metrics['auc']:.3f} | {metrics['tpr_at_0.1pct_fpr']:.3f} "
                  f"| {metrics['tpr_at_1pct_fpr']:.3f} | {metrics['balanced_accuracy']:.3f} "
                  f"| {result['run_test_acc_mean']:.1f} |", flush=True)
    print(f"\n{args.shadows} runs x 400 records = {args.shadows * 400} scored pairs per row "
          f"({args.shadows * 200} members): TPR at 0.1% FPR rests on ~{args.shadows * 200 // 1000} "
          "false positives, so read it as a coarse figure.")


if __name__ == "__main__":
    main()

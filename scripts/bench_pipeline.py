"""Benchmark whole runs: per-stage seconds, peak memory and the DP-GenG / NDPDC time ratio.

    python scripts/bench_pipeline.py                          # cifar10-mini, IPC 10, eps 1
    python scripts/bench_pipeline.py --dataset digits
    python scripts/bench_pipeline.py --matching               # also scripts/bench_matching.py
    python scripts/bench_pipeline.py --methods dpgeng_public ndpdc_public [--cold-public]

Each method runs as ``dpgd experiment=<method> dataset=<dataset> ...`` in its own process,
one after the other (never concurrently: they would share the cores), with the pool cache
and resuming off so every stage does its work. Stage seconds and peak memory come from each
run's ``private/diagnostics.json``; "process" is the wall time of the whole command
(imports and writing included). Run it on an otherwise idle machine, before and after a
change to a hot path, and put both tables in the change's note.

Methods with public knowledge (``*_public``) get ``public.root=--public-root`` (default
../shared/data/public32). Their ``public`` stage is the per-run cost (decoding the pool,
loading the cached network and embedding) unless ``--cold-public`` gives each an empty
cache folder, when it also holds the one-time pretraining and embedding; a line per
method splits the two. PE is the ``generate`` stage of ``dpgeng_public``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dpgd.results import read_json, read_results

REPO = Path(__file__).resolve().parents[1]
PUBLIC_ROOT = str(REPO.parent / "shared" / "data" / "public32")
STAGES = ("plan", "data", "public", "counts", "generate", "pool_nets", "init", "expert", "match", "select", "eval")


def dpgd_command() -> list[str]:
    script = Path(sys.executable).with_name("dpgd")
    return [str(script)] if script.exists() else [sys.executable, "-m", "dpgd.train"]


def run_method(method: str, dataset: str, overrides: list[str], folder: Path) -> dict:
    command = [*dpgd_command(), f"experiment={method}", f"dataset={dataset}", "logger=none",
               "generator.cache=false", "resume=false", f"hydra.run.dir={folder}", *overrides]
    if "public" in method:
        # The pool cache is off; the public network and embedding come from the cache folder
        # the overrides name (--cold-public: an empty one, so the one-time work runs).
        command.append(f"public.root={PUBLIC_ROOT}")
    env = {**os.environ, "WANDB_MODE": "disabled"}
    env.setdefault("DPGD_CIFAR10_MINI", str(REPO.parent / "shared" / "data" / "cifar10-mini"))
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    diagnostics = read_json(folder / "private" / "diagnostics.json")
    results = read_results(folder)
    return {"process": seconds, "timings": diagnostics["timings_s"], "peak_mb": diagnostics["peak_memory_mb"],
            "acc": results["test_acc_mean"], "epsilon": results["privacy"]["epsilon"],
            "public": diagnostics.get("public")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="cifar10_mini")
    parser.add_argument("--methods", nargs="+", default=["dpgeng", "ndpdc"])
    parser.add_argument("--matching", action="store_true", help="also run scripts/bench_matching.py")
    parser.add_argument("--public-root", default=str(REPO.parent / "shared" / "data" / "public32"),
                        help="public.root of the *_public methods (default ../shared/data/public32)")
    parser.add_argument("--cold-public", action="store_true",
                        help="*_public methods use an empty cache folder: the public stage includes the one-time "
                             "pretraining and embedding (default: the cache, i.e. the per-run cost)")
    parser.add_argument("overrides", nargs="*", help="extra dpgd overrides for every method (e.g. seed=1)")
    args = parser.parse_args()

    global PUBLIC_ROOT
    PUBLIC_ROOT = args.public_root
    rows = {}
    with tempfile.TemporaryDirectory(prefix="dpgd-bench-") as tmp:
        for method in args.methods:
            print(f"running {method} on {args.dataset} ...", file=sys.stderr, flush=True)
            extra = [f"generator.cache_dir={Path(tmp) / ('cache-' + method)}"] if args.cold_public else []
            rows[method] = run_method(method, args.dataset, [*args.overrides, *extra], Path(tmp) / method)

    print(f"data set {args.dataset}, overrides {args.overrides or 'none'}, {os.cpu_count()} CPUs\n")
    print("| stage | " + " | ".join(args.methods) + " |")
    print("|---|" + "---|" * len(args.methods))
    stages = [s for s in STAGES if any(s in r["timings"] for r in rows.values())]
    for stage in stages:
        print(f"| {stage} | " + " | ".join(f"{rows[m]['timings'].get(stage, 0.0):.1f}" for m in args.methods) + " |")
    print("| **stages total** | " + " | ".join(
        f"**{sum(rows[m]['timings'].get(s, 0.0) for s in STAGES):.1f}**" for m in args.methods) + " |")
    print("| process (s) | " + " | ".join(f"{rows[m]['process']:.1f}" for m in args.methods) + " |")
    print("| peak memory (MB) | " + " | ".join(f"{rows[m]['peak_mb']:.0f}" for m in args.methods) + " |")
    print("| test acc (%) | " + " | ".join(f"{rows[m]['acc']:.2f}" for m in args.methods) + " |")
    public = {m: r["public"] for m, r in rows.items() if r.get("public")}
    for method, info in public.items():
        once = info["pretrain_seconds"] + (info["embed_seconds"] if info["embed_cache_hit"] is False else 0.0)
        print(f"\n{method} public stage: one-time (pretraining {info['pretrain_seconds']:.1f} s, cache hit "
              f"{info['pretrain_cache_hit']}; embedding {info['embed_seconds']:.1f} s, cache hit {info['embed_cache_hit']}) "
              f"= {once:.1f} s; per run: loading the pool {info['load_seconds']:.1f} s")
    if len(args.methods) == 2:
        first, second = (rows[m]["process"] for m in args.methods)
        print(f"\n{args.methods[0]} / {args.methods[1]} process time: {first / second:.2f}x")
    if args.matching:
        print(flush=True)
        subprocess.run([sys.executable, str(REPO / "scripts" / "bench_matching.py")], check=True)


if __name__ == "__main__":
    main()

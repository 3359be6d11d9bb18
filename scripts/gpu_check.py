"""GPU check: a short paper_cifar10 run on generated CIFAR-shaped data, timed per stage.

    python scripts/gpu_check.py                       # on a CUDA machine
    python scripts/gpu_check.py --allow-cpu --tiny    # CPU smoke test (minutes)

Writes a 10-class, 32x32 RGB ImageFolder tree of PNGs into a temporary folder (structured
classes: a per-class colour, stripe orientation and frequency, plus pixel noise, so the
accuracy is above chance but meaningless as a benchmark; nothing is downloaded), then runs
``experiment=paper_cifar10`` on it with ``dataset=imagefolder`` and shortened sizes (below,
all overridable with ``--set``), and prints the seconds of every stage (the run's
``private/diagnostics.json`` timings), the peak GPU memory and matching iterations per second (timed around the
matching loop itself, without extractor training). Exits with status 2 and a message when
CUDA is absent, unless ``--allow-cpu``.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

CLASSES = 10
SIZE = 32

# Shortened paper_cifar10 (the preset's protocol, smaller counts): minutes on one GPU.
# Generated data has no public counterpart: the check runs the preset's pipeline with the
# DP-MERF generator and no public data (public=none), so it needs no public.root.
SHORT = [
    "public=none", "generator=dp_merf", "mia=none", "logger=none", "evaluation.runs=2", "evaluation.epochs=300",
    "matcher.iterations=500", "pool_nets.count=2", "pool_nets.epochs=10",
    "pool_nets.snapshots=2", "generator.pool_per_class=400", "generator.dp_merf.steps=500", "expert.steps=100",
    "expert.sample_rate=0.1", "matcher.noise_schedule.kind=exponential",
]
# --tiny: a smoke test that only proves every stage runs (CPU: a few minutes on 2 cores).
TINY = [
    "ipc=4", "evaluation.runs=1", "evaluation.epochs=5", "matcher.iterations=10", "pool_nets.count=1",
    "pool_nets.epochs=1", "pool_nets.snapshots=1", "generator.pool_per_class=20",
    "generator.dp_merf.steps=10", "generator.dp_merf.num_features=200", "generator.report=false",
    "init.kmeans_restarts=1", "expert.steps=5",
    "expert.reference_per_class=10", "model.width=32",
]


def write_dataset(root: Path, train_per_class: int, test_per_class: int, seed: int = 0) -> None:
    """A structured, CIFAR-shaped ImageFolder tree of PNGs."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    for c in range(CLASSES):
        colour = np.array([(c * 37) % 256, (c * 91 + 60) % 256, (c * 151 + 120) % 256], np.float32) / 255
        angle = math.pi * c / CLASSES
        freq = 2 + (c % 3)
        stripes = 0.5 + 0.5 * np.sin(2 * math.pi * freq * (xx * math.cos(angle) + yy * math.sin(angle)))
        for split, count in (("train", train_per_class), ("test", test_per_class)):
            folder = root / split / f"class{c:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                shift = rng.uniform(0, 1)
                pattern = np.roll(stripes, int(shift * SIZE), axis=1)
                image = 0.6 * pattern[..., None] * colour + 0.4 * rng.uniform(0, 1, (SIZE, SIZE, 3))
                Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).save(folder / f"{i:05d}.png")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--allow-cpu", action="store_true", help="run on CPU when CUDA is absent (smoke test)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: proves the stages run, measures nothing")
    parser.add_argument("--train-per-class", type=int, default=1000)
    parser.add_argument("--test-per-class", type=int, default=200)
    parser.add_argument("--epsilon", type=float, default=1.0)
    parser.add_argument("--set", nargs="*", default=[], help="extra Hydra overrides (applied last)")
    parser.add_argument("--out", type=Path, default=None, help="run folder (default: a temporary folder)")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        print("gpu_check: CUDA is not available on this machine (torch.cuda.is_available() is False); "
              "run it on a GPU machine, or pass --allow-cpu (with --tiny) for a CPU smoke test.", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    if args.tiny:
        args.train_per_class = min(args.train_per_class, 30)
        args.test_per_class = min(args.test_per_class, 10)

    from dpgd.config import compose
    from dpgd.train import run

    with tempfile.TemporaryDirectory(prefix="dpgd-gpu-check-") as tmp:
        data_root = Path(tmp) / "data"
        started = time.perf_counter()
        write_dataset(data_root, args.train_per_class, args.test_per_class)
        print(f"data: {CLASSES} classes x {args.train_per_class} train / {args.test_per_class} test PNGs "
              f"({SIZE}x{SIZE}) written in {time.perf_counter() - started:.1f} s")
        overrides = [
            "experiment=paper_cifar10", "dataset=imagefolder", f"dataset.root={data_root}", f"dataset.image_size={SIZE}",
            f"epsilon={args.epsilon}", f"device={'cuda' if cuda else 'cpu'}", *SHORT, *(TINY if args.tiny else []), *args.set,
        ]
        cfg = compose(*overrides)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        out = args.out or Path(tmp) / "run"
        started = time.perf_counter()
        result = run(cfg, out)
        total = time.perf_counter() - started
        diagnostics = result.diagnostics  # the owner's figures: timings, memory, matching loop
        results = result.results | {key: diagnostics[key] for key in ("timings_s", "peak_memory_mb")}

    device = torch.cuda.get_device_name(0) if cuda else "CPU"
    print(f"\ndevice: {device}   torch {torch.__version__}")
    print(f"overrides: {' '.join(overrides[4:])}")
    print("\n| stage | seconds |\n|---|---|")
    for stage, seconds in results["timings_s"].items():
        print(f"| {stage} | {seconds:.1f} |")
    print(f"| total | {total:.1f} |")
    if cuda:
        print(f"\npeak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB "
              f"(diagnostics peak_memory_mb {results['peak_memory_mb']:.0f})")
    else:
        print(f"\npeak memory (process RSS, CPU run): {results['peak_memory_mb']:.0f} MB")
    stats = diagnostics.get("match")
    if stats:
        print(f"matching: {stats['iterations']} iterations in {stats['seconds']:.1f} s = "
              f"{stats['iterations'] / max(stats['seconds'], 1e-9):.2f} it/s ({stats['images_per_second']:.0f} images/s)")
    privacy = results["privacy"]
    print(f"test accuracy {results['test_acc_mean']:.1f} +- {results['test_acc_std']:.1f} "
          f"(structured synthetic data, not a benchmark); epsilon {privacy['epsilon']:.3f} "
          f"<= target {results['epsilon_target']:g} at delta {results['delta']:g}, "
          f"{len(privacy['mechanisms'])} ledger records")
    return 0


if __name__ == "__main__":
    sys.exit(main())

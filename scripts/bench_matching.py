"""Benchmark the feature-matching loop: seconds per iteration, images per second, peak memory.

    python scripts/bench_matching.py [--iterations 50] [--cifar-root ../shared/data/cifar10-mini]

Prints a markdown table for dp_feature and dm on digits and the CIFAR-10 slice at IPC 10,
with each iteration's cost as a ratio to its essential work (a forward of the real batch
plus forward/backward of the synthetic set through one network, timed in the same
process). The first iterations are excluded from the timing (warm-up). Run it before and after a
change to the hot path and put both tables in the change's note. The process applies
``--cpu-allocator`` (dpgd's default, ``balanced``) as a dpgd run does: with glibc's defaults
every large activation is a fresh page-faulted mapping, which inflates the loop and its
essential work alike (cifar10-mini: 0.80 vs 0.35 s per iteration).
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import torch

from dpgd.allocator import CHOICES, tune_for_training
from dpgd.config import DatasetConfig, MatcherConfig, ModelConfig
from dpgd.data import load_dataset
from dpgd.counts import release_class_counts
from dpgd.initialisation import initialise
from dpgd.matching import RandomExtractors, match
from dpgd.matching.loop import embed_real
from dpgd.validation import resolve_device

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CIFAR = REPO.parent / "shared" / "data" / "cifar10-mini"
WARMUP = 5


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench(dataset, matcher: str, iterations: int, ipc: int, device: torch.device) -> dict[str, float]:
    cfg = MatcherConfig(name=matcher, iterations=iterations, sample_rate=0.1, batch_real=256, lr_images=10.0)
    start = initialise("noise", dataset, ipc, 1.0, torch.Generator().manual_seed(0))
    extractors = RandomExtractors(ModelConfig(), dataset.channels, dataset.num_classes, dataset.image_size,
                                  torch.Generator().manual_seed(0), device)
    times: list[float] = []
    last = [time.perf_counter()]
    # A benchmark on data the operator holds: exact counts (never part of a release).
    exact = release_class_counts(dataset.train_labels, dataset.num_classes, None, torch.Generator())

    def on_iteration(iteration: int, metrics: dict[str, float]) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _, stats = match(
        start.images, start.labels, dataset, cfg, extractors=extractors,
        noise_multiplier=5.0 if matcher == "dp_feature" else None,
        generator=torch.Generator().manual_seed(1), noise_generator=torch.Generator().manual_seed(2), device=device,
        on_iteration=on_iteration, progress=False,
        sampling_generator=torch.Generator().manual_seed(3), counts=exact,
    )
    steady = torch.tensor(times[WARMUP:] or times)
    essential = essential_work(dataset, extractors, start.images, cfg, matcher, iterations, device)
    # Expected real images per iteration: q*N (Poisson) or batch_real per class (DM).
    real_per_iteration = (cfg.sample_rate * dataset.num_train if matcher == "dp_feature"
                          else float(sum(min(cfg.batch_real, int(n)) for n in dataset.class_counts())))
    per_iteration = float(steady.mean())
    return {
        "real_per_iter": real_per_iteration,
        "s_per_iter": per_iteration,
        "s_per_iter_std": float(steady.std()) if len(steady) > 1 else 0.0,
        "images_per_s": (real_per_iteration + ipc * dataset.num_classes) / per_iteration,
        "peak_mb": peak_mb(device),
        "essential_s": essential,
        "ratio": per_iteration / essential,
    }


def essential_work(dataset, extractors, images: torch.Tensor, cfg: MatcherConfig, matcher: str, iterations: int,
                   device: torch.device) -> float:
    """Seconds of one iteration's essential work, timed in the same process on the same
    batch sizes: a no-grad forward of the real batch (in the loop's memory-friendly chunks)
    plus forward and backward of the synthetic set through one network (no sampling,
    augmentation, clipping or noise)."""
    generator = torch.Generator().manual_seed(4)
    real_count = (round(cfg.sample_rate * dataset.num_train) if matcher == "dp_feature"
                  else sum(min(cfg.batch_real, int(n)) for n in dataset.class_counts()))
    real = dataset.train_images[torch.randperm(dataset.num_train, generator=generator)[:real_count]].to(device)
    syn = images.clone().to(device).requires_grad_(True)
    net = extractors(0)
    times = []
    for _ in range(max(iterations, WARMUP + 5)):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        with torch.no_grad():
            embed_real(lambda model, x: model.embed(x), net, real)
        net.embed(syn).square().sum().backward()
        syn.grad = None
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - started)
    return float(torch.tensor(times[WARMUP:]).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cifar-root", type=Path, default=DEFAULT_CIFAR)
    parser.add_argument("--cpu-allocator", choices=CHOICES, default="balanced")
    args = parser.parse_args()
    allocator = tune_for_training(args.cpu_allocator)
    device = resolve_device(args.device)
    sets = [("digits", DatasetConfig(name="digits"))]
    if (args.cifar_root / "train").is_dir():
        sets.append(("cifar10-mini", DatasetConfig(name="imagefolder", root=str(args.cifar_root), image_size=32)))
    print(f"device={device} iterations={args.iterations} ipc={args.ipc} threads={torch.get_num_threads()} "
          f"cpu_allocator={args.cpu_allocator} (applied: {allocator})\n")
    print("| data set | matcher | real/iter | s / iteration | images / s | essential s | ratio | peak MB |")
    print("|---|---|---|---|---|---|---|---|")
    for label, dataset_cfg in sets:
        dataset = load_dataset(dataset_cfg)
        for matcher in ("dp_feature", "dm"):
            row = bench(dataset, matcher, args.iterations, args.ipc, device)
            real = f"{row['real_per_iter']:.0f} " + ("(Poisson, q=0.1)" if matcher == "dp_feature" else "(<=256/class)")
            print(f"| {label} | {matcher} | {real} | {row['s_per_iter']:.4f} +- {row['s_per_iter_std']:.4f} "
                  f"| {row['images_per_s']:.0f} | {row['essential_s']:.4f} | {row['ratio']:.2f} "
                  f"| {row['peak_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()

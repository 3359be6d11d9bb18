"""Benchmark the DP generators: fit+sample time and train-on-synthetic test accuracy.

For each data set, generator and epsilon, the generator gets the WHOLE budget (one
``generator`` component in :func:`dpgd.privacy.plan_budget`, delta 1e-5), fits and samples
a pool, and a fresh ConvNet trained on the pool is tested on the real test set
(:func:`dpgd.generators.pool_report`). Prints a markdown table.

PE needs public candidates. ``--public-root NAME=PATH`` gives a folder per data set;
``--public-from-test`` instead writes the FIRST half of each test split as the public
folder and scores every generator on the SECOND half only, so public images never meet
the images they are scored on (and the private train split is never public).

Example (about 10 minutes on 2 CPU cores):
    python scripts/bench_generators.py --public-from-test --threads 1
"""

from __future__ import annotations

import argparse
import sys
import dataclasses
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from PIL import Image

from dpgd.config import DatasetConfig, GeneratorConfig, ModelConfig, PoolNetsConfig
from dpgd.data import ImageDataset, load_dataset
from dpgd.generators import build_generator, pool_report
from dpgd.pool_networks import train_pool_networks
from dpgd.counts import release_class_counts
from dpgd.privacy import plan_budget
from dpgd.privacy.randomness import NoiseSource

CIFAR10_MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-mini"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["digits", "cifar10-mini"])
    parser.add_argument("--generators", nargs="+", default=["dp_merf", "dp_sgd", "pe"])
    parser.add_argument("--epsilons", nargs="+", type=float, default=[1.0, 10.0])
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--pool-per-class", type=int, default=100)
    parser.add_argument("--report-epochs", type=int, default=20)
    parser.add_argument("--report-width", type=int, default=64, help="ConvNet width of the pool report")
    parser.add_argument("--dp-merf-steps", type=int, default=300)
    parser.add_argument("--dp-sgd-epochs", type=float, default=None, help="default: the config's")
    parser.add_argument("--pe-rounds", type=int, default=None, help="default: the config's")
    parser.add_argument("--public-root", action="append", default=[], metavar="NAME=PATH")
    parser.add_argument("--public-from-test", action="store_true")
    parser.add_argument("--cifar-root", default=str(CIFAR10_MINI))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def load(name: str, cifar_root: str) -> ImageDataset:
    if name == "digits":
        return load_dataset(DatasetConfig(name="digits"))
    if name == "cifar10-mini":
        return load_dataset(DatasetConfig(name="imagefolder", root=cifar_root, image_size=32))
    return load_dataset(DatasetConfig(name=name))


def split_public(dataset: ImageDataset, folder: Path) -> ImageDataset:
    """Write the first half of the test split as PNGs; return the set scored on the rest."""
    folder.mkdir(parents=True, exist_ok=True)
    half = dataset.test_labels.shape[0] // 2
    pixels = dataset.denormalise(dataset.test_images[:half])
    for index, image in enumerate(pixels):
        array = (image.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
        Image.fromarray(array[..., 0] if array.shape[2] == 1 else array).save(folder / f"{index:05d}.png")
    return dataclasses.replace(dataset, test_images=dataset.test_images[half:], test_labels=dataset.test_labels[half:])


def generator_cfg(name: str, args: argparse.Namespace, public_root: str | None):
    cfg = OmegaConf.structured(GeneratorConfig(name=name, pool_per_class=args.pool_per_class))
    cfg.dp_merf.steps = args.dp_merf_steps
    if args.dp_sgd_epochs is not None:
        cfg.dp_sgd.epochs = args.dp_sgd_epochs
    if args.pe_rounds is not None:
        cfg.pe.rounds = args.pe_rounds
    cfg.pe.public_root = public_root
    return cfg


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    roots = dict(item.split("=", 1) for item in args.public_root)
    device = torch.device("cpu")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for data_name in args.datasets:
            dataset = load(data_name, args.cifar_root)
            public = roots.get(data_name)
            if args.public_from_test:
                dataset = split_public(dataset, Path(tmp) / data_name)
                public = str(Path(tmp) / data_name)
            report_model = ModelConfig(width=args.report_width)
            for gen_name in args.generators:
                if gen_name == "pe" and public is None:
                    print(f"skipping pe on {data_name}: no public folder (--public-root or --public-from-test)")
                    continue
                cfg = generator_cfg(gen_name, args, public)
                need = build_generator(cfg, progress=False).privacy_request()
                for epsilon in args.epsilons:
                    plan = plan_budget(epsilon, args.delta, [need.request(1.0)])
                    sigma = plan.for_component("generator")
                    generator = build_generator(cfg, progress=sys.stderr.isatty())
                    started = time.perf_counter()
                    # A benchmark of the generator alone: secret noise, exact counts (operator's data).
                    counts = release_class_counts(dataset.train_labels, dataset.num_classes, None, torch.Generator())
                    pool = generator.fit_and_sample(dataset, sigma, args.seed, device, noise=NoiseSource.secret(),
                                                    counts=counts)
                    seconds = time.perf_counter() - started
                    started = time.perf_counter()
                    networks = train_pool_networks(
                        PoolNetsConfig(epochs=args.report_epochs, snapshots=1, cache=False), 1, report_model,
                        pool.images, pool.labels, dataset, seed=args.seed, device=device, cache_dir=None,
                        progress=False,
                    )
                    report = pool_report(pool, dataset, networks.final())
                    row = (data_name, gen_name, epsilon, sigma, need.sample_rate, need.steps, seconds,
                           time.perf_counter() - started, report["pool_test_acc"])
                    rows.append(row)
                    print("| " + " | ".join(_fmt(v) for v in row) + " |", flush=True)
    print()
    print(f"pool {args.pool_per_class}/class, report: ConvNet width {args.report_width}, "
          f"{args.report_epochs} epochs, no DSA; delta {args.delta:g}; torch threads {torch.get_num_threads()}"
          + ("; scored on the second half of each test split (first half = PE's public folder)"
             if args.public_from_test else ""))
    print()
    print("| data set | generator | epsilon | sigma | q | steps | fit+sample s | report s | pool test acc % |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(_fmt(v) for v in row) + " |")


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if value < 100 else f"{value:.0f}"
    return str(value)


if __name__ == "__main__":
    main()

"""Benchmark opacus's per-sample-gradient modes for the DP expert's DP-SGD step.

    python scripts/bench_dpsgd.py [--steps 20] [--batch 72 250]

For the dpgd ConvNet on digits-shaped (1x8x8) and CIFAR-shaped (3x32x32) inputs, times one
DP-SGD step (forward, backward with per-sample gradients, clipping, noise, update) with
``GradSampleModule`` in ``hooks`` and ``functorch`` mode and with expanded weights
(``ew``), at the expert's expected Poisson batch (q*N: 0.05 x 1437 ~ 72 on digits,
0.05 x 5000 = 250 on cifar10-mini), and checks that every mode computes the same clipped
update. Prints a markdown table; run it idle, before and after a change.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from opacus.grad_sample import GradSampleModuleExpandedWeights
from opacus.optimizers import DPOptimizer

from dpgd.config import ModelConfig
from dpgd.models import seeded_model

SHAPES = {"digits": (1, (8, 8)), "cifar": (3, (32, 32))}
WARMUP = 3


def wrap(model: torch.nn.Module, mode: str):
    if mode == "ew":
        return GradSampleModuleExpandedWeights(model, batch_first=True, loss_reduction="mean")
    return GradSampleModule(model, batch_first=True, loss_reduction="mean", force_functorch=mode == "functorch")


def bench(shape: str, mode: str, batch: int, steps: int) -> tuple[float, torch.Tensor]:
    channels, size = SHAPES[shape]
    model = seeded_model(ModelConfig(), channels, 10, size, 0)
    module = wrap(model, mode)
    optimizer = DPOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), noise_multiplier=0.0, max_grad_norm=1.0,
                            expected_batch_size=batch)
    data = torch.randn(batch, channels, *size, generator=torch.Generator().manual_seed(1))
    labels = torch.randint(0, 10, (batch,), generator=torch.Generator().manual_seed(2))
    times = []
    for step in range(steps + WARMUP):
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(module(data), labels).backward()
        optimizer.step()
        if step >= WARMUP:
            times.append(time.perf_counter() - started)
    params = torch.cat([p.detach().flatten() for p in model.parameters()])
    return sum(times) / len(times), params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, nargs=2, default=[72, 250], help="digits and cifar batch sizes")
    args = parser.parse_args()
    print(f"torch threads {torch.get_num_threads()}, noise multiplier 0 (identical updates expected)\n")
    print("| input | batch | mode | s / step | same update as hooks |")
    print("|---|---|---|---|---|")
    for shape, batch in zip(SHAPES, args.batch):
        reference = None
        for mode in ("hooks", "functorch", "ew"):
            try:
                seconds, params = bench(shape, mode, batch, args.steps)
            except Exception as err:  # noqa: BLE001 - a mode that cannot run this model is a result
                print(f"| {shape} | {batch} | {mode} | fails: {type(err).__name__}: {str(err)[:60]} | - |")
                continue
            reference = params if reference is None else reference
            same = torch.allclose(params, reference, atol=1e-5, rtol=1e-4)
            print(f"| {shape} | {batch} | {mode} | {seconds:.4f} | {same} |", flush=True)


if __name__ == "__main__":
    main()

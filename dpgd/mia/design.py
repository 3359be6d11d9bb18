"""The membership design of the attack: the target population and who is a member of which run.

Membership comes in complementary pairs: run 2i+1's members are run 2i's non-members,
class by class, so every run has the same class counts and every record is a member in
exactly half the runs. A pair's membership depends only on (seed, pair index), so runs
computed for K=4 are reused by K=16. Kept apart from the shadow runs: it is pure index
arithmetic on labels, and the stage and the tests read it without the pipeline.
"""

from __future__ import annotations

import torch

from dpgd.errors import ConfigError
from dpgd.seeding import derive_seed


def draw_population(labels: torch.Tensor, num_classes: int, size: int, seed: int) -> torch.Tensor:
    """Indices of ``size // num_classes`` random train records of each class, by class."""
    per_class = size // num_classes
    counts = torch.bincount(labels, minlength=num_classes)
    if per_class < 2:
        raise ConfigError(
            f"mia.population={size} gives {per_class} record(s) per class for {num_classes} classes; "
            f"use mia.population>={2 * num_classes} so every run has members of every class."
        )
    if per_class > int(counts.min()):
        raise ConfigError(
            f"mia.population={size} needs {per_class} train records per class but the smallest class "
            f"has {int(counts.min())}; use mia.population<={int(counts.min()) * num_classes}."
        )
    generator = torch.Generator().manual_seed(seed)
    picks = []
    for label in range(num_classes):
        index = torch.nonzero(labels == label).flatten()
        picks.append(index[torch.randperm(len(index), generator=generator)[:per_class]].sort().values)
    return torch.cat(picks)


def pair_membership(population_labels: torch.Tensor, num_classes: int, pair: int, seed: int) -> torch.Tensor:
    """(2, n) membership of runs 2*pair and 2*pair+1: a random half of each class, and its complement."""
    generator = torch.Generator().manual_seed(derive_seed(seed, "pair", pair))
    first = torch.zeros(population_labels.shape[0], dtype=torch.bool)
    for label in range(num_classes):
        index = torch.nonzero(population_labels == label).flatten()
        first[index[torch.randperm(len(index), generator=generator)[: len(index) // 2]]] = True
    return torch.stack([first, ~first])


def membership_matrix(population_labels: torch.Tensor, num_classes: int, runs: int, seed: int) -> torch.Tensor:
    """(runs, n) boolean membership; ``runs`` is rounded up to whole pairs, then cut."""
    pairs = [pair_membership(population_labels, num_classes, p, seed) for p in range((runs + 1) // 2)]
    return torch.cat(pairs)[:runs]

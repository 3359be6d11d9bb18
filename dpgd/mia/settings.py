"""The ``mia`` group's schema: membership-inference evaluation of the release pipeline.

Kept free of :mod:`dpgd.config` so that module can import it (the schema lives with the
code that reads it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

MIA_NAMES = ("none", "lira", "loss")


@dataclass
class MiaConfig:
    # none | lira (shadow runs + likelihood ratio, Carlini et al. 2022) | loss (one target
    # run, global loss threshold: cheap, weak, a floor on the leakage)
    name: str = "none"
    # K pipeline runs on random halves of the population. Runs come in complementary
    # pairs (run 2i's non-members are run 2i+1's members), so K must be even and >= 4:
    # each run in turn is the target and the K-2 runs outside its pair are the shadows,
    # each record IN in exactly half of them. The LiRA paper's curves flatten by K~64;
    # 16 already separates a leaky release from a DP one.
    num_shadow: int = 16
    # Target records drawn from the train set (class-stratified: population // classes of
    # each class). Every record is scored in every run, so scored pairs = K * population.
    population: int = 500
    # Fresh evaluation networks trained on each run's distilled set; phi is averaged over
    # them (averaging removes training noise that is not membership signal).
    eval_models: int = 1
    # Epochs of those networks; null = evaluation.epochs. Everything else follows the
    # evaluation protocol (optimiser, batch, DSA), so the attack sees the released models.
    epochs: Optional[int] = None
    # Shadow runs in parallel processes (spawn; one torch thread each); 1 = in-process.
    workers: int = 1
    # Keep each run's outputs in <output_dir>/mia_shadows/ so an interrupted attack resumes.
    cache: bool = True
    # Changes the population and every run's seed, for an independent repeat of the attack.
    seed_offset: int = 0
    # One pooled variance for all records (the paper's advice below ~64 shadows), else a
    # variance per record.
    global_variance: bool = True
    # A run's private set: false = its members only (cheap, and each record weighs more
    # than in the full-size release, so the attack is if anything stronger); true =
    # members plus every train record outside the population (the release's scale).
    include_rest: bool = False
    # The attack's numbers are computed from private records and their membership, without
    # noise: they go to private/mia.json only. true also sends them to W&B (only for a
    # W&B project you keep private).
    log_to_wandb: bool = False
    # Turn the attack's scores into an empirical epsilon LOWER bound (dpgd.mia.audit:
    # Clopper-Pearson bounds on TPR and FPR at a threshold chosen on half of the records)
    # at this confidence. Above the proven epsilon it fails the run: a bug. It tests the
    # code; it is not a tighter guarantee.
    audit: bool = False
    audit_confidence: float = 0.95

"""Checks on settings that a type system cannot express, run before any data is read.

Each failure raises :class:`~dpgd.errors.ConfigError` with what is wrong and how to fix it.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import torch

from dpgd.config import TrainConfig
from dpgd.errors import ConfigError
from dpgd.initialisation import check_init
from dpgd.pool_networks import check_pool_nets_settings, snapshot_count
from dpgd.matching.release import EMBEDDINGS, planned_iterations, privacy_request as matcher_privacy_request
from dpgd.generators.pe import resolved_embedding
from dpgd.generators.pe_sources import check_source_settings
from dpgd.public.knowledge import EMBED_DIM
from dpgd.public.pool import check_public_files
from dpgd.public.pretrain import check_pretrain_settings
from dpgd.privacy.schedules import relative_pieces
from dpgd import selection

if TYPE_CHECKING:
    from dpgd.counts import ClassCounts

log = logging.getLogger("dpgd")

NON_PRIVATE_ONLY = {
    ("init", "real"): "init=real copies private images into the release",
    ("matcher", "dm"): "matcher=dm matches unclipped, un-noised real statistics",
    ("generator", "real"): "generator=real uses the private images as the pool",
}


def is_private(cfg: TrainConfig) -> bool:
    return math.isfinite(cfg.epsilon)


# What each preset runs: (a DP pool is generated, init, matcher, a DP expert is trained).
# A run labelled with a preset's name but running other components is labelled by them.
PRESET_COMPONENTS: dict[str, tuple[bool, str, str, bool]] = {
    "dpgeng": (True, "kmeans", "dp_feature", True),
    "dpgeng_no_expert": (True, "kmeans", "dp_feature", False),
    "dpgeng_init_only": (True, "kmeans", "none", False),
    "dpgeng_match_only": (True, "noise", "dp_feature", False),
    "ndpdc": (False, "noise", "dp_feature", False),
    "dm": (False, "noise", "dm", False),
    "leaky_baseline": (False, "real", "none", False),
    "dpgeng_public": (True, "kmeans", "dp_feature", True),
    "dpgeng_public_init_only": (True, "kmeans", "none", False),
    "ndpdc_public": (False, "noise", "dp_feature", False),
}
# Presets whose method is non-private by definition (their label needs no warning).
NON_PRIVATE_METHODS = {"dm", "leaky_baseline"}


def method_label(cfg: TrainConfig) -> str:
    """The method as what runs, for results, W&B and reports: ``cfg.method`` when it is free
    text or a preset whose components run, else the components (``dp_merf+kmeans+dm``); a
    private method run at epsilon=inf says so."""
    runs = (cfg.generator.name != "none", cfg.init.name, cfg.matcher.name, cfg.expert.name != "none")
    label = cfg.method
    if label in PRESET_COMPONENTS and PRESET_COMPONENTS[label] != runs:
        parts = [cfg.generator.name, cfg.init.name, cfg.matcher.name, "expert" if runs[3] else "none"]
        label = "+".join(part for part in parts if part != "none")
    if not is_private(cfg) and label not in NON_PRIVATE_METHODS:
        label += " (non-private)"
    return label


def check_config(cfg: TrainConfig) -> None:
    """Static checks: values and combinations that are wrong whatever the data."""
    epsilon = cfg.epsilon
    if math.isnan(epsilon) or epsilon <= 0:
        raise ConfigError(
            f"epsilon={cfg.epsilon} is not a privacy budget: use a positive number such as "
            "epsilon=1, or epsilon=inf for a deliberately non-private run."
        )
    if not 0.0 < cfg.delta < 1.0:
        raise ConfigError(f"delta={cfg.delta} must lie in (0, 1); the field's convention is delta=1e-5.")
    if cfg.ipc < 1:
        raise ConfigError(f"ipc={cfg.ipc}: the distilled set needs at least one image per class.")
    if cfg.checkpoint_every < 1:
        raise ConfigError(f"checkpoint_every={cfg.checkpoint_every} must be at least 1 (matching iterations "
                          "between saved states); use resume=false to save none.")
    fractions = {key: float(getattr(cfg.budget, key)) for key in ("generator", "matcher", "expert")}
    for key, value in fractions.items():
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"budget.{key}={value} must be a fraction in [0, 1].")
    counts_share = cfg.budget.counts
    if is_private(cfg) and not 0.0 < counts_share < 1.0:
        raise ConfigError(
            f"budget.counts={counts_share} must lie in (0, 1): a private run releases its class counts "
            "with noise (the default 0.1 of epsilon)."
        )
    if selection.runs(cfg.selection, cfg.matcher):
        if cfg.selection.candidates < 2 or cfg.selection.epochs < 1:
            raise ConfigError(
                f"selection.candidates={cfg.selection.candidates} and selection.epochs={cfg.selection.epochs} must be "
                "at least 2 (the start and the end of matching) and 1; or use selection=none."
            )
        if is_private(cfg) and not (0.0 < cfg.budget.selection and counts_share + cfg.budget.selection < 1.0):
            raise ConfigError(
                f"budget.selection={cfg.budget.selection} must be > 0 and leave a share with budget.counts="
                f"{counts_share} (their sum below 1): selection=dp_accuracy releases noisy accuracies on the "
                "private data. Give it a share (default 0.05) or use selection=none."
            )
    total = sum(fractions.values())
    if is_private(cfg) and abs(total - 1.0) > 1e-6:
        raise ConfigError(
            "budget.generator + budget.matcher + budget.expert = "
            f"{fractions['generator']} + {fractions['matcher']} + {fractions['expert']} = {total:g}; "
            "make the fractions sum to 1."
        )
    if is_private(cfg):
        for (group, name), why in NON_PRIVATE_ONLY.items():
            if getattr(cfg, group).name == name:
                raise ConfigError(
                    f"{group}={name} is only allowed with epsilon=inf ({why}); "
                    f"got epsilon={cfg.epsilon}. Use epsilon=inf or pick another {group}."
                )
        if cfg.matcher.name == "dp_feature" and cfg.budget.matcher <= 0:
            raise ConfigError(
                "matcher=dp_feature needs a share of the budget but budget.matcher=0; "
                "give it a fraction or use matcher=none."
            )
    check_stage_combinations(cfg)
    check_init(cfg.init, cfg.generator.name)
    resolve_device(cfg.device)


def check_stage_combinations(cfg: TrainConfig) -> None:
    """Cross-group rules a stage would otherwise find only when it starts (after the
    generator and the expert have run): judged here, before any data is read."""
    if cfg.expert.name != "none" and cfg.generator.name == "none":
        raise ConfigError(f"expert={cfg.expert.name} is pre-trained on the generated pool; set a generator "
                          "(e.g. generator=dp_merf) or expert=none.")
    if cfg.matcher.name != "none" and cfg.matcher.extractors == "pool_trained" and cfg.generator.name == "none":
        raise ConfigError("matcher.extractors=pool_trained needs a generated pool; set a generator or use "
                          "matcher.extractors=random (or public with public=folder).")
    check_public_settings(cfg)
    if cfg.generator.name != "none":
        check_pool_nets_settings(cfg.pool_nets)
    # Noise schedules are judged even when no noise runs (epsilon=inf), so a typo never waits
    # for the first private run to show up.
    if cfg.expert.name != "none":
        relative_pieces(cfg.expert.noise_schedule, cfg.expert.steps)
    if cfg.matcher.name == "dp_feature":
        relative_pieces(cfg.matcher.noise_schedule, planned_iterations(cfg.matcher))
        matcher_privacy_request(cfg.matcher, extractors=snapshot_count(cfg.pool_nets))
    if cfg.matcher.embedding not in EMBEDDINGS:
        raise ConfigError(f"matcher.embedding={cfg.matcher.embedding} is unknown; choose {' or '.join(EMBEDDINGS)}.")
    if cfg.generator.name == "pe":
        check_source_settings(cfg.generator.pe, has_public=cfg.public.name != "none")
        resolved_embedding(cfg.generator.pe.embedding, cfg.public.name != "none")
    if cfg.matcher.name == "dp_feature" and cfg.matcher.release == "once" and cfg.matcher.extractors != "pool_trained":
        raise ConfigError("matcher.release=once releases one target per fixed extractor: it needs "
                          "matcher.extractors=pool_trained (or use matcher.release=per_iteration).")
    if cfg.matcher.name != "none" and cfg.matcher.extractors not in ("random", "pool_trained", "public"):
        raise ConfigError(f"matcher.extractors={cfg.matcher.extractors} is unknown; choose random, pool_trained or "
                          "public.")


def check_public_settings(cfg: TrainConfig) -> None:
    """The ``public`` group and the options that need it: the folder exists and lists
    enough images (decoding is judged when the stage loads it, still before any budget is
    spent), the pretraining settings, and public knowledge wherever an option uses it."""
    public = cfg.public.name
    if public not in ("none", "folder"):
        raise ConfigError(f"public={public} is unknown; choose none or folder.")
    if public == "folder":
        check_public_files(cfg.public.root, cfg.public.min_images)
        check_pretrain_settings(cfg.public)
    need = "set public=folder public.root=<a folder of public images>"
    if cfg.matcher.name != "none" and cfg.matcher.extractors == "public":
        if public == "none":
            raise ConfigError(f"matcher.extractors=public matches through the public pretrained network; {need}.")
        if cfg.matcher.release == "once":
            raise ConfigError("matcher.release=once releases one target per pool-trained extractor; use "
                              "matcher.release=per_iteration with matcher.extractors=public.")
    if cfg.expert.name == "dp_sgd" and cfg.expert.finetune == "lda":
        if public == "none":
            raise ConfigError(f"expert.finetune=lda releases class means in the public network's embedding; {need}.")
    if cfg.expert.name == "dp_sgd" and not 1 <= cfg.expert.lda_dims <= EMBED_DIM:
        raise ConfigError(f"expert.lda_dims={cfg.expert.lda_dims} must lie in [1, {EMBED_DIM}] (the public "
                          "embedding's principal components).")


def check_counts(cfg: TrainConfig, counts: "ClassCounts", class_names: tuple[str, ...]) -> None:
    """Size checks, run on the released class counts right after their release.

    In a private run the counts are the noisy histogram (:mod:`dpgd.counts`), so the checks
    are post-processing: a refusal here has spent only the count release. Exact counts are
    read only in a non-private run.
    """
    index, smallest = counts.smallest()
    smallest_int = int(round(smallest))
    # A private run refuses only when the class is smaller than ipc beyond doubt (3 noise
    # stds): it never copies real images, and a noisy count must not stop a run by chance
    # (e.g. a membership-inference shadow run on a small member set).
    margin = 3.0 * counts.noise_std
    if cfg.ipc > smallest + margin:
        about = "about " if counts.noisy else ""
        # Class sizes are private: the check needs the released counts, so it comes after them.
        spent = (" This refusal has spent the count release (budget.counts of epsilon); a rerun releases the "
                 "counts again." if counts.noisy else "")
        raise ConfigError(
            f"ipc={cfg.ipc} is larger than class '{class_names[index]}', which has {about}{smallest_int} training "
            f"images; use ipc<={max(1, smallest_int)}.{spent}"
        )
    if cfg.ipc > smallest:
        log.warning("ipc=%d is larger than the released (noisy) count of class '%s', about %d images",
                    cfg.ipc, class_names[index], smallest_int)
    if is_private(cfg):
        from dpgd.privacy import check_delta

        check_delta(cfg.delta, max(1, int(round(counts.total))))


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; anything else must be a device torch knows."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"device={name} is not a torch device; use auto, cpu or cuda.") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but CUDA is not available here; use device=auto or device=cpu.")
    return device

"""Structured schemas for every config group.

Each YAML file in ``configs/<group>/`` starts its defaults list with the schema stored
here (``- /schema/<group>@_here_``), so Hydra type-checks it and a mistyped key fails at
composition with a message naming the key. The top-level ``TrainConfig`` makes the same
true for ``epsilon``, ``delta``, ``ipc``, ``seed`` and ``device``.

Values that need more than a type check (epsilon > 0, fractions summing to 1, IPC no
larger than a class) are checked in :mod:`dpgd.validation` before any data is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class DatasetConfig:
    # digits | cifar10 | cifar100 | tinyimagenet | celeba | imagefolder
    name: str = MISSING
    # Folder holding the data; null = $DPGD_DATA_ROOT or ~/.cache/dpgd/data.
    root: Optional[str] = None
    # torchvision sets only (cifar10/cifar100): fetch the files if they are missing.
    download: bool = False
    # Resize images to this side length; null keeps the native size.
    image_size: Optional[int] = None
    # celeba: the binary attribute used as the label.
    target_attr: str = "Male"
    # Keep at most this many train images per class (null = all): for quick runs.
    max_train_per_class: Optional[int] = None
    # Keep at most this many test images (null = all).
    max_test: Optional[int] = None


@dataclass
class ModelConfig:
    # convnet | resnet18
    name: str = "convnet"
    width: int = 128
    # null = adapt to the image size (3 for 32x32, 2 for 8x8, 4 for 64x64).
    depth: Optional[int] = None
    # instancenorm | groupnorm | none
    norm: str = "instancenorm"


@dataclass
class InitConfig:
    # noise | real (epsilon=inf only); pool-based methods arrive with the generators.
    name: str = "noise"


@dataclass
class GeneratorConfig:
    # none | real | dp_merf | dp_sgd | pe
    name: str = "none"
    pool_per_class: int = 0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class BudgetConfig:
    # Fractions of the total epsilon given to each component; they must sum to 1.
    name: str = "ndpdc"
    generator: float = 0.0
    matcher: float = 1.0
    expert: float = 0.0


@dataclass
class MatcherConfig:
    # none | dp_feature | dm
    name: str = "none"
    iterations: int = 0
    lr_images: float = 1.0
    momentum: float = 0.5
    # Poisson sample rate per class for dp_feature; dm draws batch_real per class.
    sample_rate: float = 0.1
    batch_real: int = 256
    clip_norm: float = 1.0
    # random (fresh ConvNet each iteration, NDPDC) | pool_trained (later issue)
    extractors: str = "random"
    dsa: bool = True
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"


@dataclass
class ExpertConfig:
    name: str = "none"


@dataclass
class EvaluationConfig:
    name: str = "fast"
    # Fresh models trained on the distilled set; mean and std are over these runs.
    runs: int = 2
    epochs: int = 300
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    # Divide the learning rate by 10 at half of the epochs (the literature's protocol).
    lr_drop_at_half: bool = True
    dsa: bool = True
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"
    test_batch_size: int = 2048


@dataclass
class MiaConfig:
    name: str = "none"


@dataclass
class LoggerConfig:
    # none | wandb
    name: str = "none"
    project: str = "dpgd"
    entity: Optional[str] = None
    group: Optional[str] = None
    job_type: str = "distill"
    tags: list[str] = field(default_factory=list)
    run_name: Optional[str] = None
    # offline (default: never hangs or prompts) | online | disabled
    mode: str = "offline"
    init_timeout_s: float = 30.0
    log_artifact: bool = False


@dataclass
class TrainConfig:
    dataset: DatasetConfig = MISSING
    model: ModelConfig = MISSING
    init: InitConfig = MISSING
    generator: GeneratorConfig = MISSING
    budget: BudgetConfig = MISSING
    matcher: MatcherConfig = MISSING
    expert: ExpertConfig = MISSING
    evaluation: EvaluationConfig = MISSING
    mia: MiaConfig = MISSING
    logger: LoggerConfig = MISSING
    # Total privacy budget of the release; inf = a deliberately non-private run.
    epsilon: float = 1.0
    delta: float = 1e-5
    # Distilled images per class.
    ipc: int = 10
    seed: int = 0
    # auto (CUDA when present) | cpu | cuda | cuda:N
    device: str = "auto"
    # Free text recorded in results.json (set by experiment presets).
    method: str = "custom"


SCHEMAS: dict[str, type] = {
    "dataset": DatasetConfig,
    "model": ModelConfig,
    "init": InitConfig,
    "generator": GeneratorConfig,
    "budget": BudgetConfig,
    "matcher": MatcherConfig,
    "expert": ExpertConfig,
    "evaluation": EvaluationConfig,
    "mia": MiaConfig,
    "logger": LoggerConfig,
}


def register_configs() -> None:
    """Store the schemas where the YAML defaults lists look for them."""
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    for group, schema in SCHEMAS.items():
        store.store(group=f"schema/{group}", name="base", node=schema)

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
from typing import Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from dpgd.mia.settings import MiaConfig


@dataclass
class DatasetConfig:
    # digits | cifar10 | cifar100 | tinyimagenet | celeba | imagefolder
    name: str = MISSING
    # Folder holding the data; null = $DPGD_DATA_ROOT or ~/.cache/dpgd/data.
    root: Optional[str] = None
    # torchvision sets only (cifar10/cifar100): fetch the files if they are missing.
    download: bool = False
    # Resize images to this side length; null keeps the native size (built-in sets only:
    # imagefolder requires it, so the release's shape never depends on the private files).
    image_size: Optional[int] = None
    # imagefolder: channels every image is converted to (1 = greyscale, 3 = RGB); a config
    # value, never inferred from the files (one odd image must not change the release).
    channels: int = 3
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
    # noise | real (epsilon=inf only) | kmeans | random_pool (the last two need a generator pool)
    name: str = "noise"
    # kmeans: cluster in the embedding of a ConvNet trained on the pool (pool_net, the
    # paper's choice: semantic neighbours, not pixel neighbours) or in raw pixels (pixels).
    feature_space: str = "pool_net"
    # Images packed per side into each stored image: 1 = off, 2 = four half-size images
    # per stored image (the paper's factor 2); kmeans/random_pool only.
    multi_formation: int = 1
    # Lloyd iterations per k-means run; pools of thousands converge in far fewer.
    kmeans_iters: int = 100
    # k-means restarts (best inertia kept): 3 removes most bad seeds at 3x the cost.
    kmeans_restarts: int = 3
    # pool_net: epochs of the ConvNet trained on the pool (post-processing, free). Every
    # pool epoch is paid by each CPU run; 15 gives a usable embedding for clustering.
    net_epochs: int = 15
    # pool_net: SGD lr and batch of that ConvNet, the evaluation protocol's values.
    net_lr: float = 0.01
    net_batch_size: int = 256


@dataclass
class DpMerfConfig:
    """DP-MERF (Harder et al. 2021): one noisy random-feature mean embedding per class."""

    # Random Fourier features (cos and sin of num_features/2 frequencies; even). More
    # features approximate the kernel better but spread the same noise over more entries
    # and cost pixels x D/2 per image: 500 lost ~3 points on digits at epsilon 1.
    num_features: int = 2000
    # Gaussian kernel length scale as a multiple of sqrt(pixels). The median pairwise
    # distance of normalised images is 0.70-0.77 sqrt(pixels) on digits and CIFAR-10; a
    # fixed public constant near it, because the median of private data would leak
    # (0.4 scored within 2 points of 0.75 on digits).
    bandwidth: float = 0.75
    # Generator latent size and channel width at its lowest resolution: small, since it
    # only has to match a D x K target.
    latent_dim: int = 32
    width: int = 64
    # Adam steps fitting the generator to the released embedding (post-processing: free).
    # Digits plateau by 300 (88% pool accuracy at epsilon 1 for 300 and 1000 steps); 500
    # keeps a margin for 32x32 data while the default CPU run stays within ~2 minutes.
    steps: int = 500
    # Generated images per class per step: the generated mean's sampling error
    # (~1/sqrt(32) of the feature spread) is below the release noise at useful epsilons;
    # 64 gave the same accuracy on digits at twice the cost.
    batch_per_class: int = 32
    # Adam's default step size: the loss is a smooth MMD, no tuning needed on digits.
    lr: float = 0.001


@dataclass
class DpSgdConfig:
    """A conditional VAE trained with DP-SGD (opacus; Poisson sampling, per-sample clipping)."""

    # Poisson sampling rate per step. Large batches beat many steps under DP-SGD (the
    # noise on the mean gradient is sigma*C/(qN)): 0.2 gave 74% pool accuracy on digits at
    # epsilon 10 where 0.05 gave 31-34%.
    sample_rate: float = 0.2
    # Passes over the data; steps = ceil(epochs / sample_rate) unless steps is set.
    epochs: float = 20.0
    # Exact number of DP-SGD steps (null = from epochs).
    steps: Optional[int] = None
    # Per-sample gradient clip norm C (the sensitivity); 1.0 is the DP-SGD convention and
    # Adam makes the update size independent of it.
    clip_norm: float = 1.0
    # Adam step size: 0.003 beat 0.001 and 0.01 on digits under noise.
    lr: float = 0.003
    # Small networks: the noise norm grows with sqrt(parameters). Width 16 / latent 8
    # beat 32 / 16 on digits at both epsilon 1 and 10 (46% vs 13%, 74% vs 61%).
    latent_dim: int = 8
    width: int = 16
    # Observation variance of the Gaussian decoder in [-1, 1] pixel units: 1.0 weighs
    # the KL enough that prior samples look like data (0.1 and 0.02 were far worse
    # under noise; 3.0 blurs the classes together).
    obs_var: float = 1.0


@dataclass
class PeConfig:
    """Private Evolution (Lin et al., ICLR 2024): noisy nearest-neighbour votes on candidates."""

    # public_folder (images the user declares public) | diffusers (a local pretrained model)
    source: str = "public_folder"
    # public_folder: folder of public images (class subfolders or flat); labels are ignored.
    public_root: Optional[str] = None
    # diffusers: local folder of a saved UNet2DModel (+ scheduler), e.g. a DDPMPipeline.
    diffusers_path: Optional[str] = None
    # diffusers: denoising steps of the full reverse process (SDEdit uses the tail of it).
    diffusers_steps: int = 50
    # diffusers: images per model call (memory only, not results).
    diffusers_batch_size: int = 64
    # Voting rounds; each is one Gaussian release of all class histograms (steps = rounds).
    rounds: int = 5
    # Candidates per class per round. Votes per bin ~ N_c / population must clear the noise.
    population: int = 200
    # Voting space: random_convnet (a fixed, randomly initialised ConvNet: data-independent
    # and less pixel-literal) | pixels.
    embedding: str = "random_convnet"
    # Noisy counts below threshold x sigma are zeroed: an empty bin passes 2 sigma w.p. 2.3%.
    threshold: float = 2.0
    # Variation strength in [0, 1], decreasing linearly over rounds (coarse to fine), as in PE.
    strength_start: float = 0.8
    strength_end: float = 0.3
    # public_folder variations: std of Gaussian pixel noise in [0, 1] units at strength 1.
    pixel_noise: float = 0.05


@dataclass
class GeneratorConfig:
    # none | real (epsilon=inf only) | dp_merf | dp_sgd | pe
    name: str = "none"
    # Synthetic images per class in the pool; k-means needs >= ipc * multi_formation^2.
    # Every later stage trains on the pool, so its size sets the CPU cost of a run.
    pool_per_class: int = 200
    # Reuse a pool fitted with the same data, settings, noise multiplier and seed.
    cache: bool = True
    # null = $DPGD_CACHE_DIR or ~/.cache/dpgd/pools.
    cache_dir: Optional[str] = None
    # Epochs of the ConvNet trained on the pool for the pool's test accuracy (reporting
    # only, never used to select anything); 0 skips the report.
    report_epochs: int = 10
    dp_merf: DpMerfConfig = field(default_factory=DpMerfConfig)
    dp_sgd: DpSgdConfig = field(default_factory=DpSgdConfig)
    pe: PeConfig = field(default_factory=PeConfig)


@dataclass
class BudgetConfig:
    # Fractions of the total epsilon given to each component; they must sum to 1.
    name: str = "ndpdc"
    generator: float = 0.0
    matcher: float = 1.0
    expert: float = 0.0
    # Share of the total epsilon for the one noisy class histogram (dpgd.counts) that every
    # normaliser and size check reads instead of the private exact counts; the three
    # fractions above split the rest. 0.1 gives a count noise std of 19 (DP-GenG) / 29
    # (NDPDC) records at epsilon 1 and 2.4 / 3.5 at epsilon 10, and raises the other
    # components' noise multipliers by only 1.5 % / 0.6 % (the planner composes all shares).
    counts: float = 0.1


@dataclass
class NoiseScheduleConfig:
    """How a DP component's noise multiplier changes across its steps (dpgd.privacy.schedules).

    sigma_t = s * r_t with r decreasing from about ``ratio`` to 1; the planner calibrates
    the scale s so the component's composed epsilon meets its share. Decaying noise spends
    the budget late, when the synthetic images (or the expert) are close and small noisy
    corrections matter most; early steps only need a coarse direction.
    """

    # constant | linear | exponential | step
    kind: str = "constant"
    # sigma_start / sigma_end (>= 1). 3 keeps the first steps usable: at epsilon 1 on
    # digits a constant sigma is ~6, so the schedule runs ~12 -> ~4.
    ratio: float = 3.0
    # step: number of equal phases, sigma dropping geometrically between them.
    phases: int = 3
    # linear/exponential: constant pieces the schedule is quantised into (= ledger records
    # per component). The run uses the quantised sigmas, so the ledger is exact; 20 pieces
    # are within 6% of the continuous curve at ratio 3 and keep planning to a few seconds.
    pieces: int = 20


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
    # random (a fresh ConvNet each iteration, NDPDC) | pool_trained (networks trained on the
    # DP-generated pool, DP-GenG; free by post-processing)
    extractors: str = "random"
    # pool_trained: independently seeded networks, each kept at several checkpoints, so
    # matching sees early (generic) and late (class-specific) features.
    num_extractors: int = 3
    extractor_epochs: int = 15
    extractor_checkpoints: int = 3
    dsa: bool = True
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"
    # dp_feature: the noise multiplier across iterations (constant = NDPDC).
    noise_schedule: NoiseScheduleConfig = field(default_factory=NoiseScheduleConfig)


@dataclass
class ExpertConfig:
    # none | dp_sgd (pre-trained on the pool, DP-SGD fine-tuned on the private data)
    name: str = "none"
    # Pre-training on the pool: free (post-processing).
    pretrain_epochs: int = 15
    pretrain_lr: float = 0.01
    # DP-SGD fine-tuning: Poisson rate, number of steps, per-sample clip, SGD step size.
    sample_rate: float = 0.05
    steps: int = 200
    clip_norm: float = 1.0
    lr: float = 0.1
    # Which weights DP-SGD fine-tunes: all | head (the final linear layer only; the features
    # learned on the pool stay frozen). DP-SGD's noise norm grows with the square root of the
    # number of trained weights while the clipped signal does not, so on small private sets
    # the head (~20k weights for CIFAR's ConvNet, ~16x fewer) is the standard choice of DP
    # transfer learning; it is also several times cheaper per step.
    finetune: str = "all"
    # Alignment loss during matching: weight * KL(pool class prediction || prediction on the
    # distilled image) at temperature T, plus ce_weight * cross-entropy to the label.
    align_weight: float = 1.0
    ce_weight: float = 0.1
    temperature: float = 4.0
    # Pool images per class whose mean soft prediction is the class target.
    reference_per_class: int = 200
    # dp_sgd: the noise multiplier across DP-SGD steps (constant = plain DP-SGD).
    noise_schedule: NoiseScheduleConfig = field(default_factory=NoiseScheduleConfig)


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
    # false: DP noise and Poisson masks come from secret per-run randomness (dpgd.privacy.
    # randomness). true derives them from the public seed, for tests and debugging: anyone
    # with the seed can then regenerate the noise, so the run is marked NOT DP.
    reproducible_noise: bool = False
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

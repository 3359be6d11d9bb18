"""Structured schemas for every config group, and :func:`compose`.

**One home for each default and its reason.** Every setting's default value lives here,
with the comment saying why. The defaults describe the default run, DP-GenG on digits:
each schema's ``name`` is the option ``configs/train.yaml`` selects for its group. A YAML
option in ``configs/<group>/`` states only its ``name`` and the values in which it differs
from these defaults, and an experiment preset in ``configs/experiment/`` only what it
changes; so every file reads as a diff (``dpgd --cfg job`` prints the composed result).

``configs/train.yaml`` starts its defaults list with ``TrainConfig`` (``train_schema``),
so every group node is typed by its schema: a mistyped key or a wrongly typed value fails
at composition with a message naming the key.

Values that need more than a type check (epsilon > 0, fractions summing to 1, IPC no
larger than a class) are checked in :mod:`dpgd.validation` before any data is read.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, MissingMandatoryValue, OmegaConf

from dpgd.errors import ConfigError
from dpgd.mia.settings import MiaConfig


@dataclass
class DatasetConfig:
    # digits | cifar10 | cifar100 | tinyimagenet | celeba | imagefolder. digits is
    # scikit-learn's bundled 8x8 set: embedded, offline, about a minute per CPU run.
    name: str = "digits"
    # Folder holding the data; null = $DPGD_DATA_ROOT or ~/.cache/dpgd/data.
    root: Optional[str] = None
    # torchvision sets only (cifar10/cifar100): fetch the files if they are missing. Off, so
    # nothing reaches the network unasked; set download=true once.
    download: bool = False
    # Resize images to this side length; null keeps the native size (built-in sets only:
    # imagefolder requires it, so the release's shape never depends on the private files).
    image_size: Optional[int] = None
    # imagefolder: channels every image is converted to (1 = greyscale, 3 = RGB); a config
    # value, never inferred from the files (one odd image must not change the release).
    channels: int = 3
    # celeba: the binary attribute used as the label (Male: the paper's CelebA task).
    target_attr: str = "Male"
    # Keep at most this many train images per class (null = all): for quick runs.
    max_train_per_class: Optional[int] = None
    # Keep at most this many test images (null = all).
    max_test: Optional[int] = None


@dataclass
class ModelConfig:
    # convnet (the dataset-distillation ConvNet: depth x (conv 3x3, norm, ReLU, avg pool))
    # | resnet18 (GroupNorm, no in-place ops, so opacus can compute per-sample gradients)
    name: str = "convnet"
    # Channels of every conv layer: the literature's ConvNet width.
    width: int = 128
    # null = adapt to the image size (3 for 32x32, 2 for 8x8, 4 for 64x64).
    depth: Optional[int] = None
    # instancenorm (the literature's ConvNet) | groupnorm | none
    norm: str = "instancenorm"


@dataclass
class InitConfig:
    # kmeans (DP-GenG: per class, k-means on the DP pool, keep the pool image nearest each
    # centroid; post-processing, free) | random_pool (its ablation) | noise (NDPDC) |
    # real (epsilon=inf only). kmeans and random_pool need a generator pool.
    name: str = "kmeans"
    # kmeans: cluster in the embedding of a ConvNet trained on the pool (pool_net, the
    # paper's choice: semantic neighbours, not pixel neighbours; network 0 of pool_nets) or
    # in raw pixels (pixels).
    feature_space: str = "pool_net"
    # Images packed per side into each stored image: 1 = off, 2 = four half-size images
    # per stored image (the paper's factor 2); kmeans/random_pool only.
    multi_formation: int = 1
    # Lloyd iterations per k-means run; pools of thousands converge in far fewer.
    kmeans_iters: int = 100
    # k-means restarts (best inertia kept): 3 removes most bad seeds at 3x the cost.
    kmeans_restarts: int = 3
    # kmeans/random_pool: iterations of distribution matching (DM: random ConvNets, no
    # clipping, no noise) of the selected images to the WHOLE pool, before any private
    # matching. Post-processing of the DP pool (free). A pool of 200 images a class trains
    # better networks than 10 of its medoids (PE over public32 at epsilon 1: ~32 % vs
    # ~25 %); DM compresses the pool instead of sampling it. 0 = off.
    pool_matching_iterations: int = 0
    # Pool images per class in each DM target (DM's batch_real).
    pool_matching_batch: int = 256


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

    # auto (public when the run has public knowledge, public=folder; else public_folder) |
    # public (the run's public pool and network: random API = pool images, variation API =
    # nearest public neighbours in the public embedding; dpgd.generators.pe_public) |
    # public_folder (a folder of its own, pe.public_root, with affine variations) |
    # diffusers (a local pretrained model)
    source: str = "auto"
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
    # Voting space: auto (public_net with public knowledge, else random_convnet) | public_net
    # (the public network's embedding: semantic neighbours) | random_convnet (a fixed,
    # randomly initialised ConvNet: data-independent and less pixel-literal) | pixels.
    # source=public always votes in the public embedding.
    embedding: str = "auto"
    # Noisy counts below threshold x sigma are zeroed: an empty bin passes 2 sigma w.p. 2.3%.
    threshold: float = 2.0
    # Variation strength in [0, 1], decreasing linearly over rounds (coarse to fine), as in PE.
    strength_start: float = 0.8
    strength_end: float = 0.3
    # public_folder variations: std of Gaussian pixel noise in [0, 1] units at strength 1.
    pixel_noise: float = 0.05
    # source=public: round-0 candidates. clusters (the pool image nearest each of
    # `population` k-means centres of the public embedding: an even cover of the pool, the
    # same for every class) | random (uniform pool draws per class, PE's random API).
    initial: str = "clusters"
    # source=public: the variation API picks one of the k nearest public neighbours of a
    # kept candidate, k shrinking geometrically from neighbours_start (after round 1) to
    # neighbours_end (the final pool's neighbourhoods): coarse to fine, as Sim-PE's
    # 1000 -> 20 over a 50k-image simulator; here 21k images and few rounds.
    neighbours_start: int = 100
    neighbours_end: int = 10


@dataclass
class GeneratorConfig:
    # dp_merf (needs no public model: the CPU default) | dp_sgd | pe | none |
    # real (epsilon=inf only)
    name: str = "dp_merf"
    # Synthetic images per class in the pool; k-means needs >= ipc * multi_formation^2.
    # 200: enough for k-means at IPC 50 (or IPC 10 x 4 tiles) and cheap to train on; every
    # later stage trains on the pool, so its size sets the CPU cost of a run. The paper
    # presets raise it.
    pool_per_class: int = 200
    # Reuse a pool fitted with the same data, settings, noise multiplier and seed.
    cache: bool = True
    # null = $DPGD_CACHE_DIR or ~/.cache/dpgd/pools.
    cache_dir: Optional[str] = None
    # Report the pool: the test accuracy of pool network 0 (pool_nets; trained for this
    # alone only when no stage needs it) and an image grid. Reporting only, never used to
    # select anything; false skips it.
    report: bool = True
    dp_merf: DpMerfConfig = field(default_factory=DpMerfConfig)
    dp_sgd: DpSgdConfig = field(default_factory=DpSgdConfig)
    pe: PeConfig = field(default_factory=PeConfig)


@dataclass
class BudgetConfig:
    # dpgeng | ndpdc (the whole budget on matching). Fractions of the total epsilon given
    # to each component; they must sum to 1 (the planner then scales all shares by one
    # factor so the composed PLD epsilon meets the target; shares of components that are
    # switched off go to the others in proportion). DP-GenG's split is chosen a priori,
    # not on test accuracy: the pool feeds every later stage (initialisation, extractors,
    # expert pre-training, alignment references), so the generator's single release gets
    # the largest share; matching, many subsampled releases that refine the set, gets 0.3;
    # the expert only fine-tunes a pool-pretrained classifier, so 0.2.
    name: str = "dpgeng"
    generator: float = 0.5
    matcher: float = 0.3
    expert: float = 0.2
    # Share of the total epsilon for the one noisy class histogram (dpgd.counts) that every
    # normaliser and size check reads instead of the private exact counts; the three
    # fractions above split the rest. 0.1 gives a count noise std of 19 (DP-GenG) / 29
    # (NDPDC) records at epsilon 1 and 2.4 / 3.5 at epsilon 10, and raises the other
    # components' noise multipliers by only 1.5 % / 0.6 % (the planner composes all shares).
    counts: float = 0.1
    # Share of the total epsilon for the DP selection of the released set (dpgd.selection),
    # also off the top; unused (and spent elsewhere) when selection=none or no matcher
    # runs. 0.1 with 2 candidates: the released gain of the end over the start has noise
    # std ~20 records at epsilon 1 (1.4 points of accuracy on digits' ~1,440 train records,
    # 0.4 on cifar10-mini's 5,000; ~2.4 records at epsilon 10), so a 3-point difference is
    # found ~98 % of the time on digits; it raises the generator's and matcher's noise
    # multipliers by ~2 %. (Releasing all 3 counts of 3 candidates at 0.05 gives a std of 69
    # records: too coarse for digits.)
    selection: float = 0.1


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
class PoolNetsConfig:
    """The networks trained on the DP pool (dpgd.pool_networks), trained once per pool and
    shared by matching's extractors, the k-means embedding, the expert and the report."""

    # Independently seeded networks; matching draws from all of them (others use network 0).
    # 1 (the snapshots of one network) measured as good as 3 at a third of the cost
    # (cifar10-mini dpgeng, 3 seeds: eps 1 27.68 +- 0.35 vs 28.07 +- 1.21, eps 10 32.62 +-
    # 0.36 vs 31.05 +- 0.30; digits within one std; docs/results.md).
    count: int = 1
    # Epochs on the pool (the evaluation protocol's SGD without DSA, constant lr).
    epochs: int = 15
    # Snapshots per network at evenly spaced epochs (early = generic, late = class-specific).
    snapshots: int = 3
    # Reuse networks trained on the same pool with the same settings (beside the pool cache).
    cache: bool = True


@dataclass
class MatcherConfig:
    # dp_feature (NDPDC's DP feature matching: per iteration, Poisson-sample each class at
    # sample_rate, clip each real embedding to clip_norm, sum per class and add
    # N(0, (sigma*C)^2) once) | dm (no clipping, no noise: epsilon=inf only) | none
    name: str = "dp_feature"
    # Matching iterations; null: chosen after the count release by the information rule
    # (dpgd.budget.with_iterations): from min_iterations, doubled while doubling adds more
    # than information_gain to the run's summed squared signal-to-noise, up to
    # max_iterations (non-private and dm runs take max_iterations).
    iterations: Optional[int] = None
    min_iterations: int = 200
    # 800 (200 doubled twice): a dpgeng run on 40,000 CIFAR-10 records fits 30 minutes on 2
    # CPU cores (docs/performance.md); the paper presets set their own.
    max_iterations: int = 800
    information_gain: float = 0.25
    # Step size of the synthetic images (SGD on pixels, momentum below) for the loss of
    # dpgd.matching.loop.matching_loss: measured in the extractor's own feature scale (so
    # clipping does not shrink the step) and per image (so IPC does not). 0.4 is NDPDC's
    # step at IPC 10 (its loss on sums of group L=50 clipped embeddings, step 1: L^2 / rho^2
    # ~ 4 times DM's step, DM being 1.0 on means of raw features at IPC 10, i.e. 0.1 here).
    # cifar10-mini, epsilon=inf, 200 iterations: 0.1 -> 36.5 %, 0.4 -> 39.15 % (NDPDC's
    # code: 39.0 %).
    lr_images: float = 0.4
    # The matching step on a noisy release is lr_images x snr^2 / (snr^2 + half_step_snr^2),
    # snr = q N_c / (sigma sqrt(d)) averaged over classes (public: the plan, the released
    # counts, the embedding size; C cancels): the Wiener weight of a noisy residual whose
    # signal part has norm ~ half_step_snr C. A start near the target (a generated pool)
    # loses to noisy steps, a noise start gains from them. Measured on cifar10-mini, 200
    # iterations (docs/results.md): NDPDC at epsilon=inf 0.4 beats 0.1 (39.15 vs 36.5 %);
    # at epsilon 1 (snr 0.2) 28-30 % for steps 0.08-0.4; DP-GenG at epsilon 1 (snr 0.1)
    # 24.4 % at 0.4, 26.95 % at 0.1, 29.35 % at ~0.0015.
    half_step_snr: float = 0.5
    momentum: float = 0.5
    # Poisson sample rate per class for dp_feature; dm draws batch_real per class.
    sample_rate: float = 0.1
    # Cap on the expected records per class per iteration (NDPDC's group size L): the run
    # uses q = min(sample_rate, group_size * K / N) with N the released count (public).
    # At a fixed epsilon the noise multiplier grows about in proportion to q, so the
    # per-iteration signal-to-noise hardly depends on q while the cost grows with it
    # (eps 1, 1000 iterations, 4,000 records a class: SNR 0.73 at q=0.1, 0.65 at
    # q=0.0125, 8x cheaper). 50 keeps cifar10-mini's q=0.1; null: always sample_rate.
    group_size: Optional[float] = 50.0
    batch_real: int = 256
    clip_norm: float = 1.0
    # pool_trained (networks trained on the DP-generated pool, DP-GenG; free by
    # post-processing; needs a generator) | random (a fresh ConvNet each iteration, NDPDC)
    extractors: str = "pool_trained"
    # pool_trained: every snapshot of the pool networks (pool_nets), so matching sees early
    # (generic) and late (class-specific) features.
    dsa: bool = True
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"
    # dp_feature: when the private data is read. per_iteration (NDPDC): a fresh Poisson
    # sample and one Gaussian release every iteration. once (pool_trained extractors only):
    # each extractor's class means over the whole train set are released once (sample rate
    # 1, one release per extractor) and reused as fixed targets by every iteration
    # (post-processing), so iterations cost no budget and no pass over the private data.
    release: str = "per_iteration"
    # flat (the final feature map, width x h x w values, as DM/NDPDC match) | pooled (averaged
    # over positions: width values). The noise norm of a release grows with sqrt(dimension)
    # while the clipped signal does not.
    embedding: str = "flat"
    # release=once: DSA transforms (drawn from the public seed) averaged per record in each
    # released target; every iteration then transforms the synthetic images by one of them.
    augmentations: int = 4
    # release=once: shrink each released class mean towards the synthetic initialisation's
    # (positive-part James-Stein, from the known noise std: post-processing). At a low
    # signal-to-noise ratio the images then stay near a good start instead of chasing noise.
    shrinkage: bool = True
    # dp_feature: the noise multiplier across iterations (constant = NDPDC).
    noise_schedule: NoiseScheduleConfig = field(default_factory=NoiseScheduleConfig)


@dataclass
class SelectionConfig:
    """Which point of the matching trajectory is released (dpgd.selection).

    Whether noisy matching improves the pool's start depends on the private data (it lost
    5.6 points on digits and gained 6 on cifar10-mini at the same predicted signal-to-noise;
    docs/results.md), so the run asks the data, with DP: a fresh network is trained on each
    candidate (public work), its correct predictions on the private train split are
    counted, the gains over the start are released with Gaussian noise and the best
    candidate is kept.
    """

    # dp_accuracy (the DP selection above) | none (release the end of matching). Without
    # a matcher there is one candidate: nothing runs and no budget is spent.
    name: str = "dp_accuracy"
    # Candidates evenly spaced along matching, the start and the end included. Each one
    # adds a network to train and grows the gain noise as sqrt(candidates - 1); 2 (the pool's
    # k-means start or the matched set) because half-way scored below both on digits at
    # epsilon 1 (noisy train accuracy 67 vs 89 / 82 %, one run).
    candidates: int = 2
    # Epochs of the network trained on each candidate (the evaluation's optimiser, DSA and
    # batch size): enough to rank sets, not to report them. 50 (against 100) kept the sign of
    # every start-vs-end margin above 1 point on the 12 candidate pairs of the selection's
    # measurement runs (cifar10-mini: 5.5-8.6 points at 50 epochs, 5.3-9.4 at 100; the count
    # noise was 0.6 at epsilon 1) at half the stage's cost (docs/results.md "DP selection").
    epochs: int = 50


@dataclass
class ExpertConfig:
    # dp_sgd (pre-trained on the DP pool, free; fine-tuned on the private data with DP-SGD:
    # opacus, Poisson sampling at sample_rate, per-sample clip clip_norm; then used in the
    # alignment loss during matching) | pool (pool network 0 itself, not fine-tuned: no
    # private data, no budget) | none
    name: str = "dp_sgd"
    # The expert starts from pool network 0 (pool_nets): pre-trained on the pool, free.
    # DP-SGD fine-tuning: Poisson rate, number of steps, per-sample clip, SGD step size.
    sample_rate: float = 0.05
    # Cap on the expected DP-SGD batch: q = min(sample_rate, batch_size / N), N the
    # released count. As for the matcher, a step's noise-to-signal hardly depends on q at
    # a fixed epsilon while its cost grows with it (40,000 records: 2,000 -> 256 per step).
    # 256 keeps cifar10-mini's q=0.05; null: always sample_rate.
    batch_size: Optional[float] = 256.0
    steps: int = 200
    clip_norm: float = 1.0
    lr: float = 0.1
    # Which weights DP-SGD fine-tunes: auto | all | head (the final linear layer only; the
    # features learned on the pool stay frozen). DP-SGD's noise norm grows with the square
    # root of the number of trained weights while the clipped signal does not. auto reads
    # the predicted noise-to-signal of a step, sigma sqrt(weights) / (q N) (public: the
    # plan's sigma, the architecture, the released count N): all weights if it is at most
    # max_noise_to_signal, else the head if its is, else no fine-tuning (the expert is pool
    # network 0 and the budget is re-planned without it, after the count release).
    finetune: str = "auto"
    # Measured (expert test accuracy against the pool network it starts from; docs/results.md):
    # ratios of 1.3 and 3.0 improved the expert (digits head eps 10: 94 vs 91 %; CIFAR
    # slice all eps 10: 40 vs 27 %), 7.1 did not (digits all eps 10), 8-44 destroyed it
    # (28-63 % vs 86 % on digits, 15 vs 22 % on CIFAR at eps 1). 4 lies between.
    max_noise_to_signal: float = 4.0
    # lda (with public knowledge, public=folder; auto's third option): one Gaussian release of
    # the per-class sums of the private records' public embedding (the pretrained network's
    # centred unit features on the leading principal components of the PUBLIC pool), turned
    # into a linear-discriminant head on the public network with the public labels'
    # within- and between-class covariances (dpgd.expert.train_lda_expert). Components
    # kept: all 256 of the embedding; the shrinkage by the public between-class covariance
    # damps the noisy directions, so no cut-off is needed (cifar10-mini, noise draws of a dev
    # check, docs/public-knowledge.md: 64, 128 and 256 within noise of each other at epsilon 1,
    # 256 best at 10). The noise-to-signal the rule reads, sigma sqrt(dims) / (N/K), is then
    # 0.37 on cifar10-mini at epsilon 1, far below max_noise_to_signal.
    lda_dims: int = 256
    # Alignment loss during matching, summed over the distilled images (per-image units, as
    # the matching loss): weight * KL(pool class prediction || prediction on the distilled
    # image) at temperature T, plus ce_weight * cross-entropy to the label. At the matcher's
    # step 0.4 these give each image the alignment step of 1.0 / 0.1 on the mean over the
    # 100 images of IPC 10 at step 10, where they were measured (docs/results.md).
    align_weight: float = 0.25
    ce_weight: float = 0.025
    temperature: float = 4.0
    # Pool images per class whose mean soft prediction is the class target.
    reference_per_class: int = 200
    # dp_sgd: the noise multiplier across DP-SGD steps (constant = plain DP-SGD).
    noise_schedule: NoiseScheduleConfig = field(default_factory=NoiseScheduleConfig)


@dataclass
class EvaluationConfig:
    # fast (a short protocol for CPUs: the literature's optimiser, fewer epochs and runs) |
    # paper (the literature's 5 runs x 1000 epochs)
    name: str = "fast"
    # Fresh models trained on the distilled set; mean and std are over these runs.
    runs: int = 2
    epochs: int = 300
    # The literature's protocol (DC/DM/NDPDC): SGD lr 0.01, momentum 0.9, wd 5e-4, batch 256.
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
    # wandb (Weights & Biases, offline by default) | none
    name: str = "wandb"
    project: str = "dpgd"
    entity: Optional[str] = None
    group: Optional[str] = None
    job_type: str = "distill"
    tags: list[str] = field(default_factory=list)
    run_name: Optional[str] = None
    # offline (default: nothing hangs or prompts without an account; `wandb sync <run
    # folder>/wandb/offline-run-*` uploads later) | online | disabled
    mode: str = "offline"
    init_timeout_s: float = 30.0
    # Log the release (results.json, privacy_ledger.json, distilled.pt, distilled.png) as one
    # W&B artifact of type "release"; never the private/ folder.
    log_artifact: bool = True


@dataclass
class PublicConfig:
    """Public knowledge (dpgd.public): a folder of images the user declares public, and a
    network of the run's architecture pretrained on it. Used where the paper uses public
    knowledge: PE's candidates and votes, the start of the pool networks (hence of the
    expert and the k-means embedding) and the expert's private step (expert.finetune=lda).
    Nothing here reads private data or spends budget; the pool's fingerprint and image
    count are recorded in results.json (privacy.public_assumptions)."""

    # none (the default: nothing public fits 8x8 greyscale digits) | folder
    name: str = "none"
    # folder: any image tree, any size; images are resized (shorter side, centre crop) and
    # converted to the private data's size and channels. Subfolder paths are the labels
    # of public pretraining (e.g. tinyimagenet/<wnid>/*.png); files directly under root
    # are unlabelled. Never private data (e.g. never CIFAR for a CIFAR run).
    root: Optional[str] = None
    # Refuse a pool with fewer readable images (checked before any budget is spent): PE
    # needs candidates and pretraining needs examples; 100 keeps tiny test pools legal.
    min_images: int = 100
    # A user's own pretrained weights for the run's architecture (a state dict saved with
    # torch.save; the classifier's weights, if any, are ignored): used instead of public
    # pretraining. null: pretrain on the folder's labels (cached).
    weights: Optional[str] = None
    # Labels (subfolders) with fewer images are not classes of the pretraining: a class of
    # one image (public32's 1,000 imagenet-sample folders) teaches the network to recall
    # that image, and a thousand of them would make the head mostly memorisation. Their
    # images stay in the pool (PE candidates, neighbours). 10: far below Tiny-ImageNet's
    # 100 a class, far above a sample's 1.
    min_per_label: int = 10
    # Pretraining: epochs of SGD on the labelled public images with random flips and
    # shifts. The evaluation's optimiser (lr 0.01, momentum 0.9, wd 5e-4, batch 256, lr/10
    # at half-time). 8 epochs of this ConvNet on public32's 202 Tiny-ImageNet labels (~18
    # CPU-minutes on one thread) gave features whose non-private linear probe scores 54.1 %
    # on cifar10-mini; more epochs are a one-time cost (cached).
    epochs: int = 10
    lr: float = 0.01
    batch_size: int = 256
    # Snapshots kept at evenly spaced epochs (the last is the pretrained network):
    # matcher.extractors=public draws from all of them, as pool-trained extractors do.
    snapshots: int = 3
    # The public seed of pretraining (initial weights, batches, flips): fixed, not the run
    # seed, so runs with different seeds share one cached network.
    seed: int = 0
    # Reuse a network pretrained on the same files with the same settings and code:
    # stored under <generator cache folder>/public/ (the files are public: plain hashes).
    cache: bool = True


@dataclass
class TrainConfig:
    dataset: DatasetConfig = MISSING
    model: ModelConfig = MISSING
    init: InitConfig = MISSING
    generator: GeneratorConfig = MISSING
    budget: BudgetConfig = MISSING
    matcher: MatcherConfig = MISSING
    expert: ExpertConfig = MISSING
    selection: SelectionConfig = MISSING
    evaluation: EvaluationConfig = MISSING
    mia: MiaConfig = MISSING
    logger: LoggerConfig = MISSING
    public: PublicConfig = MISSING
    # Not a group (one option): the networks trained on the DP pool.
    pool_nets: PoolNetsConfig = field(default_factory=PoolNetsConfig)
    # Total privacy budget (epsilon, delta) of the whole release; epsilon=inf is a
    # deliberately non-private run.
    epsilon: float = 1.0
    # The field's convention; must be below 1/N for N private training records.
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
    # Save every finished stage's output (and matching's state every checkpoint_every
    # iterations) under private/checkpoints/, so that rerunning the same command into the
    # same folder (hydra.run.dir=...) continues an interrupted run (dpgd.checkpoints). While
    # the run is unfinished that folder also holds its secret noise key; false keeps
    # everything in memory.
    resume: bool = True
    # Matching iterations between two saved states: at most this much matching is redone
    # after a kill. Each save writes the images and the optimiser (~2x the distilled set).
    checkpoint_every: int = 100
    # CPU memory allocator (glibc): balanced (keep freed memory: ~1.3x faster CPU runs,
    # ~20% more peak memory) | fast (~2x, ~3x peak memory) | system (glibc defaults). See
    # dpgd.allocator for the measurements.
    cpu_allocator: str = "balanced"
    # Free text recorded in results.json: the default is DP-GenG; experiment presets set
    # their own name.
    method: str = "dpgeng"


# The schema of each config group (the fields of TrainConfig that are groups).
SCHEMAS: dict[str, type] = {
    "dataset": DatasetConfig,
    "model": ModelConfig,
    "init": InitConfig,
    "generator": GeneratorConfig,
    "budget": BudgetConfig,
    "matcher": MatcherConfig,
    "expert": ExpertConfig,
    "selection": SelectionConfig,
    "evaluation": EvaluationConfig,
    "mia": MiaConfig,
    "logger": LoggerConfig,
    "public": PublicConfig,
}


def register_configs() -> None:
    """Store the top-level schema where ``configs/train.yaml`` looks for it (``train_schema``);
    it types every group node through its fields."""
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)


def typed(cfg: DictConfig | TrainConfig) -> TrainConfig:
    """The composed config as plain dataclasses: converted once, at the edge (``train.run``,
    ``mia.run_attack``), so every stage reads typed fields and no OmegaConf node travels on.

    A required value left unset (``???``) fails here with one line naming the key.
    """
    if isinstance(cfg, TrainConfig):
        return cfg
    try:
        config = OmegaConf.to_object(cfg)
    except MissingMandatoryValue as err:
        key = err.full_key or "a required value"
        raise ConfigError(f"{key} is required but not set; set it on the command line, e.g. {key}=...") from None
    if not isinstance(config, TrainConfig):
        raise ConfigError("the config is not a dpgd TrainConfig; compose it with dpgd.config.compose(...)")
    return config


def plain(config: TrainConfig) -> dict[str, Any]:
    """The resolved config as a plain dict (results, W&B, ``distilled.pt``, cache keys)."""
    return dataclasses.asdict(config)


def compose(*overrides: str, config_name: str = "train") -> DictConfig:
    """The packaged config (``dpgd.configs``) composed with Hydra command-line overrides,
    as ``dpgd`` would run it, e.g. ``compose("experiment=ndpdc", "epsilon=10")``.

    The one place outside the CLI that composes configs (tests, scripts, notebooks). It
    registers the schemas first and works inside a running Hydra app too: an initialised
    global Hydra is set aside for the call and restored after it.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    outer = GlobalHydra.instance().hydra if GlobalHydra.instance().is_initialized() else None
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="dpgd.configs", version_base="1.3"):
            return hydra_compose(config_name=config_name, overrides=list(overrides))
    finally:
        if outer is not None:
            GlobalHydra.instance().clear()
            GlobalHydra.instance().initialize(outer)

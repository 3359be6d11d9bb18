"""The DP expert and its alignment loss (the ``expert`` group; DP-GenG stage 5).

The expert is a classifier pre-trained on the DP-generated pool (free: post-processing;
it starts from pool network 0 of :mod:`dpgd.pool_networks`) and fine-tuned on the private train set with DP-SGD through opacus: Poisson sampling at
rate q, per-sample gradients clipped to ``clip_norm``, Gaussian noise of std
``noise_multiplier * clip_norm`` added once per step by opacus's ``DPOptimizer``. Its
``steps`` releases at rate q are one :class:`~dpgd.privacy.SubsampledGaussian` record per
piece of constant noise (one for constant noise; ``expert.noise_schedule`` gives several),
declared to the ledger before fine-tuning starts; the optimiser's ``noise_multiplier`` is
set before every step from the same per-step list. ``expert.finetune=head`` trains only the
final linear layer (pool features frozen): far less noise per useful weight on small sets.
``expert.finetune=auto`` (the default) picks all weights, the head or no fine-tuning from the
predicted noise-to-signal of a step (:func:`choose_finetuning`; public inputs only), so the
expert is never a network the noise made worse than its start; ``expert=pool`` always uses
the start.

The alignment loss then uses only the expert and the pool, so it costs no extra privacy:
for each distilled image, KL(expert's mean soft prediction on same-class pool images ||
expert's soft prediction on the image), at temperature T, plus cross-entropy to its label.
"""

from __future__ import annotations

import copy
import logging
import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from opacus import GradSampleModule
from opacus.data_loader import DPDataLoader
from opacus.optimizers import DPOptimizer
from torch.utils.data import TensorDataset

from dpgd.counts import ClassCounts
from dpgd.data import ImageDataset
from dpgd.errors import ConfigError
from dpgd.models import frozen, model_from_weights, weights_of
from dpgd.privacy.components import PrivacyNeed, ReleaseLog
from dpgd.privacy.randomness import NoiseSource
from dpgd.privacy.schedules import relative_pieces
from dpgd.progress import progress_bar
from dpgd.tracking import Curve
from dpgd.training import test_accuracy

log = logging.getLogger(__name__)

EXPERT_SENSITIVITY = "per-sample gradient clipped to clip_norm (opacus DPOptimizer)"


FINETUNE_CHOICES = ("auto", "all", "head", "lda")
COMPONENT = "expert"
LDA_SENSITIVITY = (
    "one record adds its public-embedding projection (norm <= 1) to its own class's sum: L2 sensitivity 1"
)


def privacy_request(expert_cfg: Any) -> PrivacyNeed | None:
    """What the expert's fine-tuning will release; None when the stage is off."""
    if expert_cfg.name in ("none", "pool"):
        return None
    if expert_cfg.name != "dp_sgd":
        raise ConfigError(f"expert={expert_cfg.name} is unknown; choose dp_sgd, pool or none.")
    if expert_cfg.finetune not in FINETUNE_CHOICES:
        raise ConfigError(f"expert.finetune={expert_cfg.finetune} is unknown; choose auto, all, head or lda.")
    if expert_cfg.finetune == "lda":
        # One Gaussian release of all class sums (classes are disjoint): q = 1, one step.
        return PrivacyNeed(COMPONENT, 1.0, 1, LDA_SENSITIVITY)
    steps = expert_cfg.steps
    return PrivacyNeed(COMPONENT, expert_cfg.sample_rate, steps, EXPERT_SENSITIVITY,
                       relative_pieces(expert_cfg.noise_schedule, steps))


def noise_to_signal(noise_multiplier: float, weights: int, sample_rate: float, records: float) -> float:
    """Predicted noise norm of one DP-SGD step's mean gradient over its signal bound.

    The noisy sum of clipped per-sample gradients is divided by the expected batch q*N: its
    noise has norm ~ sigma*C*sqrt(weights)/(q*N), while the clipped mean gradient has norm at
    most C. Public: sigma from the plan, the weight count from the architecture, N the
    released (noisy) record count.
    """
    return float(noise_multiplier) * math.sqrt(weights) / max(sample_rate * records, 1e-12)


@dataclass(frozen=True)
class FinetuneChoice:
    """What the expert stage runs: ``all`` | ``head`` | ``none`` (pool network 0 as it is),
    and the predicted noise-to-signal of fine-tuning all weights and the head."""

    finetune: str
    noise_to_signal: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"finetune": self.finetune, **{f"noise_to_signal_{k}": v for k, v in self.noise_to_signal.items()}}


def lda_noise_to_signal(noise_multiplier: float, dims: int, records: float, classes: int) -> float:
    """Predicted noise norm of a class sum of :func:`train_lda_expert` over its signal bound:
    sigma*sqrt(dims) against N/K records of norm at most 1 (public: the plan's sigma, the
    embedding's size, the released count)."""
    return float(noise_multiplier) * math.sqrt(dims) / max(records / max(classes, 1), 1e-12)


def choose_finetuning(expert_cfg: Any, noise_multipliers: Sequence[float], model: nn.Module,
                      records: float, lda_sigma: float | None = None, classes: int = 1) -> FinetuneChoice:
    """``expert.finetune=auto``: fine-tune all weights if their predicted noise-to-signal is at
    most ``expert.max_noise_to_signal``, else the head if its is, else (with public knowledge:
    ``lda_sigma`` is the noise multiplier the plan would give it) the linear-discriminant head
    from noisy class means (:func:`train_lda_expert`) if its is, else nothing (the share of
    the budget then goes to the other components). Reads public quantities only; the expert's test accuracy is never an
    input. An explicit ``all``/``head``/``lda`` is kept."""
    sigma = sum(noise_multipliers) / len(noise_multipliers) if noise_multipliers else 0.0
    weights = {"all": sum(p.numel() for p in model.parameters()),
               "head": sum(p.numel() for p in model.classifier.parameters())}
    ratios = {mode: noise_to_signal(sigma, count, expert_cfg.sample_rate, records) for mode, count in weights.items()}
    if lda_sigma is not None:
        ratios["lda"] = lda_noise_to_signal(lda_sigma, expert_cfg.lda_dims, records, classes)
    if expert_cfg.finetune != "auto":
        return FinetuneChoice(expert_cfg.finetune, ratios)
    for mode in ("all", "head", "lda"):
        if mode in ratios and ratios[mode] <= expert_cfg.max_noise_to_signal:
            return FinetuneChoice(mode, ratios)
    return FinetuneChoice("none", ratios)


def trainable_for_finetuning(model: nn.Module, finetune: str) -> list[nn.Parameter]:
    """The parameters DP-SGD updates; with ``head`` every other one is frozen."""
    if finetune == "head":
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        for parameter in model.classifier.parameters():
            parameter.requires_grad_(True)
    return [parameter for parameter in model.parameters() if parameter.requires_grad]


@dataclass
class Expert:
    model: nn.Module
    info: dict[str, float]

    def to_payload(self) -> dict[str, Any]:
        """Weights and info (a run's checkpoint): the fine-tuned expert is a DP release."""
        return {"weights": weights_of(self.model), "info": dict(self.info)}

    @classmethod
    def from_payload(cls, data: dict[str, Any], model_cfg: Any, dataset: ImageDataset) -> "Expert":
        model = model_from_weights(model_cfg, dataset.channels, dataset.num_classes, dataset.image_size,
                                   data["weights"])
        return cls(frozen(model, torch.device("cpu")), {k: float(v) for k, v in data["info"].items()})


def train_expert(
    expert_cfg: Any,
    start: nn.Module,
    dataset: ImageDataset,
    noise_multiplier: float | Sequence[float] | None,
    device: torch.device,
    progress: bool = True,
    *,
    noise: NoiseSource,
    counts: ClassCounts,
    releases: ReleaseLog | None = None,
    finetune: str | None = None,
    curve: Curve | None = None,
) -> Expert:
    """DP-SGD fine-tune a copy of ``start`` (pool network 0: pre-trained on the pool, free)
    on ``dataset`` (no noise if multiplier is None).

    ``noise_multiplier`` None means a deliberately non-private run (``epsilon=inf``):
    gradients are still clipped, but no noise is added. A sequence gives the sigma of
    every step (a noise schedule; its length must be ``expert_cfg.steps``). ``finetune``
    (``all`` | ``head``) overrides ``expert_cfg.finetune``; ``auto`` must be resolved first
    (:func:`choose_finetuning`: switching the stage off changes the budget plan). ``curve``
    gets the model's test accuracy (public split; the model is DP) at ~10 evenly spaced
    steps before the last (the pipeline logs the final one); never a loss on the private
    batches, which is not DP.
    """
    mode = finetune or expert_cfg.finetune
    if mode not in ("all", "head"):
        raise ConfigError(f"train_expert needs finetune=all or head, got {mode!r} (resolve auto with "
                          "choose_finetuning before the plan is used).")
    steps = expert_cfg.steps
    if noise_multiplier is None or isinstance(noise_multiplier, (int, float)):
        sigmas = [float(noise_multiplier or 0.0)] * steps
    else:
        sigmas = [float(v) for v in noise_multiplier]
        if len(sigmas) != steps:
            raise ConfigError(f"the expert's noise schedule has {len(sigmas)} entries for expert.steps={steps}")
    started = time.perf_counter()
    model = copy.deepcopy(start).to(device)
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    model.train()
    trainable = trainable_for_finetuning(model, mode)
    private = TensorDataset(dataset.train_images, dataset.train_labels)
    sample_rate = expert_cfg.sample_rate
    # Poisson masks and noise from the run's secret source; the expected batch q*N that
    # opacus divides the noisy sum by uses the released (noisy) total, not the exact N.
    loader = DPDataLoader(private, sample_rate=sample_rate, generator=noise.generator("expert", "sampling"))
    module = GradSampleModule(model.to(device))
    optimizer = DPOptimizer(
        torch.optim.SGD(trainable, lr=expert_cfg.lr, momentum=0.9),
        noise_multiplier=sigmas[0] if sigmas else 0.0,
        max_grad_norm=expert_cfg.clip_norm,
        expected_batch_size=max(1, round(sample_rate * counts.total)),
        generator=noise.generator("expert", "noise", device=device),
    )
    # opacus calls the step hook right after add_noise: one record per noisy step.
    log_releases = releases if releases is not None else ReleaseLog(COMPONENT)
    optimizer.attach_step_hook(
        lambda opt: log_releases.record(opt.noise_multiplier) if opt.noise_multiplier > 0 else None)
    done = 0
    bar = progress_bar(total=steps, desc="expert DP-SGD", disable=not progress, leave=False)
    while done < steps:
        for images, labels in loader:
            if done >= steps:
                break
            images, labels = images.to(device), labels.to(device)
            optimizer.zero_grad(set_to_none=True)
            if len(labels):
                loss = F.cross_entropy(module(images), labels)
                with warnings.catch_warnings():
                    # Frozen features (finetune=head): opacus's hooks see inputs that need no
                    # gradient, which torch reports once per step; harmless here.
                    warnings.filterwarnings("ignore", message="Full backward hook is firing")
                    loss.backward()
            else:  # an empty Poisson batch still releases noise: take the (noise-only) step
                for parameter in trainable:
                    parameter.grad_sample = torch.zeros((0, *parameter.shape), device=device)
            optimizer.noise_multiplier = sigmas[done]  # opacus reads it at every step
            optimizer.step()
            done += 1
            bar.update(1)
            if curve is not None and done % max(1, steps // 10) == 0 and done < steps:  # the stage logs the last
                curve(done, {"test_acc": split_accuracy(model, dataset)})
    bar.close()
    # Drop opacus's hooks and per-sample gradients: the expert is used as a plain network.
    model = module.to_standard_module()
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    info = {"seconds": time.perf_counter() - started, "steps": float(done),
            "trained_weights": float(sum(p.numel() for p in trainable))}
    log.info("expert: %d DP-SGD steps at q=%.4g on %d weights (%s), noise multiplier %.4g -> %.4g", done,
             sample_rate, info["trained_weights"], mode, sigmas[0] if sigmas else 0.0, sigmas[-1] if sigmas else 0.0)
    return Expert(model, info)


def release_feature_sums(embedded: torch.Tensor, labels: torch.Tensor, num_classes: int, noise_multiplier: float,
                         generator: torch.Generator) -> torch.Tensor:
    """The one Gaussian release of ``expert.finetune=lda``: per-class sums of the records'
    embeddings, each clipped to L2 norm 1 (the public projection already has norm <= 1 up to
    rounding; the clip makes the sensitivity exact), plus ``N(0, (noise_multiplier * 1)^2)``
    per value. Classes are disjoint, so one record moves one sum by at most 1."""
    norms = embedded.norm(dim=1, keepdim=True).clamp(min=1.0)
    sums = torch.zeros(num_classes, embedded.shape[1], dtype=embedded.dtype).index_add_(0, labels, embedded / norms)
    if noise_multiplier > 0:
        sums += torch.randn(sums.shape, generator=generator, dtype=sums.dtype) * (noise_multiplier * 1.0)
    return sums


def train_lda_expert(
    expert_cfg: Any,
    knowledge: Any,
    dataset: ImageDataset,
    noise_multiplier: float | None,
    pool_images: torch.Tensor,
    pool_labels: torch.Tensor,
    *,
    noise: NoiseSource,
    counts: ClassCounts,
    seed: int,
    releases: ReleaseLog | None = None,
) -> Expert:
    """``expert.finetune=lda``: the public network with a linear-discriminant head built from
    one release of noisy class means.

    Every private record is embedded by ``knowledge`` (:class:`~dpgd.public.PublicKnowledge`:
    the pretrained network's centred unit features on the first ``expert.lda_dims``
    principal components of the PUBLIC pool, so each has norm at most 1), the class sums are
    released once with ``N(0, sigma^2)`` per value (L2 sensitivity 1, classes disjoint) and
    divided by the released class counts N_k. Post-processing with public quantities only:

    * each noisy mean is shrunk towards their average by the public between-class covariance
      B (the covariance of the public labels' means; a Wiener filter against the known noise
      variance tau_k^2 = (sigma / N_k)^2): ``m_k <- mbar + B (B + tau_k^2 I)^-1 (m_k - mbar)``,
      so directions in which public classes do not differ are mostly noise and are damped;
    * classes are scored with the public within-class covariance W (shrunk by
      :data:`WITHIN_SHRINKAGE` towards its mean variance):
      ``a (z . S^-1 m_k - m_k . S^-1 m_k / 2)``, Fisher's linear discriminant; with
      ``z = P (f - c) / s`` (f the network's features, c and P the public centre and
      components, s the public median feature norm) it is a linear layer on f;
    * the logit scale ``a`` is fitted to the DP pool's labels.

    ``noise_multiplier`` None: no noise (epsilon=inf).
    """
    started = time.perf_counter()
    dims = min(int(expert_cfg.lda_dims), int(knowledge.components.shape[0]))  # a narrow network has fewer
    sigma = float(noise_multiplier or 0.0)
    embedded = knowledge.embed(dataset.train_images, dims=dims)  # (N, dims), norm <= 1
    sums = release_feature_sums(embedded, dataset.train_labels, dataset.num_classes, sigma,
                                noise.generator("expert", "noise"))
    del embedded
    if sigma > 0:
        (releases if releases is not None else ReleaseLog(COMPONENT)).record(sigma)
    sizes = counts.values.to(torch.float32).clamp(min=1.0)  # the released counts
    means = (sums / sizes[:, None]).double()
    within, between = (m.double() for m in knowledge.covariances(dims))
    eye = torch.eye(dims, dtype=torch.float64)
    ridge = 1e-6 * float(between.trace()) / dims
    average = means.mean(0)
    shrunk = torch.stack([
        average + torch.linalg.solve(between + ((sigma / float(n)) ** 2 + ridge) * eye, between @ (m - average))
        for m, n in zip(means, sizes)
    ])
    scatter = (1.0 - WITHIN_SHRINKAGE) * within + WITHIN_SHRINKAGE * float(within.trace()) / dims * eye
    directions = torch.linalg.solve(scatter, shrunk.T).T  # (K, dims): S^-1 m_k
    bias_z = -0.5 * (directions * shrunk).sum(1)
    # z = P (f - c) / s as a linear map of the features f: z = A f + b.
    projection = (knowledge.components[:dims] / knowledge.scale).double()  # (dims, D)
    offset = -(projection @ knowledge.center.double())
    weight = (directions @ projection).float()  # (K, D)
    bias = (directions @ offset + bias_z).float()
    model = knowledge.model(seed)
    scale = _fit_head_scale(model, weight, bias, pool_images, pool_labels)
    with torch.no_grad():
        model.classifier.weight.copy_(scale * weight)
        model.classifier.bias.copy_(scale * bias)
    info = {"seconds": time.perf_counter() - started, "steps": 1.0, "trained_weights": float(weight.numel()),
            "head_scale": float(scale)}
    log.info("expert: linear-discriminant head from noisy class means on %d public components, noise multiplier "
             "%.4g, logit scale %.3g", dims, sigma, scale)
    return Expert(frozen(model, torch.device("cpu")), info)


# Shrinkage of the public within-class covariance towards its mean variance: the public
# labels are other classes than the private ones, so their within-class spread is a guide,
# not the truth; 0.1 and 0.3 were within noise of each other on cifar10-mini.
WITHIN_SHRINKAGE = 0.1
# Candidate head scales (logits = a * discriminant score): the one whose softmax fits the
# pool's labels best is kept.
HEAD_SCALES = torch.logspace(-2, 2, 41)


@torch.no_grad()
def _fit_head_scale(model: nn.Module, weight: torch.Tensor, bias: torch.Tensor, pool_images: torch.Tensor,
                    pool_labels: torch.Tensor) -> float:
    """The scale of the head's logits with the least cross-entropy on the DP pool (its own
    labels: post-processing), so the alignment's soft predictions are neither flat nor
    one-hot for lack of a scale."""
    if pool_images.shape[0] == 0:
        return 1.0
    model = model.eval()
    features = torch.cat([model.embed(pool_images[s : s + 1024]) for s in range(0, pool_images.shape[0], 1024)])
    scores = features @ weight.T + bias
    losses = torch.stack([F.cross_entropy(a * scores, pool_labels) for a in HEAD_SCALES])
    return float(HEAD_SCALES[int(losses.argmin())])


def pool_expert(start: nn.Module) -> Expert:
    """``expert=pool``: pool network 0 itself is the expert (post-processing of the pool: no
    private data, no budget; the share goes to the other components)."""
    return Expert(frozen(copy.deepcopy(start), torch.device("cpu")), {"seconds": 0.0, "steps": 0.0,
                                                                      "trained_weights": 0.0})


def pool_accuracy(expert: Expert, dataset: ImageDataset) -> float:
    """Test accuracy of the expert (reporting only; nothing is selected on it)."""
    return split_accuracy(expert.model, dataset)


def split_accuracy(model: nn.Module, dataset: ImageDataset) -> float:
    """Accuracy on the public test split (the expert's curve and its final report)."""
    return test_accuracy(model, dataset.test_images, dataset.test_labels, 2048)


class ExpertAlignment:
    """The alignment loss: KL to same-class pool predictions plus cross-entropy to the label."""

    def __init__(
        self,
        expert: nn.Module,
        pool_images: torch.Tensor,
        pool_labels: torch.Tensor,
        *,
        num_classes: int,
        temperature: float,
        reference_per_class: int,
        align_weight: float,
        ce_weight: float,
        generator: torch.Generator,
        device: torch.device,
    ) -> None:
        self.expert = expert.to(device).eval()
        self.temperature = float(temperature)
        self.align_weight = float(align_weight)
        self.ce_weight = float(ce_weight)
        targets = []
        with torch.no_grad():
            for label in range(num_classes):
                index = torch.nonzero(pool_labels == label).flatten()
                if len(index) == 0:
                    raise ConfigError(f"the pool has no image of class {label}; the expert alignment needs some.")
                index = index[torch.randperm(len(index), generator=generator)[:reference_per_class]]
                logits = self.expert(pool_images[index].to(device)) / self.temperature
                targets.append(F.softmax(logits, dim=1).mean(0))
        self.targets = torch.stack(targets)  # (K, K): expert's mean soft prediction per class

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Summed over the images, like the matching loss (dpgd.matching.loop.matching_loss)
        is per image: the weights mean the same step for every IPC."""
        logits = self.expert(images)
        log_q = F.log_softmax(logits / self.temperature, dim=1)
        target = self.targets[labels]
        kl = (target * (target.clamp_min(1e-12).log() - log_q)).sum(1).sum() * self.temperature**2
        return self.align_weight * kl + self.ce_weight * F.cross_entropy(logits, labels, reduction="sum")

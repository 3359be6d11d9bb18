"""The networks that are trained on, and matched through, distilled sets.

``ConvNet`` is the dataset-distillation network of DC/DSA/DM/NDPDC, so accuracies compare
with the literature. ``ResNet18GN`` is a ResNet-18 that opacus accepts (GroupNorm, no
in-place ops), for DP-SGD experts and cross-architecture checks. Both expose ``embed``
(the features the matchers compare) and ``feature_dim``.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from dpgd.config import ModelConfig
from dpgd.errors import ConfigError

NORMS = ("instancenorm", "groupnorm", "none")

# DC's ConvNet "groupnorm" uses 4 groups; ResNets use the GroupNorm paper's 32.
CONVNET_GROUPS = 4
RESNET_GROUPS = 32


def make_norm(norm: str, channels: int, groups: int) -> nn.Module:
    """A batch-independent normalisation layer (BatchNorm would break per-sample gradients).

    ``instancenorm`` is ``GroupNorm(channels, channels)``: what the DC/DM code calls
    instance norm, and a module opacus supports.
    """
    if norm == "instancenorm":
        return nn.GroupNorm(channels, channels, affine=True)
    if norm == "groupnorm":
        return nn.GroupNorm(math.gcd(groups, channels), channels, affine=True)
    if norm == "none":
        return nn.Identity()
    raise ConfigError(f"model.norm={norm} is unknown; choose one of {', '.join(NORMS)}.")


def default_depth(image_size: tuple[int, int]) -> int:
    """Conv blocks for an image size: pool down to a 4x4 map, but use at least 2 blocks.

    Gives the literature's depths (32x32 -> 3, 64x64 -> 4, 128 -> 5) and 2 for 8x8 and
    16x16 (final maps 2x2 and 4x4), never pooling a side below one pixel.
    """
    side = min(image_size)
    if side < 2:
        raise ConfigError(f"images of size {tuple(image_size)} are too small for a ConvNet.")
    most = int(math.floor(math.log2(side)))  # pools before a side reaches 1 pixel
    return min(max(2, most - 2), most)


class ConvNet(nn.Module):
    """depth x [conv3x3 -> norm -> ReLU -> AvgPool2d(2)] -> linear, as in DC/DM/NDPDC."""

    def __init__(
        self,
        channels: int,
        num_classes: int,
        image_size: tuple[int, int],
        width: int = 128,
        depth: int = 3,
        norm: str = "instancenorm",
    ) -> None:
        super().__init__()
        height, wide = int(image_size[0]), int(image_size[1])
        if depth < 1:
            raise ConfigError(f"model.depth={depth} must be at least 1.")
        if min(height, wide) < 2**depth:
            raise ConfigError(
                f"model.depth={depth} pools {height}x{wide} images below one pixel; "
                f"use depth <= {int(math.floor(math.log2(min(height, wide))))} or depth=null."
            )
        layers: list[nn.Module] = []
        in_channels = channels
        for _ in range(depth):
            layers += [
                nn.Conv2d(in_channels, width, kernel_size=3, padding=1),
                make_norm(norm, width, CONVNET_GROUPS),
                nn.ReLU(inplace=False),
                nn.AvgPool2d(kernel_size=2, stride=2),
            ]
            in_channels = width
            height, wide = height // 2, wide // 2
        self.features = nn.Sequential(*layers)
        self.feature_dim = width * height * wide
        self.pooled_dim = width
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened features before the classifier (what DM/NDPDC match)."""
        return self.features(x).flatten(1)

    def embed_pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Features averaged over positions (``width`` values, not width x h x w): a DP
        release of these has sqrt(h*w) times less noise norm for the same sigma."""
        return self.features(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


class _BasicBlock(nn.Module):
    """ResNet basic block written without in-place ops (opacus hooks need the inputs)."""

    def __init__(self, in_planes: int, planes: int, stride: int, norm: str, groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.norm1 = make_norm(norm, planes, groups)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.norm2 = make_norm(norm, planes, groups)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                make_norm(norm, planes, groups),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18GN(nn.Module):
    """ResNet-18 with a CIFAR stem (3x3 conv, no max-pool) and GroupNorm instead of BatchNorm."""

    def __init__(
        self,
        channels: int,
        num_classes: int,
        groups: int = RESNET_GROUPS,
        width: int = 64,
        norm: str = "groupnorm",
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(channels, width, 3, stride=1, padding=1, bias=False),
            make_norm(norm, width, groups),
            nn.ReLU(inplace=False),
        )
        blocks: list[nn.Module] = []
        in_planes = width
        for stage, planes in enumerate((width, 2 * width, 4 * width, 8 * width)):
            for index in range(2):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(_BasicBlock(in_planes, planes, stride, norm, groups))
                in_planes = planes
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = in_planes
        self.pooled_dim = in_planes
        self.classifier = nn.Linear(in_planes, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Globally pooled features before the classifier."""
        return self.pool(self.blocks(self.stem(x))).flatten(1)

    def embed_pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Already pooled: the same as :meth:`embed`."""
        return self.embed(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


def build_model(cfg: ModelConfig, channels: int, num_classes: int, image_size: tuple[int, int]) -> nn.Module:
    """The network a ``model`` config names, initialised from the global CPU RNG.

    Callers that need reproducible weights seed it (``seeded_model``).
    ``depth`` applies to the ConvNet only; ``width`` is the ConvNet width or the ResNet base width.
    """
    if cfg.norm not in NORMS:
        raise ConfigError(f"model.norm={cfg.norm} is unknown; choose one of {', '.join(NORMS)}.")
    if cfg.width < 1:
        raise ConfigError(f"model.width={cfg.width} must be positive.")
    if cfg.name == "convnet":
        depth = default_depth(image_size) if cfg.depth is None else cfg.depth
        return ConvNet(channels, num_classes, image_size, width=cfg.width, depth=depth, norm=cfg.norm)
    if cfg.name == "resnet18":
        return ResNet18GN(channels, num_classes, width=cfg.width, norm=cfg.norm)
    raise ConfigError(f"model.name={cfg.name} is unknown; choose convnet or resnet18.")


@contextmanager
def seeded_cpu_rng(seed: int) -> Iterator[None]:
    """Seed only the global CPU generator inside the block, restoring it afterwards.

    ``nn.Module`` constructors draw their initial weights from it; forking keeps the
    caller's global state (and every CUDA generator) untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


def seeded_model(
    cfg: ModelConfig, channels: int, num_classes: int, image_size: tuple[int, int], seed: int
) -> nn.Module:
    """``build_model`` with initial weights that depend only on ``seed``."""
    with seeded_cpu_rng(seed):
        return build_model(cfg, channels, num_classes, image_size)


def weights_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """A model's state as CPU tensors (for checkpoints and caches; ``weights_only`` loadable)."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def model_from_weights(cfg: ModelConfig, channels: int, num_classes: int, image_size: tuple[int, int],
                       weights: dict[str, torch.Tensor]) -> nn.Module:
    """The network ``cfg`` describes, holding ``weights`` (saved by :func:`weights_of`); its
    throwaway initial weights come from a fixed seed, so the global RNG is not touched."""
    model = seeded_model(cfg, channels, num_classes, image_size, 0)
    model.load_state_dict(weights)
    return model


def frozen(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` on ``device``, in eval mode, with no parameter requiring a gradient."""
    model = model.to(device).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model

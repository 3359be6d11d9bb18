"""Small conditional networks shared by the from-scratch generators.

Both use GroupNorm (no BatchNorm): the DP-SGD VAE needs batch-independent layers for
per-sample gradients, and DP-MERF uses the same decoder so the two compare like for like.
Upsampling is nearest-neighbour + 3x3 conv (no ConvTranspose), which opacus supports and
which avoids checkerboard artefacts.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Channels per GroupNorm group; 8 groups at width 64 and 4 at 32.
GROUP_CHANNELS = 8
MIN_WIDTH = 16


def upsampling_plan(image_size: tuple[int, int]) -> tuple[int, tuple[int, int]]:
    """Number of 2x stages and the starting map: start near 4x4 (2x2 for 8x8 images)."""
    side = min(image_size)
    stages = max(0, int(math.floor(math.log2(side))) - 2)
    start = (math.ceil(image_size[0] / 2**stages), math.ceil(image_size[1] / 2**stages))
    return stages, start


def _norm(channels: int) -> nn.Module:
    return nn.GroupNorm(max(1, channels // GROUP_CHANNELS), channels)


class ConditionalDecoder(nn.Module):
    """(z, label) -> image in [-1, 1]: linear to a small map, then upsample + conv blocks."""

    def __init__(
        self, latent_dim: int, num_classes: int, channels: int, image_size: tuple[int, int], width: int
    ) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.num_classes = num_classes
        self.image_size = (int(image_size[0]), int(image_size[1]))
        stages, self.start = upsampling_plan(self.image_size)
        self.width = width
        self.project = nn.Linear(latent_dim + num_classes, width * self.start[0] * self.start[1])
        blocks: list[nn.Module] = [_norm(width), nn.ReLU()]
        current = width
        for _ in range(stages):
            nxt = max(MIN_WIDTH, current // 2)
            blocks += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(current, nxt, 3, padding=1),
                _norm(nxt),
                nn.ReLU(),
            ]
            current = nxt
        blocks.append(nn.Conv2d(current, channels, 3, padding=1))
        self.blocks = nn.Sequential(*blocks)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        onehot = F.one_hot(labels, self.num_classes).to(z.dtype)
        x = self.project(torch.cat([z, onehot], dim=1)).view(-1, self.width, *self.start)
        x = self.blocks(x)
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False)
        return torch.tanh(x)


class ConditionalEncoder(nn.Module):
    """(image in [-1, 1], label) -> (mean, log-variance) of q(z | x, y)."""

    def __init__(
        self, latent_dim: int, num_classes: int, channels: int, image_size: tuple[int, int], width: int
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        stages, _ = upsampling_plan(image_size)
        layers: list[nn.Module] = []
        current, height, wide = channels, int(image_size[0]), int(image_size[1])
        out = max(MIN_WIDTH, width // 2 ** max(stages - 1, 0))
        for _ in range(stages):
            layers += [nn.Conv2d(current, out, 3, stride=2, padding=1), _norm(out), nn.ReLU()]
            current, out = out, min(width, out * 2)
            height, wide = (height + 1) // 2, (wide + 1) // 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(current * height * wide + num_classes, 2 * latent_dim)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        onehot = F.one_hot(labels, self.num_classes).to(x.dtype)
        stats = self.head(torch.cat([self.features(x).flatten(1), onehot], dim=1))
        mean, log_var = stats.chunk(2, dim=1)
        return mean, log_var.clamp(-10.0, 10.0)

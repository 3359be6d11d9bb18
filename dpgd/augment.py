"""Differentiable siamese augmentation (DSA, Zhao & Bilen, ICML 2021).

DSA draws one random transform and applies it to every image of a batch, and to any
other batch it should be compared with (real and synthetic in matching), while keeping
the transform differentiable with respect to the pixels so gradients reach distilled
images. A transform is an explicit :class:`DSAParams` value: drawing it (``sample``) and
applying it (``apply``) are separate, so sharing it needs no re-seeding tricks.

As in the DC/DSA/DM code (``aug_mode='S'``), each call picks ONE of the strategy's
operations at random; ``mode="all"`` chains every operation instead. Colour operations act
on normalised tensors, as the original code does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dpgd.errors import ConfigError

OPERATIONS = ("color", "crop", "cutout", "flip", "scale", "rotate")
MODES = ("single", "all")


@dataclass(frozen=True)
class DSARanges:
    """Strengths of the operations: the constants of the DSA code (``ParamDiffAug``)."""

    brightness: float = 1.0  # add U(-0.5, 0.5) * brightness
    saturation: float = 2.0  # scale the deviation from the channel mean by U(0, saturation)
    contrast: float = 0.5  # scale the deviation from the image mean by U(contrast, contrast + 1)
    crop_pad: float = 0.125  # translate by up to this fraction of the side (whole pixels)
    cutout: float = 0.5  # zero a square of this fraction of each side
    flip_prob: float = 0.5
    scale: float = 1.2  # scale each axis by U(1/scale, scale)
    rotate_degrees: float = 15.0  # rotate by U(-rotate, rotate)


@dataclass(frozen=True)
class DSAParams:
    """One drawn transform; apply it to as many batches (of any size) as need to share it.

    Values are plain Python numbers, so the same params work on any device. ``crop`` and
    ``cutout`` hold positions in [0, 1) that ``apply`` maps to whole pixels for the image
    size at hand (uniform over the same integer offsets as the DSA code).
    """

    ops: tuple[str, ...]
    brightness: float = 0.0
    saturation: float = 1.0
    contrast: float = 1.0
    crop: tuple[float, float] = (0.5, 0.5)
    cutout: tuple[float, float] = (0.5, 0.5)
    flip: bool = False
    scale: tuple[float, float] = (1.0, 1.0)
    rotate: float = 0.0  # radians


def parse_strategy(strategy: str) -> tuple[str, ...]:
    """Split ``"color_crop_cutout"`` into operation names; unknown names are config errors."""
    names = tuple(name for name in strategy.split("_") if name)
    if not names:
        raise ConfigError("dsa_strategy is empty; set dsa: false to train without augmentation.")
    unknown = [name for name in names if name not in OPERATIONS]
    if unknown:
        raise ConfigError(
            f"dsa_strategy={strategy!r} names unknown operation(s) {', '.join(unknown)}; "
            f"choose from {', '.join(OPERATIONS)}."
        )
    return names


def _unit_to_index(u: float, count: int) -> int:
    """Map u in [0, 1) to an integer in [0, count) uniformly."""
    return min(int(math.floor(u * count)), count - 1)


def _affine(x: torch.Tensor, theta: list[list[float]]) -> torch.Tensor:
    """Resample every image with the same 2x3 affine matrix (output -> input coordinates)."""
    matrix = torch.tensor(theta, dtype=x.dtype, device=x.device).unsqueeze(0)
    grid = F.affine_grid(matrix, [1, *x.shape[1:]], align_corners=True)
    grid = grid.expand(x.shape[0], -1, -1, -1)
    return F.grid_sample(x, grid, align_corners=True)


def _crop(x: torch.Tensor, position: tuple[float, float], ratio: float) -> torch.Tensor:
    """Translate by whole pixels with zero fill (the DSA pad-and-crop)."""
    height, width = x.shape[-2:]
    reach_h, reach_w = int(height * ratio + 0.5), int(width * ratio + 0.5)
    shift_h = _unit_to_index(position[0], 2 * reach_h + 1) - reach_h
    shift_w = _unit_to_index(position[1], 2 * reach_w + 1) - reach_w
    pad = max(abs(shift_h), abs(shift_w))
    if pad == 0:
        return x
    padded = F.pad(x, [pad, pad, pad, pad])
    top, left = pad + shift_h, pad + shift_w
    return padded[..., top : top + height, left : left + width]


def _cutout(x: torch.Tensor, position: tuple[float, float], ratio: float) -> torch.Tensor:
    """Zero the same square in every image (DSA's cutout, including its edge clamping)."""
    height, width = x.shape[-2:]
    mask = torch.ones(height, width, dtype=x.dtype, device=x.device)
    bounds = []
    for u, side in zip(position, (height, width)):
        size = int(side * ratio + 0.5)
        centre = _unit_to_index(u, side + (1 - size % 2))
        first = min(max(centre - size // 2, 0), side - 1)
        last = min(max(centre - size // 2 + size - 1, 0), side - 1)
        bounds.append((first, last + 1))
    (top, bottom), (left, right) = bounds
    mask[top:bottom, left:right] = 0.0
    return x * mask


def _color(x: torch.Tensor, params: DSAParams) -> torch.Tensor:
    """Brightness, then saturation, then contrast, as DSA's 'color' operation."""
    x = x + params.brightness
    channel_mean = x.mean(dim=1, keepdim=True)
    x = (x - channel_mean) * params.saturation + channel_mean
    image_mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - image_mean) * params.contrast + image_mean


class DSA:
    """Siamese differentiable augmentation for a strategy such as ``"color_crop_flip"``."""

    def __init__(self, strategy: str, mode: str = "single", ranges: DSARanges = DSARanges()) -> None:
        if mode not in MODES:
            raise ConfigError(f"DSA mode={mode!r} is unknown; choose one of {', '.join(MODES)}.")
        self.strategy = strategy
        self.operations = parse_strategy(strategy)
        self.mode = mode
        self.ranges = ranges

    def __repr__(self) -> str:
        return f"DSA(strategy={self.strategy!r}, mode={self.mode!r})"

    def sample(self, generator: torch.Generator, device: torch.device | str | None = None) -> DSAParams:
        """Draw one transform from ``generator`` (a CPU generator avoids device syncs).

        Always consumes the same amount of randomness, whatever is chosen. ``device`` is
        accepted for call-site symmetry and unused: params are plain numbers.
        """
        del device
        choice = torch.randint(len(self.operations), (1,), generator=generator, device=generator.device)
        u = torch.rand(11, generator=generator, device=generator.device).tolist()
        ops = self.operations if self.mode == "all" else (self.operations[int(choice.item())],)
        r = self.ranges
        low_scale = 1.0 / r.scale
        return DSAParams(
            ops=ops,
            brightness=(u[0] - 0.5) * r.brightness,
            saturation=u[1] * r.saturation,
            contrast=u[2] + r.contrast,
            crop=(u[3], u[4]),
            cutout=(u[5], u[6]),
            flip=u[7] < r.flip_prob,
            scale=(low_scale + u[8] * (r.scale - low_scale), low_scale + u[9] * (r.scale - low_scale)),
            rotate=math.radians((u[10] - 0.5) * 2.0 * r.rotate_degrees),
        )

    def apply(self, x: torch.Tensor, params: DSAParams) -> torch.Tensor:
        """Apply ``params`` to every image of ``x`` (N, C, H, W); differentiable in ``x``."""
        for op in params.ops:
            if op == "color":
                x = _color(x, params)
            elif op == "crop":
                x = _crop(x, params.crop, self.ranges.crop_pad)
            elif op == "cutout":
                x = _cutout(x, params.cutout, self.ranges.cutout)
            elif op == "flip":
                x = x.flip(3) if params.flip else x
            elif op == "scale":
                sx, sy = params.scale
                x = _affine(x, [[sx, 0.0, 0.0], [0.0, sy, 0.0]])
            elif op == "rotate":
                c, s = math.cos(params.rotate), math.sin(params.rotate)
                x = _affine(x, [[c, -s, 0.0], [s, c, 0.0]])
            else:
                raise ConfigError(f"DSA operation {op!r} is unknown; choose from {', '.join(OPERATIONS)}.")
        return x.contiguous()

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Draw one transform and apply it to the whole batch."""
        return self.apply(x, self.sample(generator))

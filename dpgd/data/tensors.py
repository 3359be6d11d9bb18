"""Turn decoded pixels into the normalised float tensors every loader returns.

Loaders decode to ``uint8`` (PIL images or numpy arrays), then share these steps so all data
sets are resized, scaled and normalised the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image

from dpgd.data.bundle import ImageDataset


def fit_square(img: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` and centre-crop a ``size`` x ``size`` square.

    This is torchvision's ``Resize(size) + CenterCrop(size)``: it keeps the aspect ratio
    (CelebA's 178x218 faces are not squashed) and is a plain resize for square images.
    """
    w, h = img.size
    if (w, h) == (size, size):
        return img
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return img.crop((left, top, left + size, top + size))


def pil_to_uint8(img: Image.Image, mode: str, size: int | None = None) -> torch.Tensor:
    """Decode a PIL image to a ``(C, H, W)`` uint8 tensor in ``mode`` ("RGB" or "L").

    Any PIL mode is accepted: the few with no direct conversion (e.g. "LAB" to "L") go
    through RGB, so one unusual file cannot stop a run.
    """
    if img.mode != mode:
        try:
            img = img.convert(mode)
        except ValueError:  # no direct converter for this pair
            img = img.convert("RGB").convert(mode)
    if size is not None:
        img = fit_square(img, size)
    pixels = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    channels = 1 if mode == "L" else 3
    return pixels.view(img.size[1], img.size[0], channels).permute(2, 0, 1).contiguous()


def uint8_to_unit(images: torch.Tensor) -> torch.Tensor:
    """Scale a uint8 batch to float32 in ``[0, 1]``."""
    return images.to(torch.float32).div_(255.0)


def resize_batch(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """Resize a float ``(N, C, H, W)`` batch of square images to ``size`` (None = keep).

    Antialiased bilinear, so shrinking averages pixels instead of aliasing, matching PIL.
    """
    if size is None or tuple(images.shape[-2:]) == (size, size):
        return images
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"resize_batch expects square images, got {tuple(images.shape[-2:])}")
    out = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.clamp_(0.0, 1.0)


# Data sets without published constants are mapped to [-1, 1]: a public convention, so
# the normalisation (which ships with the release) reveals nothing about private data.
NEUTRAL_MEAN = 0.5
NEUTRAL_STD = 0.5


def neutral_stats(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    return (NEUTRAL_MEAN,) * channels, (NEUTRAL_STD,) * channels


def normalise_(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Normalise a ``[0, 1]`` batch in place per channel (no second full-size copy)."""
    m = torch.tensor(mean, dtype=images.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=images.dtype).view(1, -1, 1, 1)
    return images.sub_(m).div_(s)


def normalised_dataset(
    name: str,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    class_names: tuple[str, ...],
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> ImageDataset:
    """Normalise ``[0, 1]`` float splits in place and wrap them in an :class:`ImageDataset`.

    ``mean``/``std`` are always public constants, never statistics of the (private) train
    split: the normalisation ships inside ``distilled.pt``, so data-derived values would be
    an un-noised release.
    """
    return ImageDataset(
        name=name,
        train_images=normalise_(train_images.contiguous(), mean, std),
        train_labels=train_labels.to(torch.int64).contiguous(),
        test_images=normalise_(test_images.contiguous(), mean, std),
        test_labels=test_labels.to(torch.int64).contiguous(),
        class_names=tuple(class_names),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
    )

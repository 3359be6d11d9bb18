"""The distilled set as it is stored and released, and its multi-formation packing.

Multi-formation (factor m): each stored image packs m x m images, downscaled to ``1/m`` of
the side, so ``ipc`` stored images hold ``ipc * m^2`` training images. The stored (packed)
images are what is distilled and released; :func:`expand_multi_formation` un-packs them
(upsampling each tile back to full size, differentiably) for everything that trains or
embeds on them: evaluation, matching, the membership attack and :mod:`dpgd.results`'s
loader. It lives apart from the stages so that all of them read one definition.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class DistilledSet:
    """The synthetic images being distilled (normalised space) and their labels.

    With ``factor`` m > 1 each stored image packs m x m half-size (for m = 2) images of
    its label; :meth:`expanded` gives the m^2 full-size images per stored image.
    """

    images: torch.Tensor
    labels: torch.Tensor
    factor: int = 1

    def expanded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) with every stored image un-packed (the identity for factor 1)."""
        return expand_multi_formation(self.images, self.labels, self.factor)

    def to_payload(self) -> dict[str, object]:
        return {"images": self.images.detach().cpu(), "labels": self.labels.detach().cpu(), "factor": self.factor}

    @classmethod
    def from_payload(cls, data: dict) -> "DistilledSet":
        return cls(data["images"], data["labels"], int(data["factor"]))


def pack_multi_formation(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Pack each run of ``factor^2`` consecutive images into one image (row-major tiles).

    Each image is downscaled (antialiased bilinear) to ``1/factor`` of the side.
    """
    if factor == 1:
        return images
    count, channels, height, width = images.shape
    per = factor * factor
    if count % per or height % factor or width % factor:
        raise ValueError(f"cannot pack {count} images of {height}x{width} into {factor}x{factor} tiles")
    tile_h, tile_w = height // factor, width // factor
    tiles = F.interpolate(images, size=(tile_h, tile_w), mode="bilinear", antialias=True, align_corners=False)
    tiles = tiles.view(count // per, factor, factor, channels, tile_h, tile_w)
    return tiles.permute(0, 3, 1, 4, 2, 5).reshape(count // per, channels, height, width).contiguous()


def expand_multi_formation(
    images: torch.Tensor, labels: torch.Tensor, factor: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Un-pack every stored image into ``factor^2`` full-size images (bilinear upsampling).

    Differentiable, so matching can run through it. Labels repeat per tile; the output is
    ordered stored image by stored image, tiles row-major.
    """
    if factor == 1:
        return images, labels
    count, channels, height, width = images.shape
    if height % factor or width % factor:
        raise ValueError(f"images of {height}x{width} do not split into {factor}x{factor} tiles")
    tile_h, tile_w = height // factor, width // factor
    tiles = images.reshape(count, channels, factor, tile_h, factor, tile_w).permute(0, 2, 4, 1, 3, 5)
    tiles = tiles.reshape(count * factor * factor, channels, tile_h, tile_w)
    full = F.interpolate(tiles, size=(height, width), mode="bilinear", align_corners=False)
    return full, labels.repeat_interleave(factor * factor)

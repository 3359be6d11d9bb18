"""Candidate sources for Private Evolution: the two public APIs PE needs.

``random_api(num, label, generator)`` draws fresh candidates; ``variation_api(images,
strength, generator)`` returns one variation per image, more different for larger
``strength`` in [0, 1]. Both read only public inputs (a folder the user declares public,
or a pretrained model) and the candidates selected by earlier DP votes: no privacy cost.
Images go in and out normalised like the private data set.

* :class:`PublicFolderSource`: images from ``pe.public_root`` (class subfolders or a
  flat folder; labels ignored, so every class starts from the same random candidates).
  Variations: a random per-image affine (shift, rotation, scale) plus Gaussian pixel
  noise, both scaled by ``strength``.
* :class:`DiffusersSource` (``pip install dpgd[diffusers]``): a pretrained unconditional
  diffusion model loaded from a LOCAL folder; random = full reverse process, variation =
  SDEdit (noise to timestep ``strength * T``, then denoise).
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from PIL import Image

from dpgd.data import ImageDataset
from dpgd.data.tensors import uint8_to_unit
from dpgd.errors import ConfigError, DataNotFoundError
from dpgd.generators.base import from_tanh_space, to_tanh_space

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# Strength-1 ranges of the public-folder variation: a shift of 1/8 of the side (DSA's crop
# range), 15 degrees of rotation and 10% scaling: label-preserving for most image classes.
MAX_SHIFT = 0.125
MAX_ROTATE_DEGREES = 15.0
MAX_SCALE = 0.1


class CandidateSource(Protocol):
    """What PE asks of a public generator."""

    def random_api(self, num: int, label: int, generator: torch.Generator) -> torch.Tensor: ...

    def variation_api(self, images: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor: ...


class _Normaliser:
    """Between the data set's normalised space and [0, 1] pixels, for any source."""

    def __init__(self, dataset: ImageDataset) -> None:
        self.mean, self.std = dataset.mean, dataset.std
        self.channels = dataset.channels
        self.size = dataset.image_size

    def to_unit(self, images: torch.Tensor) -> torch.Tensor:
        return (to_tanh_space(images, self.mean, self.std) + 1.0) * 0.5

    def from_unit(self, pixels: torch.Tensor) -> torch.Tensor:
        return from_tanh_space(pixels * 2.0 - 1.0, self.mean, self.std)

    def adapt(self, pixels: torch.Tensor) -> torch.Tensor:
        """[0, 1] images of any size/channels -> the data set's size and channels."""
        if pixels.shape[1] != self.channels:
            if self.channels == 1:
                pixels = pixels.mean(dim=1, keepdim=True)
            elif pixels.shape[1] == 1:
                pixels = pixels.expand(-1, self.channels, -1, -1)
            else:
                raise ConfigError(f"cannot map {pixels.shape[1]}-channel candidates to {self.channels} channels.")
        if tuple(pixels.shape[-2:]) != tuple(self.size):
            pixels = F.interpolate(pixels, size=self.size, mode="bilinear", antialias=True, align_corners=False)
        return pixels.clamp(0.0, 1.0).contiguous()


def _image_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


class PublicFolderSource:
    """Candidates drawn from a folder of public images, varied by augmentation + noise."""

    def __init__(self, root: str | None, dataset: ImageDataset, pixel_noise: float) -> None:
        files = _public_files(root)
        folder = Path(str(root)).expanduser()
        self.norm = _Normaliser(dataset)
        self.pixel_noise = float(pixel_noise)
        mode = "L" if dataset.channels == 1 else "RGB"
        height, width = dataset.image_size
        decoded = []
        for path in files:
            with Image.open(path) as img:
                img = img.convert(mode).resize((width, height), Image.Resampling.BILINEAR)
                pixels = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
                decoded.append(pixels.view(height, width, -1).permute(2, 0, 1))
        self.root = folder
        self.images = uint8_to_unit(torch.stack(decoded))  # (M, C, H, W) in [0, 1]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def random_api(self, num: int, label: int, generator: torch.Generator) -> torch.Tensor:
        """``num`` public images drawn uniformly (without replacement while they last)."""
        del label  # label-free public data: every class starts from the same distribution
        count = len(self)
        order = torch.cat([torch.randperm(count, generator=generator) for _ in range(math.ceil(num / count))])
        return self.norm.from_unit(self.images[order[:num]])

    def variation_api(self, images: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
        """Per-image random affine + Gaussian pixel noise, both scaled by ``strength``."""
        pixels = self.norm.to_unit(images.cpu())
        return self.norm.from_unit(affine_variation(pixels, strength, self.pixel_noise, generator)).to(images.device)


def affine_variation(pixels: torch.Tensor, strength: float, pixel_noise: float,
                     generator: torch.Generator) -> torch.Tensor:
    """[0, 1] images, each under a random affine (shift, rotation, scale) plus Gaussian pixel
    noise of std ``pixel_noise``, all scaled by ``strength``."""
    num = pixels.shape[0]
    uniform = torch.rand(num, 4, generator=generator) * 2.0 - 1.0  # shift x, shift y, angle, scale
    angle = uniform[:, 2] * math.radians(MAX_ROTATE_DEGREES) * strength
    scale = 1.0 + uniform[:, 3] * MAX_SCALE * strength
    shift = uniform[:, :2] * 2.0 * MAX_SHIFT * strength  # affine_grid units: the side is 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], dim=1), torch.stack([sin, cos, shift[:, 1]], dim=1)], dim=1
    )
    grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)
    moved = F.grid_sample(pixels, grid, mode="bilinear", padding_mode="border", align_corners=False)
    noise = torch.randn(moved.shape, generator=generator) * (pixel_noise * strength)
    return (moved + noise).clamp(0.0, 1.0)


class DiffusersSource:
    """A local pretrained DDPM-style model: random = sampling, variation = SDEdit."""

    def __init__(self, path: str | None, dataset: ImageDataset, steps: int, batch_size: int, device: torch.device) -> None:
        _check_diffusers(path, steps, batch_size)
        from diffusers import DDPMScheduler, UNet2DModel

        folder = Path(str(path)).expanduser()
        unet_dir = folder / "unet" if (folder / "unet" / "config.json").is_file() else folder
        self.unet = UNet2DModel.from_pretrained(str(unet_dir), local_files_only=True, low_cpu_mem_usage=False).to(device).eval()
        for sub in (folder / "scheduler", folder):
            if (sub / "scheduler_config.json").is_file():
                self.scheduler = DDPMScheduler.from_pretrained(str(sub), local_files_only=True)
                break
        else:
            self.scheduler = DDPMScheduler(num_train_timesteps=1000)
        self.scheduler.set_timesteps(min(int(steps), self.scheduler.config.num_train_timesteps))
        self.norm = _Normaliser(dataset)
        self.batch_size = int(batch_size)
        self.device = device
        size = self.unet.config.sample_size
        self.model_size = (size, size) if isinstance(size, int) else tuple(size)
        self.model_channels = int(self.unet.config.in_channels)

    @torch.no_grad()
    def _denoise(self, sample: torch.Tensor, start: int, generator: torch.Generator) -> torch.Tensor:
        """Run the reverse process from timestep ``start`` (inclusive) down to 0."""
        for t in self.scheduler.timesteps:
            if int(t) > start:
                continue
            out = self.unet(sample, t).sample
            sample = self.scheduler.step(out, t, sample, generator=generator).prev_sample
        return sample

    def _to_model(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.norm.to_unit(images.cpu())
        if pixels.shape[1] != self.model_channels:  # grey <-> colour through the channel mean
            pixels = pixels.mean(1, keepdim=True).expand(-1, self.model_channels, -1, -1)
        if tuple(pixels.shape[-2:]) != self.model_size:
            pixels = F.interpolate(pixels, size=self.model_size, mode="bilinear", antialias=True, align_corners=False)
        return pixels * 2.0 - 1.0

    def _from_model(self, sample: torch.Tensor) -> torch.Tensor:
        return self.norm.from_unit(self.norm.adapt(((sample.float().cpu() + 1.0) * 0.5).clamp(0.0, 1.0)))

    def random_api(self, num: int, label: int, generator: torch.Generator) -> torch.Tensor:
        """Unconditional samples (the label is not used: PE's votes pick per class)."""
        del label
        out = []
        for start in range(0, num, self.batch_size):
            count = min(self.batch_size, num - start)
            noise = torch.randn((count, self.model_channels, *self.model_size), generator=generator)
            out.append(self._from_model(self._denoise(noise.to(self.device), self.scheduler.config.num_train_timesteps, generator)))
        return torch.cat(out)

    def variation_api(self, images: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
        """SDEdit: diffuse to ``t = strength * (T - 1)`` and denoise back."""
        start = int(round(min(max(strength, 0.0), 1.0) * (self.scheduler.config.num_train_timesteps - 1)))
        kept = [t for t in self.scheduler.timesteps if int(t) <= start]
        if start == 0 or not kept:  # strength 0: no noise, so nothing to denoise
            return images.clone()
        first = kept[0]
        out = []
        for begin in range(0, images.shape[0], self.batch_size):
            clean = self._to_model(images[begin : begin + self.batch_size])
            noise = torch.randn(clean.shape, generator=generator)
            noisy = self.scheduler.add_noise(clean, noise, torch.full((clean.shape[0],), int(first)))
            out.append(self._from_model(self._denoise(noisy.to(self.device), int(first), generator)))
        return torch.cat(out).to(images.device)


def _public_files(root: str | None) -> list[Path]:
    if not root:
        raise ConfigError(
            "generator.pe.source=public_folder needs generator.pe.public_root: a folder of images "
            "you declare public (class subfolders or flat); they must not be private records."
        )
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise DataNotFoundError(f"generator.pe.public_root={folder} is not a folder of images.")
    files = _image_files(folder)
    if not files:
        raise DataNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under generator.pe.public_root={folder}.")
    return files


def _check_diffusers(path: str | None, steps: int, batch_size: int) -> None:
    if not path:
        raise ConfigError(
            "generator.pe.source=diffusers needs generator.pe.diffusers_path: a LOCAL folder holding a "
            "UNet2DModel saved with save_pretrained (optionally with a scheduler/ subfolder)."
        )
    if steps < 1 or batch_size < 1:
        raise ConfigError("generator.pe.diffusers_steps and diffusers_batch_size must be at least 1.")
    if importlib.util.find_spec("diffusers") is None:
        raise ConfigError("generator.pe.source=diffusers needs the optional extra: pip install 'dpgd[diffusers]'.")
    folder = Path(path).expanduser()
    if not any((d / "config.json").is_file() for d in (folder, folder / "unet")):
        raise DataNotFoundError(
            f"no saved UNet2DModel (config.json) in {folder} or {folder / 'unet'}; "
            "generator.pe.diffusers_path must point at a local save_pretrained folder (nothing is downloaded)."
        )


SOURCES = ("auto", "public", "public_folder", "diffusers")


def check_source_settings(pe_cfg, has_public: bool = False) -> None:
    """The candidate source's settings and files, judged before any private data is read
    (a missing public folder must not wait for the count release). ``has_public``: the run
    has public knowledge (``public=folder``), which ``source=public`` (and ``auto``) use."""
    source = pe_cfg.source
    if source == "auto":
        source = "public" if has_public else "public_folder"
    if source == "public":
        if not has_public:
            raise ConfigError("generator.pe.source=public draws from the run's public pool: set public=folder "
                              "public.root=<public images> (or generator.pe.source=public_folder).")
        if pe_cfg.initial not in ("clusters", "random"):
            raise ConfigError(f"generator.pe.initial={pe_cfg.initial} is unknown; choose clusters or random.")
        if not 1 <= pe_cfg.neighbours_end <= pe_cfg.neighbours_start:
            raise ConfigError(f"generator.pe.neighbours_start={pe_cfg.neighbours_start} and neighbours_end="
                              f"{pe_cfg.neighbours_end} need 1 <= end <= start.")
        if pe_cfg.population < 1:
            raise ConfigError(f"generator.pe.population={pe_cfg.population} must be at least 1.")
    elif source == "public_folder":
        _public_files(pe_cfg.public_root)
    elif source == "diffusers":
        _check_diffusers(pe_cfg.diffusers_path, pe_cfg.diffusers_steps, pe_cfg.diffusers_batch_size)
    else:
        raise ConfigError(f"generator.pe.source={source} is unknown; choose one of {', '.join(SOURCES)}.")


def build_source(pe_cfg, dataset: ImageDataset, device: torch.device) -> CandidateSource:
    """The candidate source ``generator.pe.source`` names (``public`` is built by
    :mod:`dpgd.generators.pe_public` from the run's public knowledge, not here)."""
    check_source_settings(pe_cfg)
    source = "public_folder" if pe_cfg.source == "auto" else pe_cfg.source
    if source == "public_folder":
        return PublicFolderSource(pe_cfg.public_root, dataset, pe_cfg.pixel_noise)
    if source == "diffusers":
        return DiffusersSource(
            pe_cfg.diffusers_path, dataset, pe_cfg.diffusers_steps, pe_cfg.diffusers_batch_size, device
        )
    raise ConfigError(f"generator.pe.source={source} is unknown; choose one of {', '.join(SOURCES)}.")

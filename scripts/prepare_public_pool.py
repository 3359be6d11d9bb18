"""Turn an image tree (ImageNet / Tiny-ImageNet style, or any) into a public pool for ``public=folder``.

    python scripts/prepare_public_pool.py /data/imagenet/train ../public64k --size 32 --per-class 64
    python scripts/prepare_public_pool.py /data/tiny-imagenet-200/train ../tiny32 --size 32 --per-class 100

Every image under SRC (``.png .jpg .jpeg .bmp .gif .webp .tif .tiff``, any depth) is
centre-cropped to a square, resized to ``--size`` (bicubic, antialiased: PIL) and written
as a lossless PNG under OUT at the same relative folder, so the folder structure (the
labels of public pretraining) is kept: ``SRC/n01443537/images/x.JPEG`` ->
``OUT/n01443537/images/x.png``. ``--per-class N`` keeps the first N files of each folder
(sorted by name); ``--mode L`` writes greyscale. Existing files in OUT are overwritten;
files that do not decode are skipped and counted.

A larger pool helps every use of it: PE's nearest-neighbour variations find closer
neighbours of a good candidate, more CIFAR-like images exist to vote for (e.g. the
airplanes, deer and horses that Tiny-ImageNet lacks), and pretraining on more labels and
images gives features that separate the private classes better. Never point SRC at
private data (for a CIFAR run, never CIFAR).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

from PIL import Image, UnidentifiedImageError

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def centre_square(img: Image.Image, size: int) -> Image.Image:
    """The largest centred square, resized to ``size`` x ``size`` (bicubic)."""
    width, height = img.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return img.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)


def prepare(src: Path, out: Path, size: int, per_class: int | None, mode: str) -> tuple[int, int]:
    """Write the pool; returns (images written, files skipped)."""
    if size < 1:
        raise SystemExit("--size must be a positive side length")
    if not src.is_dir():
        raise SystemExit(f"{src} is not a folder")
    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
        raise SystemExit("OUT must not lie inside SRC")
    by_folder: dict[Path, list[Path]] = defaultdict(list)
    for path in src.rglob("*"):
        if path.is_file() and path.suffix.lower() in SUFFIXES:
            by_folder[path.parent].append(path)
    written = skipped = 0
    for folder in sorted(by_folder):
        files = sorted(by_folder[folder], key=lambda p: p.name)
        kept = 0
        for path in files:
            if per_class is not None and kept >= per_class:
                break
            target = out / path.relative_to(src).with_suffix(".png")
            try:
                with Image.open(path) as img:
                    img = img.convert(mode)
                    square = centre_square(img, size)
            except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
                skipped += 1
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            square.save(target, format="PNG")
            written += 1
            kept += 1
    return written, skipped


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path, help="an image tree (subfolders are kept as labels)")
    parser.add_argument("out", type=Path, help="where the pool is written")
    parser.add_argument("--size", type=int, default=32, help="side length of the square images (default 32)")
    parser.add_argument("--per-class", type=int, default=None,
                        help="keep the first N images (by name) of each folder (default: all)")
    parser.add_argument("--mode", choices=("RGB", "L"), default="RGB", help="RGB (default) or L (greyscale)")
    args = parser.parse_args(argv)
    if args.per_class is not None and args.per_class < 1:
        raise SystemExit("--per-class must be at least 1")
    written, skipped = prepare(args.src, args.out, args.size, args.per_class, args.mode)
    print(f"{written} images written to {args.out} ({skipped} files skipped: not decodable)", file=sys.stderr)
    if written == 0:
        raise SystemExit(1)


if __name__ == "__main__":
    main()

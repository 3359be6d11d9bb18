"""glibc malloc settings for CPU training loops: keep freed memory for the next step.

By default glibc serves every allocation above a dynamic threshold (at most 32 MB) with a
fresh ``mmap`` and unmaps it on free, and gives the top of the heap back to the system as
soon as 128 KB of it are free. A training step of the dataset-distillation ConvNet (width
128) on 100 CIFAR-sized images allocates and frees activations of tens of MB (opacus's
per-sample gradients: hundreds), so every step page-faults and zeroes that memory again.
``cpu_allocator`` chooses (measured on 2 cores, cifar10-mini, default DP-GenG run, process
seconds / peak RSS; glibc defaults: 1022 s / 3.4 GB):

* ``balanced`` (default): keep freed heap memory (trim threshold 2 GB, top pad 1 GB, a fixed
  32 MB mmap threshold): 816 s / 4.0 GB (NDPDC 297 s / 2.0 GB -> 219 s / 2.8 GB); a
  30-epoch evaluation of 100 CIFAR-size images 8.0-8.8 s -> 4.2-4.6 s.
* ``fast``: also serve the large blocks from the heap (mmap threshold 2 GB): 492 s / 10.6 GB.
  For machines with memory to spare; fragmentation makes the heap grow.
* ``system``: glibc's defaults.

Under glibc's defaults the same effect makes a stage's speed depend on what ran before it
in the process (DP-GenG's evaluation ran up to twice as fast as NDPDC's: its earlier stages
had grown the heap). The figures above are whole runs at commit eaf873c, which also made the
pool networks one shared family (docs/performance.md).

Applied once per process by :func:`tune_for_training` (``train.run`` calls it). Linux
with glibc only; a user's own ``MALLOC_*_`` environment settings win.

Under ``balanced`` a block above 32 MB is still a fresh mapping, page-faulted and zeroed on
every use. The hot loops therefore push large batches through the network in chunks of
:func:`rows_per_chunk` records, whose feature maps stay below that threshold; chunking
changes no value where records are independent (no-grad embeddings and predictions: the
networks have no batch statistics) and only the summation order of a gradient.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

from dpgd.errors import ConfigError

log = logging.getLogger("dpgd")

# mallopt parameter numbers (glibc malloc.h): M_TRIM_THRESHOLD -1, M_TOP_PAD -2,
# M_MMAP_THRESHOLD -3; the values of each choice above.
_SETTINGS = {
    "balanced": {-1: 2**31 - 1, -2: 2**30, -3: 32 * 2**20},
    "fast": {-1: 2**31 - 1, -3: 2**31 - 1},
    "system": {},
}
CHOICES = tuple(_SETTINGS)
_ENVIRONMENT = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_THRESHOLD_")
_applied: bool | None = None

# Input values per chunk: 32 CIFAR-size images (32 x 3 x 32 x 32). A width-128 ConvNet's
# first feature map is ~43x its input: 16 MB, half the mmap threshold of ``balanced``.
CHUNK_VALUES = 32 * 3 * 32 * 32


def rows_per_chunk(values_per_record: int) -> int:
    """Records per forward so that a chunk holds at most :data:`CHUNK_VALUES` input values
    (cifar10-mini: 32; digits, 64 values a record: 1536, i.e. its batches stay whole)."""
    return max(1, CHUNK_VALUES // max(1, int(values_per_record)))


def tune_for_training(choice: str = "balanced") -> bool:
    """Apply one of :data:`CHOICES` (the first call in a process decides); True if in effect."""
    global _applied
    if choice not in _SETTINGS:
        raise ConfigError(f"cpu_allocator={choice} is unknown; choose one of {', '.join(CHOICES)}.")
    if _applied is not None:
        return _applied
    _applied = False
    if not _SETTINGS[choice] or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if any(name in os.environ for name in _ENVIRONMENT):
        return False  # the user tuned malloc: leave it
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    _applied = all(mallopt(number, value) == 1 for number, value in _SETTINGS[choice].items())
    if not _applied:
        log.debug("glibc mallopt refused a setting; allocator left as it was")
    return _applied

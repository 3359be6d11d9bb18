"""Progress bars: tqdm's redraws on a terminal, a few lines per stage when stderr is a file.

SLURM and nohup send stderr to a file, where every redraw is kept: a CIFAR run wrote over a
megabyte of bars. Off a terminal a bar redraws at most every ``FILE_INTERVAL_S`` seconds.
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm

FILE_INTERVAL_S = 30.0


def progress_bar(*args: Any, **kwargs: Any) -> tqdm:
    """``tqdm(...)`` with a long redraw interval when stderr is not a terminal."""
    if not sys.stderr.isatty():
        kwargs.setdefault("mininterval", FILE_INTERVAL_S)
    return tqdm(*args, **kwargs)

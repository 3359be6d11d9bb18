"""Read the numbers a run published under ``release/`` (tests only)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import torch


def numbers(value: Any, path: tuple = ()) -> Iterator[tuple[tuple, float]]:
    """Every number in a JSON document, with its path (booleans are not numbers)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from numbers(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from numbers(item, (*path, index))
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield path, value


def assert_counts_published_noisy(release: Path, noisy: torch.Tensor, exact_total: int) -> None:
    """``results.json`` publishes the released (noisy) counts rounded, and no JSON file under
    ``release`` holds the exact total, as an int or a float, except at ``class_counts.total``
    when the rounded noisy total happens to equal it (a correct run, about 1 in 2.5 sigma_total)."""
    results = json.loads((release / "results.json").read_text())
    total = int(round(float(noisy.sum())))
    assert results["class_counts"] == {"per_class": [int(round(float(v))) for v in noisy], "total": total,
                                       "noisy": True}
    for path in sorted(release.glob("*.json")):
        for where, value in numbers(json.loads(path.read_text())):
            if float(value) == exact_total:
                assert where == ("class_counts", "total") and total == exact_total, \
                    f"{path.name} holds the exact N at {where}"

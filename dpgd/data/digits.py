"""scikit-learn's bundled 8x8 handwritten digits: offline, tiny, the default data set."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits as _sklearn_digits
from sklearn.model_selection import train_test_split

from dpgd.data.bundle import ImageDataset
from dpgd.data.tensors import neutral_stats, normalised_dataset, resize_batch

# Fixed, not the run seed: every run must be scored on the same test set.
SPLIT_SEED = 0
TEST_FRACTION = 0.2


def load_digits(image_size: int | None = None) -> ImageDataset:
    """1,797 digits split 80/20, stratified; pixels (16 grey levels) scaled to [0, 1] by /16.

    Normalised to [-1, 1] with public constants (never statistics of the train split).
    """
    bunch = _sklearn_digits()
    images = np.asarray(bunch.images, dtype=np.float32) / 16.0
    labels = np.asarray(bunch.target, dtype=np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=TEST_FRACTION, stratify=labels, random_state=SPLIT_SEED
    )
    # Sorted so the tensors follow sklearn's order, not the shuffle's.
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)

    def split(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(images[idx]).unsqueeze(1)  # (N, 1, 8, 8)
        return resize_batch(x, image_size), torch.from_numpy(labels[idx])

    train_x, train_y = split(train_idx)
    test_x, test_y = split(test_idx)
    return normalised_dataset(
        "digits", train_x, train_y, test_x, test_y, tuple(str(d) for d in range(10)), *neutral_stats(1)
    )

"""Shared fixtures: offline W&B, the shared CIFAR-10 slice, and config composition."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Nothing in the tests may reach the network; W&B runs for real, offline.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_DISABLE_GIT", "true")
# Generated pools are cached on disk; tests keep theirs out of the user's cache, in a
# folder removed when the test process ends.
if "DPGD_CACHE_DIR" not in os.environ:
    os.environ["DPGD_CACHE_DIR"] = tempfile.mkdtemp(prefix="dpgd-test-pools-")
    atexit.register(shutil.rmtree, os.environ["DPGD_CACHE_DIR"], ignore_errors=True)

REPO = Path(__file__).resolve().parents[1]
CIFAR10_MINI = Path(os.environ.get("DPGD_CIFAR10_MINI", REPO.parent / "shared" / "data" / "cifar10-mini")).resolve()
# The dataset=cifar10_mini preset reads this variable (its fallback is relative to the
# current folder, and CLI tests run from temporary folders).
os.environ["DPGD_CIFAR10_MINI"] = str(CIFAR10_MINI)

# scripts/mutate_privacy.py sets this to run the tests against one deliberate privacy bug
# (tests/privacy_mutations.py); applied before any test module imports dpgd's functions.
if os.environ.get("DPGD_PRIVACY_MUTATION"):
    from privacy_mutations import ENV, apply

    apply(os.environ[ENV])


@pytest.fixture(scope="package")
def cifar10_mini() -> Path:
    if not (CIFAR10_MINI / "train").is_dir():
        pytest.skip(f"the shared CIFAR-10 slice is not at {CIFAR10_MINI}")
    return CIFAR10_MINI


@pytest.fixture
def compose():
    """Compose the packaged config with overrides, as the CLI would (dpgd.config.compose)."""
    from dpgd.config import compose

    return compose


@pytest.fixture(scope="module")
def one_torch_thread():
    """Many small ops: one intra-op thread is about as fast on an idle machine and ~10x
    faster on a busy one, where OpenMP threads wait on each other. Restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="package")
def digits():
    """The embedded digits data set, loaded once."""
    from dpgd.config import DatasetConfig
    from dpgd.data import load_dataset

    return load_dataset(DatasetConfig(name="digits"))


@pytest.fixture(scope="package")
def dp_inputs(digits):
    """What a DP stage needs besides its data, for unit tests: noise from the public seed
    (reproducible: NOT DP, fine in a test) and the exact digits counts."""
    import torch

    from dpgd.counts import release_class_counts
    from dpgd.privacy.randomness import NoiseSource

    counts = release_class_counts(digits.train_labels, digits.num_classes, None, torch.Generator())
    return {"noise": NoiseSource.from_public_seed(0), "counts": counts}

"""The glibc malloc settings (dpgd.allocator): applied on Linux/glibc, never over the user's."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
import torch

CHECK = "from dpgd.allocator import tune_for_training as t; print(t(), t())"


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_applied_once_and_user_settings_win():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    ours = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, check=True)
    assert ours.stdout.split() == ["True", "True"]
    theirs = subprocess.run([sys.executable, "-c", CHECK], env={**env, "MALLOC_TOP_PAD_": "0"}, capture_output=True,
                            text=True, check=True)
    assert theirs.stdout.split() == ["False", "False"]


def test_an_unknown_choice_is_refused(compose, tmp_path):
    import dpgd.train as train
    from dpgd.errors import ConfigError

    with pytest.raises(ConfigError, match="cpu_allocator=bogus is unknown"):
        train.run(compose("logger=none", "cpu_allocator=bogus"), tmp_path)


def test_rows_per_chunk_keeps_cifar_feature_maps_below_the_mmap_threshold():
    from dpgd.allocator import rows_per_chunk
    from dpgd.models import ConvNet

    rows = rows_per_chunk(3 * 32 * 32)
    assert rows == 32
    net = ConvNet(3, 10, (32, 32))
    first_map = net.features[0](torch.zeros(rows, 3, 32, 32))
    assert first_map.numel() * first_map.element_size() < 32 * 2**20  # balanced's mmap threshold
    assert rows_per_chunk(1 * 8 * 8) >= 256  # digits: a whole batch (and a whole matching real batch) is one chunk
    assert rows_per_chunk(10**9) == 1

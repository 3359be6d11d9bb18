"""The pool networks: one family, trained once per pool, shared by every stage."""

from __future__ import annotations

import pytest
import torch

import dpgd.pool_networks as pool_networks
import dpgd.train as train
from dpgd.config import ModelConfig, PoolNetsConfig
from dpgd.errors import ConfigError
from dpgd.pool_networks import check_pool_nets_settings, train_pool_networks

CPU = torch.device("cpu")
SMALL = ModelConfig(width=16)


@pytest.fixture(scope="module")
def pool(digits):
    return digits.train_images[:200], digits.train_labels[:200]


def weights(net) -> torch.Tensor:
    return torch.cat([p.flatten() for p in net.parameters()])


def family(pool, digits, count, cache_dir=None, epochs=2, snapshots=2):
    cfg = PoolNetsConfig(count=count, epochs=epochs, snapshots=snapshots)
    return train_pool_networks(cfg, count, SMALL, *pool, digits, seed=0, device=CPU, cache_dir=cache_dir,
                               cache_secret=None if cache_dir is None else b"k" * 32, progress=False)


def test_snapshots_differ_and_network_k_does_not_depend_on_count(pool, digits, one_torch_thread):
    three = family(pool, digits, 3)
    one = family(pool, digits, 1)
    assert len(three.all_snapshots()) == 6 and len(one.all_snapshots()) == 2
    assert torch.equal(weights(one.final()), weights(three.final(0)))
    assert not torch.equal(weights(three.snapshots[0][0]), weights(three.snapshots[0][1]))
    assert not torch.equal(weights(three.final(0)), weights(three.final(1)))
    assert all(not p.requires_grad for net in three.all_snapshots() for p in net.parameters())


def test_the_cache_serves_the_same_pool_and_settings_only(pool, digits, tmp_path, monkeypatch, one_torch_thread):
    first = family(pool, digits, 2, cache_dir=tmp_path)
    calls = []
    real_train = pool_networks.train_on_pool
    monkeypatch.setattr(pool_networks, "train_on_pool", lambda *a, **k: (calls.append(1), real_train(*a, **k))[1])
    again = family(pool, digits, 2, cache_dir=tmp_path)
    assert calls == [] and torch.equal(weights(again.final(1)), weights(first.final(1)))
    family(pool, digits, 2, cache_dir=tmp_path, epochs=3, snapshots=1)  # another recipe: trained
    assert len(calls) == 2 * 1
    images, labels = pool
    shifted = (images + 0.01, labels)  # another pool: trained
    family(shifted, digits, 1, cache_dir=tmp_path)
    assert len(calls) == 2 + 2
    assert len(list((tmp_path / "pool_nets").glob("*.pt"))) == 3


def test_bad_sizes_are_refused():
    with pytest.raises(ConfigError, match="epochs >= snapshots"):
        check_pool_nets_settings(PoolNetsConfig(epochs=2, snapshots=3))
    with pytest.raises(ConfigError, match="count >= 1"):
        check_pool_nets_settings(PoolNetsConfig(count=0))


def test_a_dpgeng_run_trains_the_pool_networks_once(compose, tmp_path, monkeypatch):
    """k-means, expert, extractors and report all use the one family: one training per
    network and snapshot chunk, and none of the stages trains another network on the pool."""
    import dpgd.evaluation as evaluation
    import dpgd.training as training

    calls = []
    real_train = training.train_classifier

    def counting(*args, **kwargs):
        calls.append(kwargs["epochs"])
        return real_train(*args, **kwargs)
    monkeypatch.setattr(training, "train_classifier", counting)
    monkeypatch.setattr(evaluation, "train_classifier", counting)
    overrides = ["debug=tiny", "logger=none", "generator.cache=false", "pool_nets.cache=false", "pool_nets.count=2",
                 "pool_nets.epochs=2", "pool_nets.snapshots=2", "evaluation.runs=1"]
    result = train.run(compose(*overrides), tmp_path)
    # 2 networks x 2 chunks of 1 epoch, the DP selection's network per candidate (start and
    # end; debug=tiny: 3 epochs), then the one evaluation network (debug=tiny: 10 epochs)
    assert calls == [1, 1, 1, 1, 3, 3, 10]
    assert result.results["stages"]["generate"]["pool_test_acc"] is not None
    assert "pool_nets" in result.diagnostics["timings_s"]

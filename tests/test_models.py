"""Shapes, depth rule and opacus compatibility of the networks."""

from __future__ import annotations

import pytest
import torch
from opacus import GradSampleModule
from opacus.validators import ModuleValidator

from dpgd.config import ModelConfig
from dpgd.errors import ConfigError
from dpgd.models import ConvNet, ResNet18GN, build_model, default_depth, seeded_model


@pytest.mark.parametrize(
    ("shape", "depth", "feature_dim"),
    [((1, 8, 8), 2, 128 * 2 * 2), ((3, 32, 32), 3, 128 * 4 * 4), ((3, 64, 64), 4, 128 * 4 * 4)],
)
def test_convnet_default_depth_shapes(shape: tuple[int, int, int], depth: int, feature_dim: int) -> None:
    channels, height, width = shape
    assert default_depth((height, width)) == depth
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="convnet", width=128, depth=None), channels, 10, (height, width))
    assert isinstance(model, ConvNet)
    x = torch.randn(2, *shape)
    assert model.feature_dim == feature_dim
    assert model.embed(x).shape == (2, feature_dim)
    assert model(x).shape == (2, 10)


def test_default_depth_small_and_odd_sizes() -> None:
    assert default_depth((16, 16)) == 2
    assert default_depth((28, 28)) == 2
    assert default_depth((128, 128)) == 5
    assert default_depth((2, 2)) == 1
    with pytest.raises(ConfigError):
        default_depth((1, 1))


@pytest.mark.parametrize("norm", ["instancenorm", "groupnorm", "none"])
def test_convnet_norms_forward(norm: str) -> None:
    model = ConvNet(3, 5, (16, 16), width=16, depth=2, norm=norm)
    assert model(torch.randn(3, 3, 16, 16)).shape == (3, 5)


def test_instancenorm_is_groupnorm_per_channel() -> None:
    model = ConvNet(1, 10, (8, 8), width=32, depth=2)
    norm = model.features[1]
    assert isinstance(norm, torch.nn.GroupNorm) and norm.num_groups == 32 and norm.affine


def test_build_model_rejects_bad_config() -> None:
    with pytest.raises(ConfigError, match="model.name"):
        build_model(ModelConfig(name="vgg"), 3, 10, (32, 32))
    with pytest.raises(ConfigError, match="model.norm"):
        build_model(ModelConfig(norm="batchnorm"), 3, 10, (32, 32))
    with pytest.raises(ConfigError, match="depth"):
        build_model(ModelConfig(depth=4), 1, 10, (8, 8))


def test_convnet_is_opacus_compatible() -> None:
    model = ConvNet(1, 10, (8, 8), width=16, depth=2)
    assert ModuleValidator.validate(model, strict=True) == []


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_resnet18gn_opacus_per_sample_gradients() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="resnet18", width=16, norm="groupnorm"), 3, 10, (16, 16))
    assert isinstance(model, ResNet18GN)
    assert ModuleValidator.validate(model, strict=True) == []
    x = torch.randn(4, 3, 16, 16)
    assert model.embed(x).shape == (4, model.feature_dim) == (4, 128)
    private = GradSampleModule(model)
    loss = torch.nn.functional.cross_entropy(private(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    for parameter in private.parameters():
        assert parameter.grad_sample is not None
        assert parameter.grad_sample.shape == (4, *parameter.shape)
    # With a mean-reduced loss, opacus rescales per-sample gradients so they average to the batch gradient.
    head = private._module.classifier.weight
    torch.testing.assert_close(head.grad_sample.mean(0), head.grad, rtol=1e-4, atol=1e-6)


def test_resnet18gn_default_widths() -> None:
    model = ResNet18GN(3, 100)
    assert model.feature_dim == 512
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    assert ModuleValidator.validate(model, strict=True) == []


def test_seeded_model_is_reproducible_and_leaves_global_rng_alone() -> None:
    cfg = ModelConfig(width=8)
    torch.manual_seed(5)
    before = torch.get_rng_state()
    first = seeded_model(cfg, 1, 10, (8, 8), seed=7)
    again = seeded_model(cfg, 1, 10, (8, 8), seed=7)
    other = seeded_model(cfg, 1, 10, (8, 8), seed=8)
    assert torch.equal(torch.get_rng_state(), before)
    for a, b, c in zip(first.parameters(), again.parameters(), other.parameters()):
        assert torch.equal(a, b)
    assert not torch.equal(first.classifier.weight, other.classifier.weight)

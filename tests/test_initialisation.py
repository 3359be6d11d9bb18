"""Initialisation: noise/real, k-means and random picks from a pool, multi-formation."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from dpgd.config import InitConfig, ModelConfig, PoolNetsConfig
from dpgd.errors import ConfigError
from dpgd.generators import Pool
from dpgd.distilled import DistilledSet, expand_multi_formation, pack_multi_formation
from dpgd.initialisation import check_init, initialise, initialise_from_pool, kmeans_nearest
from dpgd.matching import match_to_pool
from dpgd.models import seeded_model
from dpgd.pool_networks import train_pool_networks

CPU = torch.device("cpu")

pytestmark = pytest.mark.usefixtures("one_torch_thread")





SMALL_NET = ModelConfig(width=32)




@pytest.fixture(scope="module")
def pool(digits) -> Pool:
    """A stand-in pool: 60 images per class (the test needs pool images, not DP ones)."""
    keep = torch.cat([torch.nonzero(digits.train_labels == c).flatten()[:60] for c in range(10)])
    return Pool(digits.train_images[keep].clone(), digits.train_labels[keep].clone())


def pool_rows(pool: Pool, images: torch.Tensor) -> list[int]:
    """Index in the pool of each image (exact match), -1 when absent."""
    flat = pool.images.flatten(1)
    rows = []
    for image in images.flatten(1):
        hit = torch.nonzero((flat == image).all(dim=1)).flatten()
        rows.append(int(hit[0]) if len(hit) else -1)
    return rows


def test_noise_and_real_keep_their_behaviour(digits) -> None:
    noise = initialise("noise", digits, 3, 1.0, torch.Generator().manual_seed(0))
    assert noise.images.shape == (30, 1, 8, 8) and noise.factor == 1
    real = initialise("real", digits, 2, math.inf, torch.Generator().manual_seed(0))
    assert real.labels.tolist() == [c for c in range(10) for _ in range(2)]
    with pytest.raises(ConfigError, match="epsilon=inf"):
        initialise("real", digits, 2, 1.0, torch.Generator())
    with pytest.raises(ConfigError, match="generator"):
        initialise("kmeans", digits, 2, 1.0, torch.Generator())


@pytest.mark.parametrize("feature_space", ["pixels", "pool_net"])
def test_kmeans_keeps_distinct_pool_images_per_class(digits, pool, feature_space) -> None:
    cfg = InitConfig(name="kmeans", feature_space=feature_space, kmeans_restarts=1)
    embedding = train_pool_networks(PoolNetsConfig(epochs=3, snapshots=1, cache=False), 1, SMALL_NET, pool.images,
                                    pool.labels, digits, seed=0, device=CPU, cache_dir=None, progress=False).final()
    distilled = initialise_from_pool(cfg, pool, digits, 5, seed=0, embedding=embedding)
    assert distilled.images.shape == (50, 1, 8, 8) and distilled.factor == 1
    assert distilled.labels.tolist() == [c for c in range(10) for _ in range(5)]
    rows = pool_rows(pool, distilled.images)
    assert -1 not in rows and len(set(rows)) == 50
    assert pool.labels[rows].tolist() == distilled.labels.tolist()
    again = initialise_from_pool(cfg, pool, digits, 5, seed=0, embedding=embedding)
    torch.testing.assert_close(again.images, distilled.images)  # reproducible from the seed


def test_kmeans_nearest_picks_one_row_per_cluster() -> None:
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    noise = 0.1 * torch.randn(60, 2, generator=torch.Generator().manual_seed(0))
    points = centres.repeat(20, 1) + noise  # three tight, well separated clusters
    chosen = kmeans_nearest(points, 3, iters=50, restarts=2, seed=0)
    nearest_centre = torch.cdist(points[chosen], centres).argmin(dim=1)
    assert sorted(nearest_centre.tolist()) == [0, 1, 2]  # one representative per cluster
    assert len(set(chosen.tolist())) == 3


def test_random_pool_picks_distinct_pool_images(digits, pool) -> None:
    distilled = initialise_from_pool(InitConfig(name="random_pool"), pool, digits, 4, seed=1)
    rows = pool_rows(pool, distilled.images)
    assert -1 not in rows and len(set(rows)) == 40
    assert pool.labels[rows].tolist() == distilled.labels.tolist()


def test_multi_formation_packs_and_expands(digits, pool) -> None:
    cfg = InitConfig(name="kmeans", feature_space="pixels", multi_formation=2, kmeans_restarts=1)
    distilled = initialise_from_pool(cfg, pool, digits, 3, seed=0)
    assert distilled.images.shape == (30, 1, 8, 8) and distilled.factor == 2
    images, labels = distilled.expanded()
    assert images.shape == (120, 1, 8, 8)
    assert labels.tolist() == [c for c in range(10) for _ in range(12)]

    # Constant tiles survive the round trip exactly and land in row-major order.
    values = torch.arange(8, dtype=torch.float32)
    tiles = values.view(8, 1, 1, 1).expand(8, 1, 8, 8)
    packed = pack_multi_formation(tiles, 2)
    assert packed.shape == (2, 1, 8, 8)
    assert packed[0, 0, :4, :4].unique().tolist() == [0.0] and packed[0, 0, 4:, :4].unique().tolist() == [2.0]
    full, full_labels = expand_multi_formation(packed, torch.tensor([3, 7]), 2)
    torch.testing.assert_close(full, tiles)
    assert full_labels.tolist() == [3, 3, 3, 3, 7, 7, 7, 7]
    assert expand_multi_formation(packed, torch.tensor([3, 7]), 1)[0] is packed

    # Expansion is differentiable (matching runs through it).
    stored = torch.zeros(2, 1, 8, 8, requires_grad=True)
    expand_multi_formation(stored, torch.tensor([0, 1]), 2)[0].sum().backward()
    assert stored.grad is not None and stored.grad.abs().sum() > 0


def test_pool_inits_refuse_bad_settings(digits, pool) -> None:
    with pytest.raises(ConfigError, match="generator=dp_merf"):
        initialise_from_pool(InitConfig(name="kmeans"), None, digits, 2, seed=0)
    with pytest.raises(ConfigError, match="generator=dp_merf"):
        check_init(InitConfig(name="kmeans"), "none")
    with pytest.raises(ConfigError, match="pool_per_class"):
        initialise_from_pool(InitConfig(name="random_pool", multi_formation=2), pool, digits, 20, seed=0)
    with pytest.raises(ConfigError, match="divide"):
        check_init(InitConfig(name="kmeans", multi_formation=3), "dp_merf", digits.image_size)
    with pytest.raises(ConfigError, match="kmeans/random_pool only"):
        check_init(InitConfig(name="noise", multi_formation=2), "none")
    with pytest.raises(ConfigError, match="feature_space"):
        check_init(InitConfig(name="kmeans", feature_space="clip"), "dp_merf")
    with pytest.raises(ConfigError, match="does not use a pool"):
        initialise_from_pool(InitConfig(name="noise"), pool, digits, 2, seed=0)
    check_init(InitConfig(name="random_pool", multi_formation=2), "dp_merf", digits.image_size)
    with pytest.raises(ConfigError, match="has no pool"):
        check_init(InitConfig(name="noise", pool_matching_iterations=5), "none")
    with pytest.raises(ConfigError, match="pool_matching_iterations must be 0"):
        check_init(InitConfig(name="kmeans", pool_matching_iterations=-1), "dp_merf")


def class_mean_gap(images: torch.Tensor, labels: torch.Tensor, pool: Pool, digits) -> float:
    """Squared distance between the class means of ``images`` and of the pool, summed over
    classes and averaged over five random ConvNets the matching never drew."""
    total = 0.0
    for seed in range(100, 105):
        net = seeded_model(SMALL_NET, digits.channels, digits.num_classes, digits.image_size, seed).eval()
        with torch.no_grad():
            syn, real = net.embed(images), net.embed(pool.images)
        for c in range(digits.num_classes):
            total += float((syn[labels == c].mean(0) - real[pool.labels == c].mean(0)).square().sum())
    return total / 5


def test_pool_matching_moves_the_selection_toward_the_whole_pool(digits, pool) -> None:
    cfg = InitConfig(name="random_pool", pool_matching_iterations=40)
    start = initialise_from_pool(cfg, pool, digits, 2, seed=0)
    moved = match_to_pool(start, pool.images, pool.labels, digits, cfg, SMALL_NET, seed=0, device=CPU)
    assert moved.labels.tolist() == start.labels.tolist() and moved.factor == 1
    before, after = class_mean_gap(start.images, start.labels, pool, digits), class_mean_gap(
        moved.images, moved.labels, pool, digits)
    assert after < 0.4 * before, (before, after)  # measured 0.17
    off = dataclasses.replace(cfg, pool_matching_iterations=0)
    assert match_to_pool(start, pool.images, pool.labels, digits, off, SMALL_NET, seed=0, device=CPU) is start


def test_pool_matching_reads_the_pool_and_no_private_record(digits, pool) -> None:
    """The private splits handed along are NaN sentinels: any read would poison the images."""
    cfg = InitConfig(name="random_pool", pool_matching_iterations=5)
    start = initialise_from_pool(cfg, pool, digits, 2, seed=0)
    poisoned = dataclasses.replace(digits, train_images=torch.full_like(digits.train_images, float("nan")),
                                   test_images=torch.full_like(digits.test_images, float("nan")))
    clean = match_to_pool(start, pool.images, pool.labels, digits, cfg, SMALL_NET, seed=0, device=CPU)
    sentinel = match_to_pool(start, pool.images, pool.labels, poisoned, cfg, SMALL_NET, seed=0, device=CPU)
    assert torch.isfinite(sentinel.images).all()
    assert torch.equal(clean.images, sentinel.images)
    assert not torch.equal(clean.images, start.images)


def test_distilled_set_defaults_to_factor_one() -> None:
    distilled = DistilledSet(torch.zeros(4, 1, 8, 8), torch.tensor([0, 0, 1, 1]))
    images, labels = distilled.expanded()
    assert images is distilled.images and labels is distilled.labels

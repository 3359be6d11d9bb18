"""Public knowledge (public=folder): the pool, its fingerprint, pretraining, PE over the pool,
the nearest-noisy-class-mean expert, and that none of it reads a private record.

The public pool of these tests: the digits TEST split (never the train split) written as
PNGs in five label folders, plus a one-image folder and a file at the root; a few hundred
8x8 images, so pretraining takes about a second.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from dpgd.config import ExpertConfig, GeneratorConfig, ModelConfig, PeConfig, PublicConfig
from dpgd.counts import release_class_counts
from dpgd.data import ImageDataset
from dpgd.errors import ConfigError, DataNotFoundError, DpgdError
from dpgd.expert import choose_finetuning, privacy_request as expert_request, train_lda_expert
from dpgd.generators import generate_pool, pe
from dpgd.generators.pe_public import PublicPoolSource, neighbour_schedule
from dpgd.models import build_model
from dpgd.privacy import PrivacyLedger, SubsampledGaussian
from dpgd.privacy.components import ReleaseLog
from dpgd.privacy.randomness import NoiseSource
from dpgd.public import PublicShape, fingerprint, load_public_pool, prepare_public
from dpgd.public.pretrain import features_of, load_weights_file, network_for, pretrain

CPU = torch.device("cpu")
TINY_NET = ModelConfig(width=16)
REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def public_cfg(root: Path, **kw) -> PublicConfig:
    return PublicConfig(name="folder", root=str(root), epochs=3, snapshots=3, min_images=50, **kw)


@pytest.fixture(scope="module")
def public_root(tmp_path_factory, digits) -> Path:
    """Digits' test split as 16x16 PNGs: label folders group<d mod 5>, one single-image
    folder and one unlabelled file at the root."""
    root = tmp_path_factory.mktemp("public")
    pixels = digits.denormalise(digits.test_images[:250])
    for i, img in enumerate(pixels):
        folder = root / "groups" / f"group{int(digits.test_labels[i]) % 5}"
        folder.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray((img[0].numpy() * 255).round().astype("uint8"), mode="L").resize((16, 16))
        image.save(folder / f"{i:04d}.png")
    (root / "sample" / "one").mkdir(parents=True)
    Image.fromarray((pixels[0][0].numpy() * 255).astype("uint8"), mode="L").save(root / "sample" / "one" / "a.png")
    Image.fromarray((pixels[1][0].numpy() * 255).astype("uint8"), mode="L").save(root / "loose.png")
    return root


@pytest.fixture(scope="module")
def knowledge(public_root, digits):
    return prepare_public(public_cfg(public_root), PublicShape.of(digits), TINY_NET, device=CPU, cache_dir=None,
                          progress=False)


def sentinel(dataset: ImageDataset, value: float) -> ImageDataset:
    """The same public shape, labels and constants, every private image a constant."""
    return dataclasses.replace(dataset, train_images=torch.full_like(dataset.train_images, value))


# ------------------------------------------------------------------ the pool


def test_the_pool_is_decoded_at_the_private_shape_with_folder_labels(public_root):
    pool = load_public_pool(str(public_root), 1, (8, 8), 50)
    assert pool.pixels.shape == (252, 1, 8, 8) and pool.pixels.dtype == torch.uint8
    counts = dict(zip(pool.label_names, pool.label_counts().tolist()))
    assert counts[""] == 1 and counts["sample/one"] == 1 and sum(counts.values()) == 252
    assert all(counts[f"groups/group{g}"] > 20 for g in range(5))
    assert pool.fingerprint == fingerprint(public_root)
    colour = load_public_pool(str(public_root), 3, (12, 12), 50)
    assert colour.pixels.shape == (252, 3, 12, 12) and colour.fingerprint == pool.fingerprint


def test_the_fingerprint_changes_when_one_public_file_changes(public_root, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(public_root, copy)
    before = fingerprint(copy)
    assert before == fingerprint(public_root)
    target = sorted((copy / "groups" / "group0").glob("*.png"))[3]
    image = Image.open(target).convert("L")
    value = image.getpixel((0, 0))
    image.putpixel((0, 0), (value + 1) % 256)
    image.save(target)
    changed = fingerprint(copy)
    assert changed != before
    target.rename(target.with_name("renamed.png"))  # same bytes, another name
    assert fingerprint(copy) not in (before, changed)


def test_unreadable_files_are_skipped_and_too_few_images_refused(public_root, tmp_path):
    (tmp_path / "a").mkdir()
    for i in range(3):
        (tmp_path / "a" / f"broken{i}.png").write_bytes(b"not an image")
    Image.new("L", (5, 5)).save(tmp_path / "a" / "fine.png")
    pool = load_public_pool(str(tmp_path), 1, (8, 8), 1)
    assert len(pool) == 1 and len(pool.skipped) == 3
    with pytest.raises(DataNotFoundError, match="1 of 4 image files could be decoded"):
        load_public_pool(str(tmp_path), 1, (8, 8), 2)
    with pytest.raises(DataNotFoundError, match="is not a folder"):
        load_public_pool(str(tmp_path / "missing"), 1, (8, 8), 1)


def test_public_settings_are_judged_before_any_data_is_read(compose, public_root, tmp_path):
    from dpgd.train import run

    cases = {
        ("experiment=dpgeng_public", f"public.root={tmp_path / 'missing'}"): "is not a folder",
        ("experiment=dpgeng_public", f"public.root={public_root}", "public.min_images=1000"): "at least public.min_images",
        ("experiment=ndpdc_public", f"public.root={public_root}", "public.epochs=2", "public.snapshots=3"):
            "must be at least public.snapshots",
        ("matcher.extractors=public",): "public=folder",
        ("expert.finetune=lda",): "public=folder",
        ("generator=pe", "generator.pe.source=public"): "public=folder",
        ("experiment=dpgeng_public", f"public.root={public_root}", "public.weights=/no/such/file"): "is not a file",
    }
    for overrides, message in cases.items():
        with pytest.raises(DpgdError, match=message):
            run(compose(*overrides, "logger=none"), tmp_path / "run")
        assert not (tmp_path / "run" / "release").exists()
    with pytest.raises(ConfigError, match="public=folder needs public.root"):
        run(compose("experiment=dpgeng_public", "logger=none"), tmp_path / "run")


def test_a_flat_folder_cannot_be_pretrained_on(tmp_path, digits):
    for i in range(60):
        Image.new("L", (8, 8), color=i).save(tmp_path / f"{i}.png")
    with pytest.raises(ConfigError, match="public.weights"):
        prepare_public(public_cfg(tmp_path), PublicShape.of(digits), TINY_NET, device=CPU, cache_dir=None,
                       progress=False)


# ------------------------------------------------------------------ pretraining


def test_pretraining_is_cached_and_own_weights_replace_it(public_root, digits, tmp_path):
    cfg = public_cfg(public_root)
    pool = load_public_pool(str(public_root), 1, (8, 8), 50)
    first = pretrain(cfg, pool, TINY_NET, digits.mean, digits.std, device=CPU, cache_dir=tmp_path, progress=False)
    again = pretrain(cfg, pool, TINY_NET, digits.mean, digits.std, device=CPU, cache_dir=tmp_path, progress=False)
    assert first.info["cache_hit"] is False and again.info["cache_hit"] is True
    assert len(first.snapshots) == 3 and first.label_names == tuple(f"groups/group{g}" for g in range(5))
    assert all(torch.equal(first.final[k], again.final[k]) for k in first.final)
    other = pretrain(dataclasses.replace(cfg, epochs=4), pool, TINY_NET, digits.mean, digits.std, device=CPU,
                     cache_dir=tmp_path, progress=False)
    assert other.info["cache_hit"] is False and other.key != first.key

    file = tmp_path / "mine.pt"
    torch.save(first.final, file)
    own = load_weights_file(str(file), TINY_NET, 1, (8, 8))
    assert own.key.startswith("weights-") and set(own.final) == set(features_of(first.final))
    model = network_for(TINY_NET, 1, 10, (8, 8), own.final, seed=3)
    assert torch.equal(model.features[0].weight, first.final["features.0.weight"])
    assert model.classifier.out_features == 10
    with pytest.raises(ConfigError, match="does not fit"):
        load_weights_file(str(file), ModelConfig(width=32), 1, (8, 8))


def test_public_preparation_never_reads_a_private_record(public_root, digits, knowledge):
    """Sentinel private data sets (constant images, one of them NaN) give the same public
    network, embedding and candidates bit for bit: a read private image would change them."""
    for value in (7.0, float("nan")):
        other = prepare_public(public_cfg(public_root), PublicShape.of(sentinel(digits, value)), TINY_NET,
                               device=CPU, cache_dir=None, progress=False)
        assert all(torch.equal(other.network.final[k], knowledge.network.final[k]) for k in knowledge.network.final)
        assert torch.equal(other.embedding, knowledge.embedding) and torch.isfinite(other.embedding).all()
        source, reference = PublicPoolSource(other, seed=0), PublicPoolSource(knowledge, seed=0)
        assert torch.equal(source.random_api(8, "clusters", torch.Generator().manual_seed(1)),
                           reference.random_api(8, "clusters", torch.Generator().manual_seed(1)))
        parents = torch.arange(10)
        assert torch.equal(source.variation_api(parents, 5, torch.Generator().manual_seed(2)),
                           reference.variation_api(parents, 5, torch.Generator().manual_seed(2)))


@pytest.mark.slow
def test_a_run_on_a_sentinel_data_set_pretrains_the_same_network_before_any_release(compose, public_root, digits,
                                                                                    tmp_path, monkeypatch):
    """The whole pipeline on digits and on a sentinel copy (every private image 7.0, far
    outside the pixel range): the public stage runs before the first release and writes
    the same network and embedding, tensor for tensor, into each run's own cache."""
    from dpgd import pipeline
    from dpgd.config import typed

    ledgers, real = [], pipeline.prepare_public

    def spy(*args, **kwargs):
        ledgers.append(len(current.mechanisms))  # nothing declared yet when the public stage runs
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "prepare_public", spy)
    saved = []
    for name, dataset in (("real", digits), ("sentinel", sentinel(digits, 7.0))):
        cfg = typed(compose("experiment=dpgeng_public", f"public.root={public_root}", "public.epochs=3",
                            "public.min_images=50", "model.width=16", "debug=tiny", "selection=none",
                            "matcher=none", "expert=none", "generator.pe.population=12", "generator.pe.rounds=1",
                            "generator.pe.neighbours_start=4", "generator.pe.neighbours_end=4",
                            f"generator.cache_dir={tmp_path / name}", "epsilon=inf"))
        current = PrivacyLedger()
        release = pipeline.distill(cfg, dataset, None, current, device=CPU, progress=False)
        files = sorted((tmp_path / name / "public").glob("*.pt"))
        saved.append((release.public, [torch.load(f, weights_only=True) for f in files]))
    assert ledgers == [0, 0]
    (public_a, files_a), (public_b, files_b) = saved
    assert public_a == public_b and len(files_a) == len(files_b) == 2  # the network and the embedding
    for a, b in zip(files_a, files_b):
        tensors_a = [v for v in torch.utils._pytree.tree_leaves(a) if isinstance(v, torch.Tensor)]
        tensors_b = [v for v in torch.utils._pytree.tree_leaves(b) if isinstance(v, torch.Tensor)]
        assert tensors_a and all(torch.equal(x, y) for x, y in zip(tensors_a, tensors_b))


def test_the_embedding_has_norm_at_most_one_and_neighbours_start_with_themselves(knowledge):
    assert knowledge.embedding.shape[0] == len(knowledge.pool)
    assert float(knowledge.embedding.norm(dim=1).max()) <= 1.0 + 1e-5
    table = knowledge.neighbours(torch.tensor([0, 5, 9]), 4)
    assert table.shape == (3, 4) and table[:, 0].tolist() == [0, 5, 9]
    assert neighbour_schedule(100, 10, 3) == [100, 32, 10] and neighbour_schedule(50, 5, 1) == [5]


# ------------------------------------------------------------------ PE over the public pool


def pe_cfg(**pe_kw) -> GeneratorConfig:
    opts = PeConfig(source="public", rounds=3, population=12, neighbours_start=20, neighbours_end=4, **pe_kw)
    return GeneratorConfig(name="pe", pool_per_class=12, pe=opts, cache=False)


def test_pe_rounds_are_declared_with_their_sensitivity_and_the_pool_is_public_images(digits, dp_inputs,
                                                                                    knowledge, monkeypatch):
    ledger = PrivacyLedger()
    pool = generate_pool(pe_cfg(strength_end=0.0), digits, 4.0, ledger, private=True, seed=0, device=CPU,
                         public=knowledge, progress=False, **dp_inputs)
    declared = (SubsampledGaussian("generator", 4.0, 1.0, 3, pe.SENSITIVITY_TEXT),)
    assert pool.mechanisms == declared and tuple(ledger.mechanisms) == declared
    assert "L2 sensitivity 1" in pe.SENSITIVITY_TEXT
    assert [r["round"] for r in pool.info["rounds"]] == [0, 1, 2] and pool.info["source"] == "public"
    assert pool.images.shape == (120, 1, 8, 8) and torch.bincount(pool.labels).tolist() == [12] * 10
    # strength_end=0: every pool image is a public image or its mirror image.
    public = knowledge.images()
    candidates = torch.cat([public, public.flip(3)]).flatten(1)
    nearest = torch.cdist(pool.images.flatten(1), candidates, compute_mode="donot_use_mm_for_euclid_dist").min(1).values
    assert float(nearest.max()) < 1e-5


def test_pe_over_the_public_pool_runs_one_release_per_round(digits, dp_inputs, knowledge, monkeypatch):
    drawn = []
    real = torch.randn

    def spy(*args, **kwargs):
        drawn.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr("dpgd.generators.pe_public.torch.randn", spy)
    releases = ReleaseLog("generator")
    generator = pe.PrivateEvolution(pe_cfg(strength_end=0.0), progress=False)
    generator.public = knowledge
    generator.fit_and_sample(digits, 2.0, 0, CPU, releases=releases, **dp_inputs)
    assert releases.sigmas == [2.0, 2.0, 2.0] and len(drawn) == 3


def test_noiseless_votes_choose_public_images_of_the_private_class(digits, dp_inputs, knowledge):
    """The public groups are digits mod 5: without noise, most of class c's pool comes
    from group c mod 5."""
    pool = generate_pool(pe_cfg(strength_end=0.0), digits, None, PrivacyLedger(), private=False, seed=0,
                         device=CPU, public=knowledge, progress=False, **dp_inputs)
    public = knowledge.images().flatten(1)
    group = torch.tensor([int(n[-1]) if n.startswith("groups/") else -1 for n in knowledge.pool.label_names])
    labels = group[knowledge.pool.labels]
    flat = pool.images.flatten(1)
    index = torch.cat([torch.cdist(flat, public), torch.cdist(flat, knowledge.images().flip(3).flatten(1))],
                      dim=1).argmin(dim=1) % public.shape[0]
    agree = (labels[index] == pool.labels % 5).float().mean()
    assert float(agree) > 0.6


# ------------------------------------------------------------------ the expert


def test_the_auto_rule_offers_the_discriminant_head_only_with_public_knowledge(digits):
    model = build_model(ModelConfig(), 1, 10, (8, 8))
    cfg = ExpertConfig()
    assert choose_finetuning(cfg, [50.0], model, 1400).finetune == "none"
    choice = choose_finetuning(cfg, [50.0], model, 1400, lda_sigma=20.0, classes=10)
    assert choice.finetune == "lda" and choice.noise_to_signal["lda"] == pytest.approx(20 * 256**0.5 / 140)
    assert choose_finetuning(cfg, [0.1], model, 1400, lda_sigma=0.1, classes=10).finetune == "all"
    assert choose_finetuning(cfg, [50.0], model, 1400, lda_sigma=500.0, classes=10).finetune == "none"
    assert expert_request(dataclasses.replace(cfg, finetune="lda")).mechanisms(3.0) == (
        SubsampledGaussian("expert", 3.0, 1.0, 1, "one record adds its public-embedding projection (norm <= 1) to "
                           "its own class's sum: L2 sensitivity 1"),)


def test_the_discriminant_expert_is_one_release_and_classifies(digits, knowledge):
    counts = release_class_counts(digits.train_labels, 10, None, torch.Generator())
    releases = ReleaseLog("expert")
    cfg = ExpertConfig(finetune="lda", lda_dims=16)
    pool_images, pool_labels = digits.test_images[:200], digits.test_labels[:200]  # stands in for a DP pool
    expert = train_lda_expert(cfg, knowledge, digits, 2.0, pool_images, pool_labels,
                              noise=NoiseSource.from_public_seed(0), counts=counts, seed=0, releases=releases)
    assert releases.sigmas == [2.0] and expert.info["steps"] == 1.0
    from dpgd.expert import pool_accuracy

    assert pool_accuracy(expert, digits) > 50.0  # chance: 10 %
    exact = train_lda_expert(cfg, knowledge, digits, None, pool_images, pool_labels,
                             noise=NoiseSource.from_public_seed(0), counts=counts, seed=0)
    assert pool_accuracy(exact, digits) > 50.0


# ------------------------------------------------------------------ end to end and the script


@pytest.mark.slow
def test_dpgeng_public_end_to_end_records_the_public_pool(compose, public_root, tmp_path):
    from dpgd.train import run

    result = run(compose("experiment=dpgeng_public", f"public.root={public_root}", "public.epochs=3",
                         "public.min_images=50", "model.width=16", "debug=tiny", "logger=none",
                         "selection=none", "expert.finetune=lda", "generator.pe.population=12",
                         "generator.pe.neighbours_start=20", "generator.pe.neighbours_end=4",
                         "generator.pe.rounds=2"), tmp_path / "run")
    privacy = result.results["privacy"]
    digest = fingerprint(public_root)
    assert any(digest in text and "252 images" in text for text in privacy["public_assumptions"])
    assert privacy["public_data"]["fingerprint"] == digest and privacy["public_data"]["images"] == 252
    components = {m["component"]: m for m in privacy["mechanisms"]}
    assert components["generator"]["steps"] == 2 and components["generator"]["sample_rate"] == 1.0
    assert components["expert"]["steps"] == 1 and components["expert"]["sample_rate"] == 1.0
    assert privacy["epsilon"] <= 1.0 and result.results["stages"]["expert"]["finetune"] == "lda"
    assert result.diagnostics["public"]["pretrain_cache_hit"] is False
    assert "public" in result.diagnostics["timings_s"]


@pytest.mark.slow
def test_ndpdc_public_matches_through_the_public_snapshots(compose, public_root, tmp_path, monkeypatch):
    from dpgd.matching import extractors
    from dpgd.train import run

    seen = []
    real = extractors.PoolTrainedExtractors.__init__

    def spy(self, networks, generator):
        seen.append(len(networks))
        real(self, networks, generator)

    monkeypatch.setattr(extractors.PoolTrainedExtractors, "__init__", spy)
    result = run(compose("experiment=ndpdc_public", f"public.root={public_root}", "public.epochs=3",
                         "public.min_images=50", "model.width=16", "debug=tiny", "logger=none"), tmp_path / "run")
    assert seen == [3] and result.results["method"] == "ndpdc_public"
    assert {m["component"] for m in result.results["privacy"]["mechanisms"]} == {"counts", "matcher"}


def test_prepare_public_pool_keeps_the_folders_and_resizes(tmp_path):
    src = tmp_path / "src"
    for label in ("n01", "n02"):
        (src / label / "images").mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (64, 48), color=(i * 40, 10, 200)).save(src / label / "images" / f"x{i}.JPEG")
    (src / "n02" / "images" / "bad.jpg").write_bytes(b"no")
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "prepare_public_pool.py"), str(src), str(out),
                           "--size", "16", "--per-class", "2"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert files == ["n01/images/x0.png", "n01/images/x1.png", "n02/images/x0.png", "n02/images/x1.png"]
    assert Image.open(out / files[0]).size == (16, 16)
    assert "4 images written" in done.stderr

"""Advisor measurements on synthetic data, end-to-end ``advise`` with ``tiny_test``, the CLI, and
embedding reuse by a later feature-extraction run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medtl.advisor import (
    STRATEGIES,
    BNStatsRecorder,
    advise,
    imagenet_entropy,
    probe_transferability,
)


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory):
    from medtl.data.synth import make_phantom

    return make_phantom(tmp_path_factory.mktemp("adv") / "ph", n_per_class=20, size=64, seed=1)


def _calibrated_tiny():
    """tiny_test whose BN running stats are those of `reference` images (like ImageNet BN stats)."""
    from medtl.backbones import create_backbone, preprocess

    torch.manual_seed(0)
    model, cfg = create_backbone("tiny_test")
    rng = np.random.default_rng(0)
    reference = rng.integers(60, 200, size=(64, 1, 32, 32)).astype(np.uint8)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average
            m.reset_running_stats()
    model.train()
    with torch.no_grad():
        for i in range(0, 64, 16):
            model(preprocess(reference[i : i + 16], cfg))
    model.eval()
    return model, cfg, reference


def _kl(model, cfg, pixels):
    from medtl.strategies import extract_embeddings

    rec = BNStatsRecorder(model).attach()
    extract_embeddings(model, cfg, pixels, progress=False, precision="fp32")
    rec.detach()
    assert rec.images_seen == len(pixels)
    return rec.divergence()


def test_bn_divergence_grows_with_intensity_shift():
    model, cfg, reference = _calibrated_tiny()
    same = _kl(model, cfg, reference)
    shifted = _kl(model, cfg, np.clip(reference.astype(int) + 70, 0, 255).astype(np.uint8))
    inverted = _kl(model, cfg, (255 - reference) // 4)
    assert same["layers"] == 3
    assert same["kl"] < 0.05  # the images the statistics came from
    assert shifted["kl"] > same["kl"] + 0.1
    assert inverted["kl"] > same["kl"] + 0.1
    assert shifted["mean_shift"] > same["mean_shift"]


def test_imagenet_entropy_bounds_and_none_without_1000_way_head():
    from medtl.backbones import create_backbone

    torch.manual_seed(0)
    model, _ = create_backbone("tiny_test", num_classes=1000)
    emb = np.random.default_rng(0).normal(size=(10, 32)).astype(np.float32)
    h = imagenet_entropy(model, emb)
    assert h is not None and 0.0 < h <= 1.0
    with torch.no_grad():  # a confident classifier has low entropy
        model.get_classifier().weight.mul_(1000.0)
    assert imagenet_entropy(model, emb) < h
    model2, _ = create_backbone("tiny_test", num_classes=2)
    assert imagenet_entropy(model2, emb) is None


def test_probe_separates_informative_from_random_features():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 60)
    informative = rng.normal(size=(120, 16)) + 1.5 * y[:, None] * (np.arange(16) < 4)
    noise = rng.normal(size=(120, 16))
    good = probe_transferability(informative, y, seed=0)
    bad = probe_transferability(noise, y, seed=0)
    assert good["n_splits"] == 5
    assert good["probe_auroc"] > 0.9 and good["knn_auroc"] > 0.85
    assert abs(bad["probe_auroc"] - 0.5) < 0.15
    assert set(good["curve"]) == {"0.25", "0.5", "1.0"}
    assert good["curve_n"]["0.25"] < good["curve_n"]["1.0"]
    assert np.isfinite(good["slope_per_doubling"])
    # same seed, same numbers
    assert probe_transferability(informative, y, seed=0)["probe_folds"] == good["probe_folds"]


def test_probe_folds_grouped_by_patient_are_not_fooled_by_identity():
    # 40 patients x 4 near-identical images; the label is per patient and unrelated to the features,
    # so only memorising a patient's other images "predicts" it
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(40, 16)) * 3
    labels = np.arange(40) % 2
    rng.shuffle(labels)
    emb = np.repeat(centres, 4, axis=0) + 0.05 * rng.normal(size=(160, 16))
    y = np.repeat(labels, 4)
    ids = [f"p{i // 4}" for i in range(160)]
    leaky = probe_transferability(emb, y, seed=0)
    grouped = probe_transferability(emb, y, seed=0, groups=ids)
    assert leaky["knn_auroc"] > 0.9  # the same patient's images on both sides of a fold
    assert abs(grouped["knn_auroc"] - 0.5) < 0.2


def test_probe_without_enough_images_per_class_reports_it():
    out = probe_transferability(np.zeros((5, 3)), np.array([0, 0, 0, 0, 1]))
    assert out["n_splits"] == 0 and "error" in out


def test_advise_end_to_end_and_embeddings_are_reused(phantom_dir, tmp_path):
    from medtl.data import load_dataset, prepare_images
    from medtl.strategies import FeatureExtraction

    cache = tmp_path / "cache"
    ds = load_dataset(phantom_dir, progress=False)
    advice = advise(ds, backbone="tiny_test", cache_dir=cache, progress=False, image_size=32)
    assert advice.strategy in STRATEGIES
    d = json.loads(json.dumps(advice.to_dict(), allow_nan=False))
    assert d["strategy"] == advice.strategy
    n = len(ds.split("train")) + len(ds.split("val"))
    assert d["profile"]["n_images"] == n
    assert f"{n} images" in advice.rationale[0]
    p = advice.profile
    assert p.bn_kl is not None and p.bn_kl >= 0 and p.bn_layers == 3
    assert 0.0 <= p.probe["probe_auroc"] <= 1.0
    assert all(v > 0 for v in p.seconds_per_image.values())
    assert not p.subsampled
    assert "Recommendation" in advice.explain()
    # no patient identifiers (the phantom's DICOM headers carry fake ones) anywhere in the output
    text = json.dumps(d) + advice.explain()
    assert "PHI-" not in text and "Phantom^" not in text
    # a feature-extraction run on the same images reads the advisor's embeddings
    ro = {"window": "header"}
    tr = prepare_images(
        ds.split("train"),
        ds.classes,
        size=32,
        channels=1,
        cache_dir=cache / "images",
        read_options=ro,
        progress=False,
    )
    va = prepare_images(
        ds.split("val"),
        ds.classes,
        size=32,
        channels=1,
        cache_dir=cache / "images",
        read_options=ro,
        progress=False,
    )
    fe = FeatureExtraction(backbone="tiny_test", cache_dir=str(cache), progress=False).fit(tr, va)
    assert fe.cache_hits_ == len(tr) + len(va)
    # second advice: embeddings cached, BN statistics still measured by a short extra pass
    again = advise(ds, backbone="tiny_test", cache_dir=cache, progress=False, image_size=32)
    assert again.profile.embed_cache_hits == n
    assert again.profile.bn_kl == pytest.approx(p.bn_kl, rel=1e-3)


def test_advise_subsamples_and_says_so(phantom_dir, tmp_path):
    advice = advise(
        phantom_dir,
        backbone="tiny_test",
        cache_dir=tmp_path,
        progress=False,
        image_size=32,
        max_images=20,
    )
    assert advice.profile.subsampled and advice.profile.n_profiled == 20
    assert any("subsample of 20" in n for n in advice.notes)


def test_cli_advise_json_prints_one_object(phantom_dir, tmp_path, monkeypatch, capsys):
    from medtl.cli import main

    monkeypatch.chdir(tmp_path)
    rc = main(
        [
            "advise",
            "--data",
            str(phantom_dir),
            "--backbone",
            "tiny_test",
            "--image-size",
            "32",
            "--json",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out.strip()
    obj = json.loads(out)  # exactly one JSON document
    assert obj["strategy"] in STRATEGIES
    assert (tmp_path / ".medtl_cache" / "embeddings").is_dir()


def test_advise_rejects_unknown_backbone(phantom_dir, tmp_path):
    from medtl.errors import ConfigError

    with pytest.raises(ConfigError, match="tiny_test"):
        advise(phantom_dir, backbone="tiny_tset", cache_dir=tmp_path, progress=False)

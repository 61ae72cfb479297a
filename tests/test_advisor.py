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


def test_gradient_early_share_sums_passes_and_leaves_the_model_alone(monkeypatch):
    """The adaptability signal: a share in (0, 1) over the backbone's stages, the same from
    cache-sized passes as from one whole pass, and the caller's model unchanged."""
    import medtl.training
    from medtl.advisor._measure import gradient_early_share
    from medtl.strategies import extract_embeddings

    model, cfg, reference = _calibrated_tiny()
    y = np.arange(64) % 2
    pixels = reference.copy()
    pixels[y == 1, :, 8:24, 8:24] = 250
    emb = extract_embeddings(model, cfg, pixels, progress=False, precision="fp32")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.requires_grad for p in model.parameters()]
    r = gradient_early_share(model, cfg, pixels, y, emb)
    assert 0.0 < r["early_share"] < 1.0
    assert len(r["per_stage"]) == len(cfg.stages) and r["images"] == 64
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [p.requires_grad for p in model.parameters()] == grads
    assert all(p.grad is None for p in model.parameters())
    monkeypatch.setattr(medtl.training, "micro_batch_size", lambda *a, **k: 64)
    whole = gradient_early_share(model, cfg, pixels, y, emb)
    np.testing.assert_allclose(whole["per_stage"], r["per_stage"], rtol=1e-4)
    one_class = gradient_early_share(model, cfg, pixels, np.zeros(64, int), emb)
    assert one_class["early_share"] is None


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


PILOT = 0.25  # minutes: a tiny pilot (tiny_test, 32 px) keeps each advise call to a few seconds


def _stable(a) -> dict:
    """The parts of the advice that must not depend on the machine's speed."""
    d = a.to_dict()
    return {k: d[k] for k in ("strategy", "confidence", "expected_auroc", "rationale", "decision")}


def test_advise_end_to_end_deterministic_and_embeddings_are_reused(phantom_dir, tmp_path):
    from medtl.data import load_dataset, prepare_images
    from medtl.strategies import FeatureExtraction

    cache = tmp_path / "cache"
    ds = load_dataset(phantom_dir, progress=False)
    kw = {"backbone": "tiny_test", "progress": False, "image_size": 32, "pilot_minutes": PILOT}
    advice = advise(ds, cache_dir=cache, **kw)
    assert advice.strategy in STRATEGIES
    d = json.loads(json.dumps(advice.to_dict(), allow_nan=False))
    n = len(ds.split("train")) + len(ds.split("val"))
    assert d["profile"]["n_images"] == n
    assert f"your {n} labelled images" in advice.rationale[0]
    plan = d["profile"]["pilot"]["plan"]
    assert len(plan["ft_sizes"]) >= 2 and plan["n_eval"] >= 4
    assert set(d["curves"]) == set(STRATEGIES)
    assert d["decision"]["measured_paired"]["size"] == plan["ft_sizes"][-1]
    assert {"decode", "embed_and_profile", "fine_tuning_pilot", "total"} <= set(
        d["budget"]["seconds"]
    )
    p = advice.profile
    assert p.bn_kl is not None and p.bn_layers == 3
    assert "Details:" in advice.explain()
    # no patient identifiers (the phantom's DICOM headers carry fake ones) anywhere in the output
    text = json.dumps(d) + advice.explain()
    assert "PHI-" not in text and "Phantom^" not in text
    # a feature-extraction run on the same images reads the advisor's embeddings
    ro = {"window": "header"}
    tr, va = (
        prepare_images(
            ds.split(s), ds.classes, size=32, channels=1, cache_dir=cache / "images",
            read_options=ro, progress=False,
        )
        for s in ("train", "val")
    )  # fmt: skip
    fe = FeatureExtraction(backbone="tiny_test", cache_dir=str(cache), progress=False).fit(tr, va)
    assert fe.cache_hits_ == len(tr) + len(va)
    # same data and seed, warm caches (other timings): the same advice
    again = advise(ds, cache_dir=cache, **kw)
    assert again.profile.embed_cache_hits == n
    assert _stable(again) == _stable(advice)


def test_advise_budget_excludes_fine_tuning(phantom_dir, tmp_path):
    a = advise(
        phantom_dir,
        backbone="tiny_test",
        cache_dir=tmp_path,
        progress=False,
        image_size=32,
        pilot_minutes=PILOT,
        budget_minutes=1e-6,
    )
    assert a.strategy == "feature_extraction"
    assert a.decision["branch"] == "budget"
    assert any("budget" in s for s in a.rationale)


def test_advise_multiclass_png_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "three"
    for c, name in enumerate(["a", "b", "c"]):
        (root / name).mkdir(parents=True)
        for i in range(24):
            img = rng.normal(90 + 40 * c, 25, (32, 32))
            img[8 * c : 8 * c + 8, :] += 60  # a class-specific band
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / name / f"{i}.png")
    a = advise(
        root, backbone="tiny_test", cache_dir=tmp_path / "c", progress=False, image_size=32,
        pilot_minutes=PILOT,
    )  # fmt: skip
    assert a.profile.n_classes == 3
    assert a.strategy in STRATEGIES
    for s in STRATEGIES:
        lo, hi = a.expected_auroc[s]
        assert 0.0 <= lo <= a.predicted_auroc[s] <= hi <= 1.0
    pd = a.decision["measured_paired"]
    assert np.isfinite(pd["diff"]) and pd["ci_low"] <= pd["diff"] <= pd["ci_high"]
    assert a.predicted_auroc["feature_extraction"] > 0.7  # the bands are easy to see


def test_advise_imbalanced_small_set_runs(tmp_path):
    """13 vs 37 images: the pilot's sizes keep >= 4 of the rarer class (this raised a scikit-learn
    ValueError traceback on 50 Kermany images in benchmarks/advisor_eval.py)."""
    from PIL import Image

    rng = np.random.default_rng(1)
    root = tmp_path / "imb"
    for c, (name, n) in enumerate([("normal", 13), ("lesion", 37)]):
        (root / name).mkdir(parents=True)
        for i in range(n):
            img = rng.normal(100, 25, (32, 32))
            img[10:20, 10:20] += 70 * c
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / name / f"{i}.png")
    a = advise(
        root, backbone="tiny_test", cache_dir=tmp_path / "c", progress=False, image_size=32,
        pilot_minutes=PILOT,
    )  # fmt: skip
    assert a.strategy in STRATEGIES
    sizes = a.to_dict()["profile"]["pilot"]["plan"]["ft_sizes"]
    assert sizes and all(s * 13 / 50 >= 4 for s in sizes)


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
            "--pilot-minutes",
            str(PILOT),
            "--json",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out.strip()
    obj = json.loads(out)  # exactly one JSON document
    assert obj["strategy"] in STRATEGIES
    assert obj["budget"]["pilot_minutes"] == PILOT
    assert (tmp_path / ".medtl_cache" / "embeddings").is_dir()


def test_advise_rejects_unknown_backbone(phantom_dir, tmp_path):
    from medtl.errors import ConfigError

    with pytest.raises(ConfigError, match="tiny_test"):
        advise(phantom_dir, backbone="tiny_tset", cache_dir=tmp_path, progress=False)


BRAIN = "/work/shared/data/brain_tumor_mri"


@pytest.mark.real_data
def test_real_brain_mri_cell_end_to_end(tmp_path):
    """A small 4-class brain MRI cell: 100 training images, 64 px, the smallest real backbone."""
    from pathlib import Path

    from medtl.data import load_dataset
    from medtl.data._types import Dataset, Sample

    if not Path(BRAIN, "Training").is_dir():
        pytest.skip(f"{BRAIN} is not available")
    ds = load_dataset(str(Path(BRAIN, "Training")), progress=False)
    rng = np.random.default_rng(0)
    keep = []
    for c in range(len(ds.classes)):
        idx = [i for i, s in enumerate(ds.samples) if s.label == c]
        keep += list(rng.choice(idx, 25, replace=False))
    cell = Dataset(
        ds.root,
        ds.source,
        ds.classes,
        [Sample(**{**ds.samples[i].__dict__, "split": "train"}) for i in sorted(keep)],
    )
    a = advise(
        cell,
        backbone="efficientnet_lite0.in1k",
        image_size=64,
        cache_dir=tmp_path,
        progress=False,
        pilot_minutes=1.0,
    )
    assert a.profile.n_classes == 4 and a.profile.n_images == 100
    assert a.strategy in STRATEGIES
    assert a.predicted_auroc["feature_extraction"] > 0.75  # frozen ImageNet features see tumours
    assert np.isfinite(a.decision["measured_paired"]["diff"])


def test_advisor_caches_the_embeddings_feature_extraction_computes(tmp_path):
    """A compare after advise must equal a compare alone: the advisor's cached embeddings come from
    the same (BatchNorm-folded) extraction, not from the hooked network it uses for BN statistics."""
    from medtl.advisor._profile import measure
    from medtl.strategies import FeatureExtraction
    from tests._helpers import blob_images

    train, val = blob_images(40, seed=4), blob_images(20, seed=5, offset=100)
    both = type(train)(
        pixels=np.concatenate([train.pixels, val.pixels]),
        labels=np.concatenate([train.labels, val.labels]),
        uids=[*train.uids, *val.uids],
        keys=[*train.keys, *val.keys],
        classes=train.classes,
    )
    m = measure(both, backbone="tiny_test", cache_dir=tmp_path, seed=0, progress=False)
    assert m["bn_layers"] > 0 and np.isfinite(m["bn_kl"])  # the statistics still come along
    warm = FeatureExtraction(backbone="tiny_test", cache_dir=str(tmp_path), progress=False)
    warm.fit(train, val)
    assert warm.cache_hits_ == len(both)  # every embedding came from the advisor
    alone = FeatureExtraction(backbone="tiny_test", progress=False).fit(train, val)
    np.testing.assert_array_equal(warm.predict_proba(val.pixels), alone.predict_proba(val.pixels))


def test_small_data_runs_both_strategies_in_full_cross_validated(tmp_path):
    """When running both strategies in full on K folds costs no more than the pilot would, the advisor
    does that (the measured comparison near the full size, every image scored once) and says so."""
    from PIL import Image

    from medtl.advisor._pilot import (
        CV_FOLDS,
        CostModel,
        choose_plan,
        plan_cross_validation,
        plan_pilot,
    )

    rng = np.random.default_rng(3)
    root = tmp_path / "small"
    for c, name in enumerate(["normal", "lesion"]):
        (root / name).mkdir(parents=True)
        for i in range(24):
            img = rng.normal(100, 25, (32, 32))
            img[10:20, 10:20] += 50 * c
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / name / f"{i}.png")
    a = advise(
        root, backbone="tiny_test", cache_dir=tmp_path / "c", progress=False, image_size=32,
        pilot_minutes=5.0,
    )  # fmt: skip
    d = a.to_dict()
    plan = d["profile"]["pilot"]["plan"]
    assert plan["kind"] == "cross_validation" and d["decision"]["method"] == "cross_validation"
    assert plan["repeats"] == CV_FOLDS and len(plan["ft_sizes"]) == 1
    assert plan["schedule"]["epochs"] == 8  # the default recipe, not a short pilot schedule
    assert d["profile"]["pilot"]["disjoint"]  # each image held out once
    assert "cross-validation" in " ".join(a.rationale)
    # the rule: cross-validation only when it costs no more than the pilot would
    cost = CostModel(macs=10**9)  # a large network: a full fit is expensive
    pilot = plan_pilot(48, 2, 24, cost, 2.0, 8)
    cv = plan_cross_validation(48, 24, cost, 2.0, 8)
    assert cv is not None and cv.planned_seconds["fine_tuning_pilot"] > 60 * 2.0
    assert choose_plan(pilot, cv) is pilot
    assert plan_cross_validation(48, 4, cost, 2.0, 8) is None  # 4 of a class cannot fill 3 folds

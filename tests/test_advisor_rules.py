"""The advisor's rules on constructed profiles (no network, no images: milliseconds)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from medtl.advisor import STRATEGIES, Profile, decide, domain_gap, estimate_minutes
from medtl.advisor.rules import KL_LARGE, KL_SMALL


def make_profile(
    *,
    per_class: int = 20,
    kl: float = 0.05,
    probe: float = 0.85,
    probe_std: float = 0.02,
    slope: float = 0.02,
    modality: str = "DX",
    native: float = 512,
    spi_ft: float = 0.05,
) -> Profile:
    n = 2 * per_class
    return Profile(
        n_images=n,
        n_train=int(n * 0.85),
        n_val=n - int(n * 0.85),
        class_counts={"normal": per_class, "lesion": per_class},
        min_class=per_class,
        imbalance=1.0,
        n_classes=2,
        native_size=native,
        modalities={modality: 10},
        formats={"dicom": 10},
        profile_size=224,
        n_profiled=n,
        subsampled=False,
        backbone="efficientnet_lite0.in1k",
        pretrained=True,
        bn_kl=kl,
        bn_mean_shift=0.1,
        bn_layers=40,
        imagenet_entropy=0.7,
        probe={
            "n_splits": 5,
            "probe_auroc": probe,
            "probe_std": probe_std,
            "knn_auroc": probe - 0.03,
            "slope_per_doubling": slope,
            "head_seconds": 1.0,
        },
        seconds_per_image={
            "extract": 0.01,
            "partial_fine_tuning": spi_ft / 2,
            "fine_tuning": spi_ft,
        },
    )


def test_tiny_data_small_gap_gives_feature_extraction_unless_lpft_is_cheap():
    # fine-tuning is expensive here (by the reference cost: 2048 px images): frozen features suffice
    big = make_profile(per_class=20, kl=KL_SMALL / 2, probe=0.88)
    a = decide(dataclasses.replace(big, profile_size=2048))
    assert a.strategy == "feature_extraction"
    assert "40 images" in a.rationale[0]
    assert "small domain gap" in a.rationale[0]
    assert "competitive" in a.rationale[1] and "LP-FT" in a.rationale[1]
    # cheap: LP-FT starts from the frozen features and measured better under shift -> recommended
    b = decide(make_profile(per_class=20, kl=KL_SMALL / 2, probe=0.88, spi_ft=0.05))
    assert b.strategy == "fine_tuning"
    assert "LP-FT" in b.rationale[1] and b.confidence == "medium"


def test_large_gap_flat_low_probe_gives_fine_tuning():
    a = decide(make_profile(per_class=300, kl=KL_LARGE * 2, probe=0.68, slope=0.0))
    assert a.strategy == "fine_tuning"
    assert "large domain gap" in a.rationale[0]
    assert "flat" in a.rationale[0]
    # fine-tuning's expected range sits above feature extraction's for this profile
    assert a.expected_auroc["fine_tuning"][1] > a.expected_auroc["feature_extraction"][1]


def test_ultrasound_and_tiny_images_count_as_large_gap():
    assert domain_gap(make_profile(kl=0.0, modality="US"))[0] == 2
    assert domain_gap(make_profile(kl=0.0, native=28))[0] == 2
    assert domain_gap(make_profile(kl=0.0))[0] == 0


def test_probe_near_ceiling_gives_feature_extraction_even_with_large_gap():
    a = decide(make_profile(per_class=2000, kl=KL_LARGE * 3, probe=0.98))
    assert a.strategy == "feature_extraction"  # 2 x 1700 images x 8 epochs: far from cheap
    assert "ceiling" in a.rationale[1]


def test_mixed_signals_give_partial_fine_tuning():
    a = decide(make_profile(per_class=300, kl=(KL_SMALL + KL_LARGE) / 2, probe=0.85))
    assert a.strategy == "partial_fine_tuning"


def test_budget_too_small_for_fine_tuning_falls_back_with_a_sentence():
    p = make_profile(per_class=300, kl=KL_LARGE * 2, probe=0.68, slope=0.0, spi_ft=1.0)
    minutes = estimate_minutes(p)
    assert decide(p).strategy == "fine_tuning"
    budget = minutes["feature_extraction"] * 2
    assert budget < minutes["partial_fine_tuning"] < minutes["fine_tuning"]
    a = decide(p, budget_minutes=budget)
    assert a.strategy == "feature_extraction"
    assert any("budget" in s for s in a.rationale)


def test_confidence_lower_when_signals_disagree():
    big = {"profile_size": 2048}  # expensive to fine-tune by the reference cost
    agree = decide(dataclasses.replace(make_profile(per_class=20, kl=0.05, probe=0.93), **big))
    disagree = decide(
        dataclasses.replace(make_profile(per_class=20, kl=KL_LARGE * 2, probe=0.93), **big)
    )
    assert agree.strategy == disagree.strategy == "feature_extraction"
    assert disagree.confidence_score < agree.confidence_score
    assert agree.confidence in {"high", "medium", "low"}


def test_unstable_probe_lowers_confidence():
    stable = decide(make_profile(probe_std=0.01))
    unstable = decide(make_profile(probe_std=0.15))
    assert unstable.confidence_score < stable.confidence_score


def test_random_backbone_caps_confidence_and_says_so():
    p = dataclasses.replace(make_profile(), pretrained=False)
    a = decide(p)
    assert a.confidence == "low"
    assert any("random weights" in n for n in a.notes)


def test_estimated_minutes_follow_measured_costs():
    p = make_profile(per_class=500, spi_ft=0.1)
    m = estimate_minutes(p)
    assert m["feature_extraction"] < m["partial_fine_tuning"] < m["fine_tuning"]
    expected_ft = p.epochs * (p.n_train * 0.1 + p.n_val * 0.01) / 60
    assert m["fine_tuning"] == pytest.approx(expected_ft)


def test_advice_to_dict_is_json_and_explain_lists_every_strategy():
    a = decide(make_profile())
    d = json.loads(json.dumps(a.to_dict(), allow_nan=False))
    assert d["strategy"] in STRATEGIES
    assert set(d["expected_auroc"]) == set(STRATEGIES) == set(d["estimated_minutes"])
    for lo, hi in d["expected_auroc"].values():
        assert 0.5 <= lo <= hi <= 1.0
    text = a.explain()
    assert all(s in text for s in STRATEGIES)
    assert "estimates" in text


@pytest.mark.parametrize("per_class", [20, 200, 2000])
def test_advice_does_not_depend_on_the_measured_time(per_class):
    """Issue 12: the machine's load (the measured seconds per image) must not change the advice."""
    base = make_profile(per_class=per_class, probe=0.80)
    adv = [
        decide(dataclasses.replace(base, seconds_per_image={k: v * f for k, v in
                                                             base.seconds_per_image.items()}))
        for f in (0.1, 1.0, 30.0)
    ]  # fmt: skip
    for a in adv[1:]:
        assert a.strategy == adv[0].strategy
        assert a.confidence == adv[0].confidence
        assert a.rationale == adv[0].rationale
    # the cost estimate shown may follow the measurement
    assert adv[2].estimated_minutes["fine_tuning"] > adv[0].estimated_minutes["fine_tuning"]

"""The advisor's decision rule and statistics on constructed measurements (no images: milliseconds)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from medtl.advisor import (
    STRATEGIES,
    Measured,
    Profile,
    decide,
    domain_gap,
    fit_power_law,
    paired_difference,
    power_law,
    predict_curve,
)
from medtl.advisor._curve import CurvePrediction, weighted_auroc
from medtl.advisor._pilot import CostModel, plan_pilot
from medtl.advisor.rules import (
    GAIN_PER_HOUR,
    MIN_GAIN,
    PILOT_BIAS,
    PRIOR_GAIN,
    full_size_gain,
)


def make_profile(*, per_class: int = 200, kl: float = 0.15, modality: str = "DX") -> Profile:
    n = 2 * per_class
    return Profile(
        n_images=n,
        n_train=int(n * 0.85),
        n_val=n - int(n * 0.85),
        class_counts={"normal": per_class, "lesion": per_class},
        min_class=per_class,
        imbalance=1.0,
        n_classes=2,
        native_size=512,
        modalities={modality: 10},
        formats={"dicom": 10},
        profile_size=224,
        n_profiled=n,
        subsampled=False,
        backbone="efficientnet_lite0.in1k",
        pretrained=True,
        bn_kl=kl,
        imagenet_entropy=0.7,
        probe={"n_splits": 5, "probe_auroc": 0.85, "probe_std": 0.02, "knn_auroc": 0.82},
    )


def curve(at_full: float, spread: float, n_boot: int = 200, seed: int = 0) -> CurvePrediction:
    """A prediction whose bootstrap replicates are at_full + noise (shared seed = paired noise)."""
    rng = np.random.default_rng(seed)
    noise = np.r_[0.0, rng.normal(0, spread, n_boot)]
    return CurvePrediction(
        sizes=[50, 100, 200],
        observed=[at_full - 0.04, at_full - 0.02, at_full - 0.01],
        n_full=400,
        at_full=at_full,
        interval=[at_full - 2 * spread, at_full + 2 * spread],
        at_double=at_full + 0.01,
        gain_2x=0.01,
        gain_2x_interval=[0.0, 0.02],
        fitted=True,
        params=[at_full + 0.02, 1.0, 0.5],
        boot_full=at_full + noise,
        boot_double=at_full + 0.01 + noise,
    )


def measured(
    fe: float,
    ft: float,
    *,
    common_noise: float = 0.02,
    own_noise: float = 0.003,
    paired_diff: float | None = None,
    significant: bool = False,
    ft_minutes: float = 10.0,
) -> Measured:
    c_fe = curve(fe, common_noise, seed=1)
    c_ft = curve(ft, common_noise, seed=1)  # the same images: the noise is shared (paired)
    c_ft.boot_full = c_ft.boot_full + np.r_[0, np.random.default_rng(2).normal(0, own_noise, 200)]
    d = ft - fe if paired_diff is None else paired_diff
    half = 0.5 * abs(d) if significant else abs(d) + 0.02
    return Measured(
        curves={"feature_extraction": c_fe, "fine_tuning": c_ft},
        paired={
            "diff": d,
            "ci_low": d - half,
            "ci_high": d + half,
            "p_value": 0.01 if significant else 0.4,
            "significant": significant,
            "size": 200,
        },
        minutes={"feature_extraction": 1.0, "fine_tuning": ft_minutes},
        n_eval=120,
    )


# -- the rule's branches --------------------------------------------------------------------------------


def test_clear_gain_gives_fine_tuning_and_a_sure_one_high_confidence():
    a = decide(make_profile(), measured(0.85, 0.90, significant=True))
    assert a.strategy == "fine_tuning" and a.decision["branch"] == "gain"
    assert a.confidence == "high"
    full = a.decision["full_size_gain"]
    # the measured +0.05 is shrunk towards the prior (+0.01), by their precisions
    assert PRIOR_GAIN < full["diff"] < 0.05 and full["low"] > 0
    # the same measurement without significance (a wider interval): shrunk more, not "high"
    b = decide(make_profile(), measured(0.85, 0.90, significant=False))
    assert b.strategy == "fine_tuning" and b.confidence == "medium"
    assert b.decision["full_size_gain"]["diff"] < full["diff"]


def test_unsure_gain_worth_its_cost_still_fine_tunes_without_high_confidence():
    """An expected gain worth its cost picks fine-tuning; its spread sets the confidence."""
    a = decide(make_profile(), measured(0.85, 0.87, own_noise=0.03))
    full = a.decision["full_size_gain"]
    assert full["low"] < 0 < a.decision["needed_gain"] <= full["diff"]
    assert a.strategy == "fine_tuning" and a.decision["branch"] == "likely_gain"
    assert a.confidence in ("low", "medium") and a.confidence_score < 0.9
    assert "not certain" in " ".join(a.rationale)


def test_no_expected_gain_gives_feature_extraction():
    a = decide(make_profile(), measured(0.86, 0.85, own_noise=0.02))
    assert a.decision["full_size_gain"]["diff"] < 0
    assert a.strategy == "feature_extraction" and a.decision["branch"] == "no_gain"
    assert a.confidence != "high"  # the measured difference's interval straddles 0
    assert "no gain is expected" in " ".join(a.rationale)


def test_the_decision_is_about_the_full_size_not_the_pilot_size():
    """No difference measured at the pilot's 200 images, but fine-tuning's curve is steeper: at the
    user's 4,000 images the curves add +0.06, and the advice is fine-tuning (the previous rule, the
    pilot's difference alone, said feature extraction)."""
    m = measured(0.85, 0.85, paired_diff=0.0)
    for c in m.curves.values():
        c.n_full = 4000
    m.curves["feature_extraction"].params = [0.90, 1.0, 0.5]
    m.curves["fine_tuning"].params = [0.95, 3.0, 0.5]
    a = decide(make_profile(per_class=2000), m)
    full = a.decision["full_size_gain"]
    growth = (0.95 - 3.0 / 4000**0.5) - (0.90 - 1.0 / 4000**0.5) - (-2.0 / 200**0.5 + 0.05)
    assert full["growth"] == pytest.approx(growth, abs=1e-6) and growth > 0.05
    assert full["measured_at"] == 200 and full["data_estimate"] == pytest.approx(growth)
    assert a.strategy == "fine_tuning"
    assert any("learning curves add" in r for r in a.rationale)
    # what the advice shows agrees with what it weighs: fine-tuning = feature extraction + the gain
    assert a.predicted_auroc["fine_tuning"] == pytest.approx(
        a.predicted_auroc["feature_extraction"] + full["diff"]
    )


def test_full_size_gain_weights_measurement_and_prior_by_precision():
    meas = {"diff": 0.04, "ci_low": 0.0, "ci_high": 0.08, "size": 100}
    flat = full_size_gain(meas, {}, 400, prior_sd=float("inf"))  # no prior: the data alone
    assert flat["diff"] == pytest.approx(0.04) and flat["growth"] == 0.0
    sd_m = 0.08 / (2 * 1.96)
    assert flat["sd"] == pytest.approx(sd_m)
    g = full_size_gain(meas, {}, 400, prior_gain=0.0, prior_sd=sd_m)  # equal precisions: halfway
    assert g["diff"] == pytest.approx(0.02) and g["sd"] == pytest.approx(sd_m / 2**0.5)
    # a pilot that trained less than the real run: its measured difference is raised by the bias
    short = full_size_gain(meas, {}, 400, prior_sd=float("inf"), shortened=True, pilot_bias=0.01)
    assert short["diff"] == pytest.approx(0.05) and short["pilot_bias"] == 0.01
    assert full_size_gain(meas, {}, 400, prior_sd=float("inf"), pilot_bias=0.01)["diff"] == 0.04
    # nothing measured: the curves' extrapolation is the data's estimate
    ex = full_size_gain({"diff": float("nan")}, {}, 400, {"diff": 0.03, "low": 0.01, "high": 0.05})
    assert ex["data_estimate"] == pytest.approx(0.03)


def test_tiny_gain_below_its_cost_gives_feature_extraction():
    a = decide(make_profile(), measured(0.85, 0.853, own_noise=0.02))
    assert 0 < a.decision["predicted_gain"]["diff"] < a.decision["needed_gain"]
    assert a.strategy == "feature_extraction" and a.decision["branch"] == "not_worth"


def test_small_sure_gain_not_worth_many_extra_hours():
    # +0.02 for sure, but 10 extra hours must buy 0.005 + 0.1 AUROC
    m = measured(0.85, 0.87, own_noise=0.001, ft_minutes=601.0)
    a = decide(make_profile(), m)
    assert a.decision["needed_gain"] == pytest.approx(MIN_GAIN + GAIN_PER_HOUR * 10.0)
    assert a.strategy == "feature_extraction" and a.decision["branch"] == "not_worth"
    # the same gain for 10 extra minutes is worth it
    assert decide(make_profile(), measured(0.85, 0.87, own_noise=0.001)).strategy == "fine_tuning"


def test_budget_excludes_fine_tuning_that_does_not_fit():
    m = measured(0.85, 0.90, significant=True, ft_minutes=60.0)
    assert decide(make_profile(), m).strategy == "fine_tuning"
    a = decide(make_profile(), m, budget_minutes=30)
    assert a.strategy == "feature_extraction" and a.decision["branch"] == "budget"
    assert a.decision["fits_budget"] == {"feature_extraction": True, "fine_tuning": False}
    assert any("30-minute budget" in s for s in a.rationale)


def test_feature_extraction_significantly_better_gives_high_confidence():
    a = decide(make_profile(), measured(0.90, 0.85, paired_diff=-0.05, significant=True))
    assert a.strategy == "feature_extraction" and a.confidence == "high"


def test_advice_ignores_measured_time_and_domain_gap_signals():
    m = measured(0.85, 0.90)
    base = decide(make_profile(), m)
    slow = dataclasses.replace(make_profile(), timings={"total": 900.0, "budget": 120.0})
    far = make_profile(kl=2.0, modality="US")
    assert domain_gap(far)[0] == 2 and domain_gap(make_profile(kl=0.05))[0] == 0
    for p in (slow, far, make_profile(kl=0.05)):
        a = decide(p, m)
        assert (a.strategy, a.confidence, a.rationale) == (
            base.strategy,
            base.confidence,
            base.rationale,
        )


def test_rationale_is_plain_words_first_and_details_hold_the_signals():
    a = decide(make_profile(), measured(0.85, 0.90, significant=True))
    assert a.rationale[0].startswith("With your 400 labelled images")
    ft = a.predicted_auroc["fine_tuning"]
    assert f"AUROC of about {ft:.2f}" in a.rationale[0]
    assert any("Twice as many labelled images (800)" in s for s in a.rationale)
    assert not any("KL" in s for s in a.rationale)
    assert any("KL" in s for s in a.details)
    d = json.loads(json.dumps(a.to_dict(), allow_nan=False))
    assert set(d["expected_auroc"]) == set(STRATEGIES) == set(d["estimated_minutes"])
    for lo, hi in d["expected_auroc"].values():
        assert 0.0 <= lo <= hi <= 1.0
    assert "Details:" in a.explain() and "Recommendation" in a.explain()


def test_random_backbone_caps_confidence_and_says_so():
    p = dataclasses.replace(make_profile(), pretrained=False)
    a = decide(p, measured(0.85, 0.90, significant=True))
    assert a.confidence == "low"
    assert any("random weights" in n for n in a.notes)


# -- statistics -----------------------------------------------------------------------------------------


def test_power_law_fit_recovers_known_curve_and_extrapolates():
    sizes = np.array([50, 100, 200, 400])
    y = power_law(sizes, 0.95, 0.6, 0.5)
    params, ok = fit_power_law(sizes, y)
    assert ok
    assert params == pytest.approx([0.95, 0.6, 0.5], abs=1e-3)
    boot = np.vstack([y, y + np.random.default_rng(0).normal(0, 0.003, (100, 4))])
    pred = predict_curve(list(sizes), boot, 1600)
    truth = float(power_law(np.array([1600]), 0.95, 0.6, 0.5)[0])
    assert pred.fitted
    assert pred.at_full == pytest.approx(truth, abs=2e-3)
    assert pred.interval[0] <= truth <= pred.interval[1]
    assert pred.interval[1] - pred.interval[0] < 0.06
    assert pred.gain_2x == pytest.approx(
        float(power_law(np.array([3200]), 0.95, 0.6, 0.5)[0]) - truth, abs=2e-3
    )


def test_ill_posed_curve_falls_back_to_the_observed_value_with_a_wide_upper_end():
    params, ok = fit_power_law([100, 200], [0.8, 0.85])
    assert not ok and np.isnan(params).all()
    boot = np.vstack([[0.8, 0.85], np.full((50, 2), [0.8, 0.85])])
    pred = predict_curve([100, 200], boot, 3200)  # 4 doublings beyond the data
    assert not pred.fitted
    assert pred.at_full == pytest.approx(0.85)
    assert pred.interval[1] >= 0.85 + 0.1  # 0.03 per doubling of honest headroom


def test_weighted_auroc_matches_sklearn_binary_and_multiclass():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y2 = rng.integers(0, 2, 80)
    p2 = np.round(rng.random(80), 1)  # ties
    proba2 = np.c_[1 - p2, p2]
    assert weighted_auroc(y2, proba2, np.ones((1, 80)))[0] == pytest.approx(roc_auc_score(y2, p2))
    y3 = np.arange(90) % 3
    proba3 = rng.dirichlet(np.ones(3), 90) + 0.3 * np.eye(3)[y3]
    proba3 /= proba3.sum(1, keepdims=True)
    ref = roc_auc_score(y3, proba3, multi_class="ovr", average="macro")
    assert weighted_auroc(y3, proba3, np.ones((1, 90)))[0] == pytest.approx(ref)
    # integer weights = repeating rows
    w = rng.integers(0, 3, 90).astype(float)
    rep = np.repeat(np.arange(90), w.astype(int))
    ref_w = roc_auc_score(y3[rep], proba3[rep], multi_class="ovr", average="macro")
    assert weighted_auroc(y3, proba3, w[None])[0] == pytest.approx(ref_w)


def test_paired_difference_significance():
    rng = np.random.default_rng(0)
    base = np.r_[0.8, 0.8 + rng.normal(0, 0.02, 300)]
    better = base + np.r_[0.03, 0.03 + rng.normal(0, 0.005, 300)]
    same = base + np.r_[0.0, rng.normal(0, 0.01, 300)]
    assert paired_difference(better, base)["significant"]
    d = paired_difference(same, base)
    assert not d["significant"] and d["p_value"] > 0.05


# -- the pilot's plan -----------------------------------------------------------------------------------


def test_pilot_plan_is_deterministic_and_grows_with_the_budget():
    cost = CostModel(macs=384_000_000)  # efficientnet_lite0 at 224 px
    small = plan_pilot(3000, 2, 1500, cost, 2.0)
    again = plan_pilot(3000, 2, 1500, cost, 2.0)
    big = plan_pilot(3000, 2, 1500, cost, 20.0)
    assert small == again
    assert len(small.ft_sizes) == 3 and small.ft_sizes[-1] < big.ft_sizes[-1]
    assert small.planned_seconds["fine_tuning_pilot"] <= 0.55 * 120 + 1
    assert small.fe_sizes[-1] == 3000 - small.n_eval  # FE is cheap: also at the whole pool
    tiny = plan_pilot(60, 2, 30, CostModel(macs=200_000), 2.0)
    assert tiny.ft_sizes[-1] == 60 - tiny.n_eval and tiny.repeats >= 1
    m = cost.full_minutes(4000, 700, 8)
    assert m["feature_extraction"] < m["fine_tuning"]


def test_cost_model_charges_frozen_stages_at_the_extraction_rate():
    """Fine-tuning's frozen stages run forward only: the cost model counts their multiply-accumulates
    (the high-resolution ~30% of EfficientNet-Lite0 at 224 px) at the extraction rate."""
    from medtl.advisor._pilot import count_macs
    from medtl.backbones import create_backbone
    from medtl.strategies import FineTuning

    net, cfg = create_backbone("efficientnet_lite0.in1k", pretrained=False, num_classes=2)
    frozen = cfg.stages[: FineTuning().frozen_stages(cfg)]
    total, part = count_macs(net, 224), count_macs(net, 224, frozen)
    assert 0.25 < part / total < 0.35
    assert (
        count_macs(net, 224, cfg.stages) + count_macs(net, 224, ["conv_head", "classifier"])
        == total
    )
    full, lpft = CostModel(macs=total), CostModel(macs=total, frozen_macs=part)
    assert full.extract_s < lpft.train_s < full.train_s
    assert (
        lpft.full_minutes(4000, 700, 8)["fine_tuning"]
        < full.full_minutes(4000, 700, 8)["fine_tuning"]
    )


def test_pilot_sizes_hold_enough_of_the_rarest_class():
    """50 images with 13 of the rarer class: every pilot size must hold >= 4 of it (a 9-image size held
    one, and the pilot's stratified split raised a traceback: benchmarks/advisor_eval.py, 50 images)."""
    from medtl.advisor._pilot import MIN_PER_CLASS

    plan = plan_pilot(50, 2, 13, CostModel(macs=200_000), 2.0)
    assert plan.ft_sizes and all(s * 13 / 50 >= MIN_PER_CLASS for s in plan.ft_sizes)
    assert max(plan.ft_sizes) <= 50 - plan.n_eval


def test_pilot_holdout_does_not_depend_on_the_salted_patient_ids():
    """The same files under another project salt (other hashed ids, same patients) give the same
    held-out images, so the advice repeats across projects."""
    from medtl.advisor._pilot import _holdout

    rng = np.random.default_rng(0)
    patients = rng.integers(0, 40, 120)
    y = (patients % 3 == 0).astype(int)
    a = [f"pid-{(p * 7919) % 1000:04d}" for p in patients]  # one salt's hashes
    b = [f"pid-{(p * 104729) % 997:04d}x" for p in patients]  # another's: other order
    tr_a, te_a = _holdout(y, a, 30, seed=3)
    _, te_b = _holdout(y, b, 30, seed=3)
    np.testing.assert_array_equal(np.sort(te_a), np.sort(te_b))
    assert not set(patients[te_a]) & set(patients[tr_a])  # grouped by patient


def test_auroc_standard_error_matches_simulation_and_floors_small_sets():
    """Hanley-McNeil against the spread of simulated AUROCs (binormal, 40 + 40 images), and the floor
    it puts under a predicted interval measured on 15 nearly separable images."""
    from medtl.advisor._curve import auroc_standard_error

    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(40), np.ones(40)].astype(int)
    aucs = []
    for _ in range(2000):
        s = np.r_[rng.normal(0, 1, 40), rng.normal(1.5, 1, 40)]
        aucs.append(weighted_auroc(y, np.c_[1 - s, s], np.ones((1, 80)))[0])
    se = auroc_standard_error(float(np.mean(aucs)), [40, 40])
    assert se == pytest.approx(np.std(aucs), rel=0.2)
    # 15 held-out images, 4 positives, every bootstrap replicate ~1.0: the interval is still wide
    boot = np.r_[[[0.98, 0.99]], np.clip(0.99 + rng.normal(0, 0.005, (200, 2)), 0, 1)]
    narrow = predict_curve([18, 35], boot, 50)
    floored = predict_curve([18, 35], boot, 50, eval_counts=[11, 4])
    assert (
        floored.interval[1] - floored.interval[0] > 0.15 > narrow.interval[1] - narrow.interval[0]
    )
    assert floored.at_full == narrow.at_full  # the point prediction is not touched


def test_pilot_repeats_hold_out_disjoint_folds_grouped_by_patient():
    """Several repeats score different images (cross-fitting), every class in every fold, no patient
    on both sides, and every training part still holds the pilot's largest size."""
    from medtl.advisor._pilot import _holdouts

    rng = np.random.default_rng(1)
    patients = rng.integers(0, 60, 200)
    y = (patients % 4 == 0).astype(int)
    ids = [f"p{p}" for p in patients]
    splits, disjoint = _holdouts(y, ids, n_eval=60, repeats=3, top=120, seed=0)
    assert disjoint and len(splits) == 3
    held = [set(ev.tolist()) for _, ev in splits]
    assert not (held[0] & held[1] or held[0] & held[2] or held[1] & held[2])
    assert sum(map(len, held)) > 90  # three random 60-image holdouts share ~30% of their images
    for tr, ev in splits:
        assert set(y[ev]) == {0, 1} and len(tr) >= 120
        assert not set(patients[ev]) & set(patients[tr])
    one, disjoint1 = _holdouts(y, ids, n_eval=60, repeats=1, top=120, seed=0)
    assert not disjoint1 and len(one) == 1  # a single repeat: the random holdout, as before


def test_pilot_holdout_falls_back_when_a_fold_is_too_small_to_train_on():
    from medtl.advisor._pilot import _holdouts

    y = np.r_[np.zeros(30), np.ones(30)].astype(int)
    splits, disjoint = _holdouts(y, None, n_eval=18, repeats=3, top=50, seed=0)
    assert not disjoint and len(splits) == 3  # folds of 15 leave 45 < 50 to train on


def test_disjoint_holdouts_sharpen_the_interval_floor():
    """The Hanley-McNeil floor counts every distinct held-out image: with 3 disjoint folds the
    intervals are narrower than with one holdout's worth of images."""
    from medtl.advisor.rules import measured_from_pilot

    rng = np.random.default_rng(0)

    def rep(n: int, shift: float) -> dict:
        y = np.r_[np.zeros(n // 2), np.ones(n - n // 2)].astype(int)
        out = {"y_eval": y, "fe": {}, "ft": {}}
        for key, extra in (("fe", 0.0), ("ft", 0.2)):
            for size in (10, 20, 40):
                s = y * (shift + extra + size / 40) + rng.normal(0, 1, n)
                p1 = 1 / (1 + np.exp(-s))
                out[key][size] = np.c_[1 - p1, p1]
        return out

    reps = [rep(16, 1.0) for _ in range(3)]
    mins = {"feature_extraction": 1.0, "fine_tuning": 2.0}
    wide = measured_from_pilot({"repeats": reps}, n_full=60, minutes=mins, seed=0)
    sharp = measured_from_pilot(
        {"repeats": reps, "disjoint": True}, n_full=60, minutes=mins, seed=0
    )
    assert sharp.n_eval == 48 and wide.n_eval == 16
    for s in ("feature_extraction", "fine_tuning"):
        w = np.diff(wide.curves[s].interval)[0]
        assert np.diff(sharp.curves[s].interval)[0] <= w
    assert any(
        np.diff(sharp.curves[s].interval)[0] < np.diff(wide.curves[s].interval)[0] - 0.01
        for s in ("feature_extraction", "fine_tuning")
    )


def test_pilot_fine_tunes_with_the_real_schedule_when_the_budget_affords_it():
    """A short pilot measures a weaker fine-tuning than the user will run: small pools (or small
    images) get the default recipe's own schedule, large ones the short schedule at more images, and
    every plan stays inside the pilot's share of the budget."""
    from medtl.advisor._pilot import PILOT_SHARE, SHORT_SCHEDULE, pilot_schedules
    from medtl.training._loop import LoopSettings

    small = plan_pilot(200, 2, 60, CostModel(macs=30_000_000), 2.0, full_epochs=8)
    assert small.schedule.epochs == 8
    assert small.schedule.batch == LoopSettings().batch_size
    assert small.schedule.min_steps == LoopSettings().min_steps_per_epoch
    assert small.ft_sizes[-1] == 200 - small.n_eval  # the whole pool
    large = plan_pilot(5000, 2, 1300, CostModel(macs=400_000_000), 2.0, full_epochs=8)
    assert large.schedule == SHORT_SCHEDULE and large.ft_sizes[-1] < 5000 - large.n_eval
    for plan in (small, large):
        assert plan.planned_seconds["fine_tuning_pilot"] <= PILOT_SHARE * 120 + 1e-6
    assert [s.epochs for s in pilot_schedules(8)] == [8, 4, 3]
    assert [s.epochs for s in pilot_schedules(3)] == [3, 3]  # no repeats in the ladder


def test_low_confidence_from_a_shortened_pilot_suggests_a_longer_one():
    """A budget-limited trial (part of the pool, or a shortened schedule) says how to measure more;
    a trial that already ran the real recipe on the whole pool does not."""
    m = measured(
        0.85, 0.8504, own_noise=0.03
    )  # expected gain ~ what its cost needs: low confidence

    def advice_with_pilot_epochs(epochs: int):
        p = make_profile()  # 400 images; the real run's 8 epochs
        plan = {"n_pool": 400, "n_eval": 120, "ft_sizes": [70, 140, 280]}
        p.pilot = {"plan": {**plan, "schedule": {"epochs": epochs}}, "epochs": epochs}
        return decide(p, m)

    a = advice_with_pilot_epochs(3)
    assert a.confidence == "low" and any("--pilot-minutes" in n for n in a.notes)
    b = advice_with_pilot_epochs(8)
    assert b.confidence == "low" and not any("--pilot-minutes" in n for n in b.notes)
    # the shortened trial measured a weaker fine-tuning than the real run: its difference is raised
    assert a.decision["full_size_gain"]["pilot_bias"] == PILOT_BIAS > 0
    assert b.decision["full_size_gain"]["pilot_bias"] == 0.0
    assert a.decision["full_size_gain"]["diff"] > b.decision["full_size_gain"]["diff"]

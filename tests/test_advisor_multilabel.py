"""``medtl advise`` on several findings per image (issue 24): the pilot's folds stratified over
findings, the macro AUROC over the scorable findings with blank labels masked, per-finding probes,
the findings too rare to learn in the rationale, and the CLI's --findings / --uncertain."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from medtl.advisor import STRATEGIES, advise
from medtl.advisor import _findings as F
from medtl.tasks import task_for

NAMES = ["a", "b", "c"]
PILOT = 0.25  # minutes: tiny_test at 32 px keeps each advise call to a few seconds
RARE = "right_lower_opacity"


def _targets(n: int, prevalence: list[float], seed: int, blank: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, len(prevalence))) < np.asarray(prevalence)).astype(np.float64)
    y[rng.random(y.shape) < blank] = np.nan
    return y


def test_weighted_auroc_masks_blank_labels_and_averages_the_named_findings() -> None:
    from sklearn.metrics import roc_auc_score

    from medtl.advisor._curve import bootstrap_weights, weighted_auroc

    y = _targets(80, [0.4, 0.3, 0.5], seed=0, blank=0.2)
    rng = np.random.default_rng(1)
    p = np.clip(0.5 * np.nan_to_num(y) + 0.6 * rng.random(y.shape), 0, 1)
    task = task_for(NAMES, "multilabel")
    per = [roc_auc_score(y[~np.isnan(y[:, k]), k], p[~np.isnan(y[:, k]), k]) for k in range(3)]
    got = weighted_auroc(y, p, np.ones((1, 80)), task)
    assert got[0] == pytest.approx(np.mean(per))
    only = weighted_auroc(y, p, np.ones((1, 80)), task, questions=["a", "c"])
    assert only[0] == pytest.approx((per[0] + per[2]) / 2)
    # a bootstrap replicate equals the plain AUROC of the images it drew (blank ones weigh nothing)
    w = bootstrap_weights(80, 3, np.random.default_rng(2))
    rows = np.repeat(np.arange(80), w[1].astype(int))
    direct = [
        roc_auc_score(y[rows][~np.isnan(y[rows, k]), k], p[rows][~np.isnan(y[rows, k]), k])
        for k in range(3)
    ]
    assert weighted_auroc(y, p, w, task)[1] == pytest.approx(np.mean(direct))


def test_pilot_folds_are_disjoint_patient_grouped_and_stratified_over_findings() -> None:
    y = _targets(160, [0.4, 0.25, 0.05], seed=3, blank=0.1)
    groups = [f"p{i // 2}" for i in range(160)]  # two images per patient
    splits, disjoint = F.holdouts(y, groups, n_eval=40, repeats=3, top=80, seed=0)
    assert disjoint and len(splits) == 3
    seen: set[int] = set()
    for tr, ev in splits:
        assert not (set(ev) & seen)  # every held-out image is scored once
        seen |= set(ev)
        assert not ({groups[i] for i in tr} & {groups[i] for i in ev})  # patients kept whole
        assert sorted([*tr, *ev]) == list(range(160))
        for k in (0, 1):  # the common findings have positives in every held-out fold
            assert np.sum(y[ev, k] == 1) >= 3
    # every prefix of the nested order keeps about each finding's share of positives
    order = F.nested_order(y, np.random.default_rng(0))
    assert sorted(order) == list(range(160))
    head = y[order[:40]]
    for k in range(3):
        share, overall = np.nanmean(head[:, k] == 1), np.mean(y[:, k] == 1)
        assert abs(share - overall) < 0.08
    a, b = F.fit_split(y[:40], seed=0)
    assert sorted([*a, *b]) == list(range(40)) and 5 <= len(b) <= 12
    assert F.trainable(y) and not F.trainable(np.full((10, 3), np.nan))


def test_scored_findings_follow_the_scorable_rule_with_a_fallback() -> None:
    from medtl.metrics import MIN_SCORABLE

    ev1 = np.array([[1, 0, 1]] * 6 + [[0, 1, 0]] * 6, dtype=np.float64)  # c: 6 pos / 6 neg
    ev2 = ev1.copy()
    ev2[:4, 2] = np.nan  # c has 2 positives left in the second fold
    scored, unscored, rule = F.scored_findings([ev1, ev2], NAMES)
    assert rule == MIN_SCORABLE and scored == ["a", "b"]
    assert unscored == {"c": {"pos": 2, "neg": 6}}
    tiny = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0]], dtype=np.float64)
    scored, unscored, rule = F.scored_findings([tiny], NAMES)
    assert rule == 1 and scored == ["a", "b"] and set(unscored) == {"c"}
    pool = {"a": {"pos": 40, "neg": 60}, "b": {"pos": 3, "neg": 97}, "c": {"pos": 12, "neg": 88}}
    text = F.rare_sentence(pool, 100, ["a", "c"], {"b": {"pos": 0, "neg": 20}}, MIN_SCORABLE)
    assert "b (3 positives)" in text and "too rare to learn" in text
    assert "b (0 positives)" in text and "it covers a, c" in text
    assert "c (" not in text.split("Left out")[0]  # 12 positives: learnable
    assert F.rare_sentence({"a": {"pos": 40, "neg": 60}}, 100, ["a"], {}, MIN_SCORABLE) is None


def test_gradient_signal_uses_the_masked_loss_of_several_findings() -> None:
    import torch

    from medtl.advisor._measure import gradient_early_share
    from medtl.backbones import create_backbone
    from medtl.strategies import extract_embeddings

    torch.manual_seed(0)
    model, cfg = create_backbone("tiny_test", num_classes=1000)
    rng = np.random.default_rng(0)
    y = _targets(48, [0.5, 0.4], seed=4, blank=0.2)
    pixels = rng.integers(60, 120, size=(48, 1, 32, 32)).astype(np.uint8)
    pixels[np.nan_to_num(y[:, 0]) == 1, :, 2:12, 2:12] = 250
    pixels[np.nan_to_num(y[:, 1]) == 1, :, 20:30, 20:30] = 250
    emb = extract_embeddings(model, cfg, pixels, progress=False, precision="fp32")
    r = gradient_early_share(model, cfg, pixels, y, emb)
    assert 0.0 < r["early_share"] < 1.0 and r["images"] == 48
    assert all(p.grad is None for p in model.parameters())
    none = gradient_early_share(model, cfg, pixels, np.full_like(y, np.nan), emb)
    assert none["early_share"] is None


@pytest.fixture(scope="module")
def ml_manifest(tmp_path_factory) -> Path:
    """A multi-label phantom with one rare finding; its manifest with blank and uncertain (-1)
    labels in the first finding and a sex column (not a finding)."""
    from medtl.data.synth import make_phantom

    tmp = tmp_path_factory.mktemp("advml")
    root = make_phantom(
        tmp / "ph", n_per_class=40, size=64, findings=3, seed=1, difficulty=0.0,
        prevalence=[0.4, 0.4, 0.05],
    )  # fmt: skip
    with open(root / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    first = next(k for k in rows[0] if k not in ("path", "patient_id"))
    for i, r in enumerate(rows):
        r["path"] = str(root / r["path"])
        r["sex"] = "F" if i % 3 else "M"
        if i % 10 == 0:
            r[first] = ""  # not labelled
        elif i % 10 == 5:
            r[first] = "-1"  # uncertain
    out = tmp / "labels.csv"
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return out


def test_advise_on_several_findings_compares_macro_auroc_and_names_rare_findings(
    ml_manifest, tmp_path
) -> None:
    a = advise(
        ml_manifest, backbone="tiny_test", image_size=32, pilot_minutes=PILOT,
        cache_dir=tmp_path, progress=False,
    )  # fmt: skip
    d = json.loads(json.dumps(a.to_dict(), allow_nan=False))
    assert a.strategy in STRATEGIES
    p = d["profile"]
    assert p["task"] == "multilabel" and p["metric"] == "macro AUROC"
    assert set(p["findings"]) == {"right_upper_opacity", "left_upper_opacity", RARE}
    assert "sex" not in p["findings"]  # an attribute column, not a finding
    # blank and uncertain (ignored) labels are not labelled, never negative
    assert p["findings"]["right_upper_opacity"]["missing"] >= 12
    assert p["findings"][RARE]["pos"] < F.MIN_LEARNABLE
    assert set(p["probe"]["per_finding"]) == set(p["findings"])
    pd = d["decision"]["measured_paired"]
    assert np.isfinite(pd["diff"]) and pd["ci_low"] <= pd["diff"] <= pd["ci_high"]
    scored = d["decision"]["findings"]["scored"]
    assert scored and RARE not in scored
    assert RARE in d["decision"]["findings"]["unscored"]
    for s in STRATEGIES:
        lo, hi = a.expected_auroc[s]
        assert 0.0 <= lo <= a.predicted_auroc[s] <= hi <= 1.0
    text = " ".join(a.rationale)
    assert "macro AUROC of about" in a.rationale[0]
    assert f"{RARE} (" in text and "too rare to learn" in text
    out = json.dumps(d) + a.explain()
    assert "PHI-" not in out and "Phantom^" not in out


def test_cli_advise_takes_findings_and_uncertain_as_compare_does(
    ml_manifest, tmp_path, monkeypatch, capsys
) -> None:
    from medtl.cli import main

    monkeypatch.chdir(tmp_path)
    two = "right_upper_opacity,left_upper_opacity"
    rc = main(
        [
            "advise", "--data", str(ml_manifest), "--findings", two, "--uncertain", "negative",
            "--backbone", "tiny_test", "--image-size", "32", "--pilot-minutes", str(PILOT),
            "--json",
        ]
    )  # fmt: skip
    assert rc == 0
    obj = json.loads(capsys.readouterr().out.strip())
    found = obj["profile"]["findings"]
    assert list(found) == two.split(",")
    with_ignore = advise(
        ml_manifest, findings=two.split(","), backbone="tiny_test", image_size=32,
        pilot_minutes=PILOT, cache_dir=tmp_path / "c2", progress=False,
    ).profile.findings  # fmt: skip
    # uncertain -> negative: the -1 labels count as negatives; ignored, they are not labelled
    first = found["right_upper_opacity"]
    ignored = with_ignore["right_upper_opacity"]
    assert first["missing"] < ignored["missing"]
    assert first["neg"] == ignored["neg"] + (ignored["missing"] - first["missing"])

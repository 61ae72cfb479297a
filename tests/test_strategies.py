"""The estimator contract, checked on every registered strategy with the tiny test backbone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medtl.errors import ConfigError, NotFittedError
from medtl.strategies import get_strategy, list_strategies, load_model
from tests._helpers import blob_images

FAST = {
    "feature_extraction": {"Cs": [0.01, 1.0]},
    "fine_tuning": {"epochs": 3, "batch_size": 8, "lr": 3e-3},
    "partial_fine_tuning": {"epochs": 3, "batch_size": 8, "lr": 3e-3, "trainable_stages": 1},
    "from_scratch": {"epochs": 3, "batch_size": 8},
}


def make(name: str, **kw):
    return get_strategy(name, backbone="tiny_test", progress=False, **{**FAST[name], **kw})


@pytest.fixture(scope="module")
def splits():
    return (
        blob_images(48, seed=1),
        blob_images(24, seed=2, offset=100),
        blob_images(24, seed=3, offset=200),
    )


def test_every_strategy_is_covered():
    assert set(list_strategies()) == set(FAST)


@pytest.mark.parametrize("name", sorted(FAST))
def test_contract(name, splits, tmp_path):
    train, val, test = splits
    est = make(name)
    assert not hasattr(est, "model_")  # learned state only in fit
    with pytest.raises(NotFittedError, match="not fitted"):
        est.predict_proba(test)
    assert est.fit(train, val) is est
    proba = est.predict_proba(test)
    assert proba.shape == (len(test), 2)
    assert np.allclose(proba.sum(1), 1, atol=1e-5)
    assert est.history_, "history is recorded"
    # save/load round trip gives identical predictions
    est.save(tmp_path / "m")
    back = load_model(tmp_path / "m")
    assert type(back) is type(est)
    np.testing.assert_array_equal(back.predict_proba(test), proba)
    assert back.get_params() == est.get_params()


@pytest.mark.parametrize("name", sorted(FAST))
def test_reproducible(name, splits):
    train, val, test = splits
    a = make(name).fit(train, val).predict_proba(test)
    b = make(name).fit(train, val).predict_proba(test)
    np.testing.assert_array_equal(a, b)


def test_transfer_strategies_learn_the_easy_task(splits):
    from sklearn.metrics import roc_auc_score

    train, val, test = splits
    est = make("fine_tuning", epochs=6).fit(train, val)
    assert roc_auc_score(test.labels, est.predict_proba(test)[:, 1]) > 0.8


def test_feature_extraction_keeps_backbone_frozen(splits, monkeypatch):
    import medtl.strategies._feature_extraction as fe_mod

    train, val, _ = splits
    seen = {}
    orig = fe_mod._build_network

    def spy(*a, **k):
        model, cfg = orig(*a, **k)
        seen["before"] = {k: v.clone() for k, v in model.state_dict().items()}
        seen["model"] = model
        return model, cfg

    monkeypatch.setattr(fe_mod, "_build_network", spy)
    est = make("feature_extraction").fit(train, val)
    after = est.model_.state_dict()
    bn_keys = [k for k in after if "running_mean" in k or "running_var" in k]
    assert bn_keys, "tiny backbone has BatchNorm layers"
    for k in bn_keys:  # BatchNorm statistics did not move
        torch.testing.assert_close(after[k], seen["before"][k], rtol=0, atol=0)
    head = {k for k in after if k.startswith(est.backbone_config_.classifier)}
    for k, v in after.items():
        if k not in head:
            torch.testing.assert_close(v, seen["before"][k], rtol=0, atol=0)


def test_partial_fine_tuning_freezes_early_stages(splits):
    from medtl.backbones import create_backbone

    train, val, _ = splits
    est = make("partial_fine_tuning", trainable_stages=1, seed=5)
    est.fit(train, val)
    torch.manual_seed(5)  # the strategy seeds torch the same way before building its network
    ref, cfg = create_backbone("tiny_test", num_classes=2, pretrained=True)
    first = cfg.stages[0]
    last = cfg.stages[-1]
    sd, rd = est.model_.state_dict(), ref.state_dict()
    first_keys = [k for k in sd if k.startswith(first + ".")]
    last_keys = [k for k in sd if k.startswith(last + ".") and k.endswith("weight")]
    assert first_keys and last_keys
    for k in first_keys:  # frozen: weights and BatchNorm statistics unchanged
        torch.testing.assert_close(sd[k], rd[k], rtol=0, atol=0)
    assert any(not torch.equal(sd[k], rd[k]) for k in last_keys)


def test_bad_parameters_are_named():
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        get_strategy("fine_tuning", epoch=3)
    with pytest.raises(ConfigError, match="Did you mean 'fine_tuning'"):
        get_strategy("fine_tunning")


def test_one_class_training_split_is_refused(splits):
    train, val, _ = splits
    one = train.subset(np.where(train.labels == 0)[0])
    with pytest.raises(ConfigError, match="single class"):
        make("feature_extraction").fit(one, val)


def test_wrong_image_size_is_explained(splits):
    train, val, _ = splits
    est = make("feature_extraction").fit(train, val)
    with pytest.raises(ConfigError, match="trained at 32x32"):
        est.predict_proba(blob_images(4, size=48))


def test_embedding_cache_reused(splits, tmp_path):
    train, val, test = splits
    a = make("feature_extraction", cache_dir=str(tmp_path)).fit(train, val)
    assert a.cache_hits_ == 0
    b = make("feature_extraction", cache_dir=str(tmp_path), Cs=[0.1]).fit(train, val)
    assert b.cache_hits_ == len(train) + len(val)
    c = make("feature_extraction", Cs=[0.1]).fit(train, val)  # no cache: same numbers
    np.testing.assert_allclose(b.predict_proba(test), c.predict_proba(test), rtol=1e-5, atol=1e-6)


def test_regularisation_choice_rules():
    from medtl.strategies._feature_extraction import _choose_regularisation

    # path from strong to weak regularisation; AUROC saturates while the log-loss still moves
    rows = [
        {"C": 1e-3, "val_auroc": 0.990, "val_loss": 0.110, "val_loss_se": 0.01},
        {"C": 1e-2, "val_auroc": 0.997, "val_loss": 0.075, "val_loss_se": 0.01},
        {"C": 1e-1, "val_auroc": 0.998, "val_loss": 0.070, "val_loss_se": 0.01},
        {"C": 1e0, "val_auroc": 0.998, "val_loss": 0.090, "val_loss_se": 0.01},
    ]
    assert _choose_regularisation(rows, "auroc") == 2  # first of the tied maxima
    assert _choose_regularisation(rows, "log_loss") == 2
    assert _choose_regularisation(rows, "log_loss_1se") == 1  # 0.075 <= 0.070 + 0.01


def test_feature_extraction_records_the_chosen_regularisation(splits):
    train, val, _ = splits
    fe = get_strategy("feature_extraction", backbone="tiny_test", progress=False).fit(train, val)
    chosen = [r for r in fe.history_ if r.get("chosen")]
    assert len(chosen) == 1 and chosen[0]["C"] == fe.C_
    assert all(r["val_loss"] > 0 and r["val_loss_se"] >= 0 for r in fe.history_)
    with pytest.raises(ConfigError, match="select_by"):
        get_strategy("feature_extraction", backbone="tiny_test", select_by="f1").fit(train, val)


def test_feature_extraction_refits_on_train_and_val_but_keeps_validation_held_out(splits, tmp_path):
    """The chosen head is refit on train + val (as a plain script trains on every image), while the
    validation predictions used for the threshold and the reported val AUROC stay out-of-sample."""
    train, val, test = splits
    plain = make("feature_extraction", refit=False).fit(train, val)
    refit = make("feature_extraction").fit(train, val)
    assert refit.refit and refit.C_ == plain.C_  # the same choice of regularisation
    # the held-out predictions are those of the train-only head (up to the network's bf16 head)
    np.testing.assert_array_equal(refit.validation_proba(val), plain.validation_proba(val))
    np.testing.assert_allclose(refit.validation_proba(val), plain.predict_proba(val), atol=0.02)
    assert not np.allclose(refit.predict_proba(val), plain.predict_proba(val), atol=1e-4)
    assert refit.best_val_auroc_ == plain.best_val_auroc_
    refit.save(tmp_path / "m")
    back = load_model(tmp_path / "m")
    assert back.refit_on_ == "train+val" and plain.refit_on_ == "train"
    np.testing.assert_array_equal(back.predict_proba(test), refit.predict_proba(test))


def test_extraction_speedups_leave_the_embeddings_unchanged():
    """BatchNorm folding, channels-last memory and cache-sized passes (issue 17: no speed trick may
    change a result): fp32 embeddings equal the untouched model's plain forward, whatever the pass."""
    from medtl.backbones import create_backbone
    from medtl.strategies._feature_extraction import extract_embeddings
    from medtl.training import to_model_input
    from medtl.training._inference import fold_batchnorm

    torch.manual_seed(0)
    model, cfg = create_backbone("tiny_test", num_classes=2)
    model.train()
    x = torch.randn(8, 3, 32, 32)
    for _ in range(3):  # non-trivial running statistics, so that folding has work to do
        model(x)
    model.eval()
    pixels = np.random.default_rng(0).integers(0, 256, (10, 3, 32, 32), dtype=np.uint8)
    _, n_folded = fold_batchnorm(model, to_model_input(torch.rand(2, 3, 32, 32), cfg.mean, cfg.std))
    assert n_folded == 3  # every conv + BN pair of the tiny network
    with torch.no_grad():
        xb = to_model_input(torch.from_numpy(pixels).float() / 255.0, cfg.mean, cfg.std)
        plain = model.forward_head(model.forward_features(xb), pre_logits=True).numpy()
    for bs in (1, 4, 10):
        fast = extract_embeddings(
            model, cfg, pixels, batch_size=bs, precision="fp32", progress=False
        )
        np.testing.assert_allclose(fast, plain, rtol=1e-4, atol=1e-5)
    assert next(model.parameters()).is_contiguous()  # the model itself is left as it was


def test_feature_extraction_predicts_from_cached_embeddings(splits, tmp_path, monkeypatch):
    """Issue 17: a warm re-run predicts its test images from the embedding cache (no forward pass),
    and the result equals the network's own forward pass (BatchNorm unfolded, the classifier in the
    network) within float tolerance, for prepared images and for a bare array alike."""
    from medtl.strategies import _feature_extraction as fx
    from medtl.training import logits_to_proba, predict_logits

    train, val, test = splits
    # fp32: bf16 autocast (the CPU default where supported) rounds the two paths differently
    est = make("feature_extraction", cache_dir=str(tmp_path), precision="fp32").fit(train, val)
    first = est.predict_proba(test)  # computes and caches the test embeddings
    ref = logits_to_proba(
        predict_logits(est.model_, test.pixels, est.backbone_config_.mean, est.backbone_config_.std,
                       precision="fp32")
    )  # fmt: skip
    np.testing.assert_allclose(first, ref, atol=1e-5)
    np.testing.assert_allclose(est.predict_proba(test.pixels), first, atol=1e-6)  # no cache

    def boom(*a, **k):
        raise AssertionError("the network ran although every embedding was cached")

    monkeypatch.setattr(fx, "extract_embeddings", boom)
    np.testing.assert_array_equal(est.predict_proba(test), first)


def test_feature_extraction_head_memo_is_identical_and_skips_the_fit(splits, tmp_path, monkeypatch):
    """Issue 17: the regularisation path and the refit are memoised under the cache folder. A re-run
    reads them back bit for bit equal to a fit without any cache, and runs no logistic regression."""
    import sklearn.linear_model

    train, val, _ = splits
    plain = make("feature_extraction").fit(train, val)
    first = make("feature_extraction", cache_dir=str(tmp_path)).fit(train, val)
    assert (tmp_path / "results").is_dir()

    class Boom:
        def __init__(self, *a, **k):
            raise AssertionError("a logistic regression ran although its result was memoised")

    monkeypatch.setattr(sklearn.linear_model, "LogisticRegression", Boom)
    again = make("feature_extraction", cache_dir=str(tmp_path)).fit(train, val)
    for est in (first, again):
        assert est.C_ == plain.C_
        for a, b in zip(est.model_.get_classifier().parameters(),
                        plain.model_.get_classifier().parameters()):  # fmt: skip
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        np.testing.assert_array_equal(est.validation_proba(val), plain.validation_proba(val))
        assert [{k: v for k, v in r.items() if k != "elapsed"} for r in est.history_] == [
            {k: v for k, v in r.items() if k != "elapsed"} for r in plain.history_
        ]
    # another setting is another memo entry, not a stale one
    with pytest.raises(AssertionError, match="memoised"):
        make("feature_extraction", cache_dir=str(tmp_path), Cs=[0.1, 1.0]).fit(train, val)


def test_load_model_takes_the_cache_back_and_adabn_never_reads_unadapted_embeddings(
    splits, tmp_path
):
    """The model folder records no paths: ``load_model(cache_dir=)`` gives a feature-extraction model
    its embedding cache back (a re-run predicts without the network). An AdaBN-adapted copy keys the
    cache by its own tensors, so it never gets the pretrained backbone's cached embeddings."""
    import dataclasses
    import warnings

    from medtl.adapt import adapt_batchnorm
    from medtl.training import logits_to_proba, predict_logits

    train, val, test = splits
    est = make("feature_extraction", cache_dir=str(tmp_path), precision="fp32").fit(train, val)
    # as with real pretrained weights, the cache is keyed by the weights file's identity (the tiny
    # test backbone has no file, so its key would be its tensors and hide the problem)
    est.backbone_config_ = dataclasses.replace(est.backbone_config_, weights_sha256="ab" * 32)
    cached = est.predict_proba(test)  # caches the test embeddings
    est.save(tmp_path / "m")
    assert load_model(tmp_path / "m").cache_dir is None
    back = load_model(tmp_path / "m", cache_dir=tmp_path)
    assert back.cache_dir == str(tmp_path)
    np.testing.assert_array_equal(back.predict_proba(test), cached)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # AdaBN on feature extraction is warned about; allowed
        adapted = adapt_batchnorm(est, blob_images(24, seed=9, offset=300), progress=False)
    cfg = adapted.backbone_config_
    own = logits_to_proba(
        predict_logits(adapted.model_, test.pixels, cfg.mean, cfg.std, precision="fp32")
    )
    assert not np.allclose(own, cached, atol=1e-3)  # the adaptation changed the predictions
    np.testing.assert_allclose(adapted.predict_proba(test), own, atol=1e-5)


def test_lpft_probe_head_never_sees_the_validation_images(splits):
    """LP-FT chooses its epoch on validation: the probe head it starts from is fitted on train only
    (a head refit on train + validation made epoch 1 look 0.28 AUROC better than test on NIH)."""
    train, val, _ = splits
    est = get_strategy("fine_tuning", backbone="tiny_test", epochs=1, progress=False)
    probe = est._linear_probe(train, val)
    assert probe.refit_on_ == "train" and not probe.trains_on_validation()
    # its validation predictions are those of the model it hands over (no held-out substitute)
    assert np.allclose(probe.validation_proba(val), probe.predict_proba(val), atol=1e-5)


def test_logistic_head_in_the_row_span_equals_the_full_fit():
    """Fewer images than features: the head is fitted in the span of the training rows, which the
    L2-penalised solution lies in; the result equals the full-dimension fit within solver tolerance."""
    from sklearn.linear_model import LogisticRegression

    from medtl.strategies._feature_extraction import _logreg_refit, row_span_basis

    rng = np.random.default_rng(0)
    z = rng.normal(size=(40, 200))
    y = (z[:, :5].sum(1) + rng.normal(size=40) > 0).astype(int)
    basis = row_span_basis(z)
    assert basis.shape == (200, 40) and np.allclose(basis.T @ basis, np.eye(40), atol=1e-10)
    assert row_span_basis(z[:, :30]) is None  # more rows than columns: nothing to gain
    W, b = _logreg_refit(z, y, 0.1, 2, "balanced", 0, ())
    full = LogisticRegression(C=0.1, class_weight="balanced", max_iter=2000, tol=1e-10).fit(z, y)
    z_new = rng.normal(size=(30, 200))
    ours = z_new @ W[1] + b[1]
    theirs = full.decision_function(z_new)
    assert np.corrcoef(ours, theirs)[0, 1] > 0.9999 and np.abs(ours - theirs).max() < 1e-2

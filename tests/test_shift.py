"""Fine-tuning options for distribution shift: LP-FT, L2-SP, layer-wise decay, interpolation, AdaBN."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medtl.adapt import adapt_batchnorm
from medtl.errors import ConfigError
from medtl.strategies import get_strategy
from medtl.strategies._network import interpolate_state
from tests._helpers import blob_images


@pytest.fixture(scope="module")
def splits():
    return (
        blob_images(40, seed=21),
        blob_images(20, seed=22, offset=100),
        blob_images(20, seed=23, offset=200),
    )


def ft(**kw):
    base = {"backbone": "tiny_test", "epochs": 2, "batch_size": 8, "lr": 3e-3, "progress": False}
    return get_strategy("fine_tuning", **{**base, **kw})


def test_lpft_second_phase_starts_from_the_probe_head(splits, monkeypatch):
    import medtl.strategies._network as net

    train, val, _ = splits
    captured = {}
    orig = net.train_network if hasattr(net, "train_network") else None
    import medtl.training as tr

    real = tr.train_network

    def spy(model, *a, **k):
        captured["head"] = {
            n: v.detach().clone() for n, v in model.get_classifier().state_dict().items()
        }
        return real(model, *a, **k)

    monkeypatch.setattr(tr, "train_network", spy)
    est = ft(head_init="probe", seed=3).fit(train, val)
    # the probe LP-FT starts from is fitted on the training images only (refit=False): fine-tuning
    # chooses its epoch on the validation images
    probe = get_strategy(
        "feature_extraction", backbone="tiny_test", seed=3, progress=False, refit=False
    ).fit(train, val)
    for n, v in probe.model_.get_classifier().state_dict().items():
        torch.testing.assert_close(captured["head"][n], v)
    assert est.probe_val_auroc_ == pytest.approx(probe.best_val_auroc_)
    assert orig is None or orig is not spy


def test_interpolation_endpoints_are_exact():
    torch.manual_seed(0)
    a = {"w": torch.randn(3, 3), "n": torch.tensor(4)}
    b = {"w": torch.randn(3, 3), "n": torch.tensor(9)}
    assert torch.equal(interpolate_state(a, b, 0.0)["w"], a["w"])
    assert torch.equal(interpolate_state(a, b, 1.0)["w"], b["w"])
    mid = interpolate_state(a, b, 0.25)["w"]
    torch.testing.assert_close(mid, 0.75 * a["w"] + 0.25 * b["w"])


def test_interpolation_chosen_on_validation_and_saved(splits, tmp_path):
    from medtl.strategies import load_model

    train, val, test = splits
    est = ft(head_init="probe", interpolate=True).fit(train, val)
    assert est.alpha_ in [r["alpha"] for r in est.interpolation_]
    best = max(r["val_auroc"] for r in est.interpolation_)
    chosen = next(r for r in est.interpolation_ if r["alpha"] == est.alpha_)
    assert chosen["val_auroc"] >= best - 1e-4
    est.save(tmp_path / "m")
    back = load_model(tmp_path / "m")
    assert back.alpha_ == est.alpha_
    np.testing.assert_array_equal(back.predict_proba(test), est.predict_proba(test))


def test_interpolation_needs_the_probe(splits):
    train, val, _ = splits
    with pytest.raises(ConfigError, match="head_init='probe'"):
        ft(interpolate=True, head_init="random").fit(train, val)


def test_l2sp_keeps_weights_near_the_start(splits):
    train, val, _ = splits

    def drift(est):
        torch.manual_seed(est.seed)
        from medtl.backbones import create_backbone

        ref, _ = create_backbone("tiny_test", num_classes=2)
        sd, rd = est.model_.state_dict(), ref.state_dict()
        return sum(
            float(((sd[k] - rd[k]) ** 2).sum())
            for k in sd
            if "weight" in k
            and "head" not in k
            and not k.startswith(est.backbone_config_.classifier)
        )

    free = ft(patience=None).fit(train, val)
    tied = ft(patience=None, l2sp=100.0).fit(train, val)
    assert drift(tied) < drift(free)


def test_layer_decay_gives_geometric_rates():
    from medtl.backbones import create_backbone

    est = ft(layer_decay=0.5, lr=1.0, backbone_lr_ratio=0.1)
    model, cfg = create_backbone("tiny_test", num_classes=2)
    groups, _ = est._param_groups(model, cfg)
    rates = {g["name"]: g["lr"] for g in groups}
    n = len(cfg.stages)
    assert rates["head"] == 1.0
    assert rates[f"stage{n - 1}"] == pytest.approx(0.1)
    assert rates["stage0"] == pytest.approx(0.1 * 0.5 ** (n - 1))


def test_adabn_changes_only_batchnorm_statistics(splits):
    train, val, _ = splits
    est = ft(head_init="random").fit(train, val)  # BatchNorm trained in training mode
    shifted = blob_images(16, seed=9)
    shifted.pixels = np.clip(shifted.pixels.astype(int) + 60, 0, 255).astype(
        np.uint8
    )  # brighter site
    new = adapt_batchnorm(est, shifted)
    before, after = est.model_.state_dict(), new.model_.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "statistics moved"
    assert all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in changed)
    assert new.adaptation_["n_images"] == 16
    assert not hasattr(est, "adaptation_") or est.adaptation_ is None  # original untouched


def test_adapt_cli_round_trip(splits, tmp_path):
    from PIL import Image

    from medtl.cli import main
    from medtl.strategies import load_model

    train, val, _ = splits
    est = ft(epochs=1, head_init="random").fit(train, val)
    est.save(tmp_path / "m")
    target = tmp_path / "target"
    target.mkdir()
    for i in range(6):
        Image.fromarray(train.pixels[i, 0]).save(target / f"img{i}.png")
    (target / "broken.png").write_bytes(b"not an image")
    assert (
        main(
            [
                "adapt",
                str(tmp_path / "m"),
                "--data",
                str(target),
                "--out",
                str(tmp_path / "m2"),
                "--quiet",
            ]
        )
        == 0
    )
    back = load_model(tmp_path / "m2")
    assert back.adaptation_["n_images"] == 6


def test_lpft_keeps_batchnorm_statistics_frozen_by_default(splits):
    train, val, _ = splits
    probe = get_strategy("feature_extraction", backbone="tiny_test", seed=4, progress=False).fit(
        train, val
    )
    before = {k: v for k, v in probe.model_.state_dict().items() if "running" in k}
    lpft = ft(head_init="probe", seed=4).fit(train, val)
    after = lpft.model_.state_dict()
    for k, v in before.items():
        torch.testing.assert_close(after[k], v, rtol=0, atol=0)
    moving = (
        ft(head_init="probe", seed=4, freeze_batchnorm=False).fit(train, val).model_.state_dict()
    )
    assert any(not torch.equal(moving[k], v) for k, v in before.items())


def test_adabn_warns_for_frozen_batchnorm_models(splits):
    train, val, _ = splits
    fe = get_strategy("feature_extraction", backbone="tiny_test", progress=False).fit(train, val)
    with pytest.warns(UserWarning, match="never re-estimated"):
        adapt_batchnorm(fe, val)


def test_fine_tuning_defaults_to_lpft_recipe():
    est = get_strategy("fine_tuning")
    assert est.head_init == "probe" and est._freeze_bn() and est._rates() == (3e-4, 0.3)
    plain = get_strategy("fine_tuning", head_init="random")
    assert not plain._freeze_bn() and plain._rates() == (1e-3, 0.1)
    scratch = get_strategy("from_scratch")
    assert scratch.head_init == "random" and scratch._rates() == (3e-3, 1.0)

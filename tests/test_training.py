"""Training engine: history, early stopping, resume after interruption, augmentation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medtl.errors import ConfigError
from medtl.strategies import get_strategy
from medtl.training import AugmentSettings, BatchAugment, LoopSettings
from tests._helpers import blob_images


@pytest.fixture(scope="module")
def splits():
    return (
        blob_images(40, seed=11),
        blob_images(20, seed=12, offset=100),
        blob_images(20, seed=13, offset=200),
    )


def ft(**kw):
    base = {
        "backbone": "tiny_test",
        "epochs": 4,
        "batch_size": 8,
        "lr": 3e-3,
        "progress": False,
        "patience": None,
    }
    return get_strategy("fine_tuning", **{**base, **kw})


def test_history_written_each_epoch(splits, tmp_path):
    train, val, _ = splits
    hist_file = tmp_path / "history.json"
    rows = []
    est = ft(epochs=3).fit(train, val, history_path=hist_file, on_epoch_end=rows.append)
    saved = json.loads(hist_file.read_text())
    assert [r["epoch"] for r in saved] == [1, 2, 3] == [r["epoch"] for r in rows]
    for r in saved:
        assert set(r) >= {"train_loss", "val_auroc", "seconds", "elapsed"}
        assert r["seconds"] > 0
    assert est.best_epoch_ == 1 + int(np.nanargmax([r["val_auroc"] for r in saved]))


def test_interrupted_run_resumes_to_the_same_result(splits, tmp_path):
    train, val, test = splits
    full = ft(checkpoint_dir=str(tmp_path / "a")).fit(train, val)

    calls = {"n": 0}

    def crash(b, n_batches):
        calls["n"] += 1
        if calls["n"] == n_batches * 2 + 2:  # mid-way through the third epoch
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ft(checkpoint_dir=str(tmp_path / "b")).fit(train, val, on_batch_end=crash)
    assert (tmp_path / "b" / "checkpoint.pt").exists()
    resumed = ft(checkpoint_dir=str(tmp_path / "b"), resume=True).fit(train, val)
    assert resumed.history_[0]["epoch"] == 1 and len(resumed.history_) == 4
    np.testing.assert_array_equal(resumed.predict_proba(test), full.predict_proba(test))
    assert [r["val_auroc"] for r in resumed.history_] == [r["val_auroc"] for r in full.history_]


def test_early_stopping_keeps_best_epoch(splits):
    train, val, _ = splits
    est = ft(epochs=12, patience=1, lr=1e-6).fit(
        train, val
    )  # lr too small to improve -> stops early
    assert est.stopped_early_
    assert len(est.history_) < 12


def test_augmentation_is_seeded_and_bounded():
    x = torch.rand(6, 1, 32, 32)
    aug = BatchAugment(AugmentSettings())
    a = aug(x, torch.Generator().manual_seed(0))
    b = aug(x, torch.Generator().manual_seed(0))
    c = aug(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1 and a.shape == x.shape
    off = BatchAugment(AugmentSettings(enabled=False))
    assert torch.equal(off(x, torch.Generator()), x)


def test_no_vertical_flip_by_default():
    # a top-bright image stays top-bright under the default augmentation (no vertical flips)
    x = torch.zeros(16, 1, 32, 32)
    x[:, :, :8] = 1.0
    out = BatchAugment(AugmentSettings())(x, torch.Generator().manual_seed(3))
    assert bool((out[:, :, :10].mean((1, 2, 3)) > out[:, :, -10:].mean((1, 2, 3))).all())


def test_loop_settings_validated():
    with pytest.raises(ConfigError, match="schedule"):
        LoopSettings(schedule="linear")
    with pytest.raises(ConfigError, match="epochs"):
        LoopSettings(epochs=0)


def _reordered():
    """Registration order conv, bn, but the forward applies bn first: folding would be wrong."""
    from torch import nn

    class Reordered(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.bn = nn.BatchNorm2d(3)
            self.bn.running_mean.fill_(2.0)

        def forward(self, x):
            return self.conv(self.bn(x))

    return Reordered()


def test_batchnorm_folding_is_exact_and_checked():
    from torch import nn

    from medtl.backbones import create_backbone
    from medtl.training._inference import fold_batchnorm

    torch.manual_seed(0)
    model, _ = create_backbone("tiny_test", num_classes=2)
    for m in model.modules():  # non-trivial statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    x = torch.randn(4, 3, 32, 32)
    folded, n = fold_batchnorm(model, x)
    assert n > 0 and not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), model.eval()(x), rtol=1e-4, atol=1e-5)

    odd = _reordered().eval()
    same, k = fold_batchnorm(odd, x)
    assert same is odd and k == 0  # the numerical check refused the wrong fold


def _step_once(micro: int, weights: torch.Tensor | None, freeze_bn: bool):
    from torch import nn

    from medtl.backbones import create_backbone
    from medtl.training import training_step

    torch.manual_seed(0)
    model, _ = create_backbone("tiny_test", num_classes=2)
    model.train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d) and freeze_bn:
            m.eval()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(12, 3, 32, 32, generator=g)
    y = torch.tensor([0, 1, 1, 1, 0, 1, 1, 1, 1, 0, 1, 1])
    loss_fn = nn.CrossEntropyLoss(weight=weights, label_smoothing=0.1, reduction="sum")
    if freeze_bn:  # the returned loss is PyTorch's weighted mean over the whole batch
        with torch.no_grad():
            mean = nn.CrossEntropyLoss(weight=weights, label_smoothing=0.1)(model(x), y)
    # fp32: the property is exact arithmetic; bf16 autocast (on CPUs with native bf16) rounds each pass
    loss = training_step(
        model, opt, loss_fn, x, y, micro_batch=micro, class_weights=weights, precision="fp32"
    )
    if freeze_bn:
        assert loss == pytest.approx(float(mean), rel=1e-5)
    return loss, [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("weights", [None, torch.tensor([2.0, 0.6])])
def test_micro_batched_step_equals_whole_batch_step(weights):
    loss_all, params_all = _step_once(12, weights, freeze_bn=True)
    loss_micro, params_micro = _step_once(5, weights, freeze_bn=True)
    assert loss_micro == pytest.approx(loss_all, rel=1e-5)
    for a, b in zip(params_all, params_micro):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # with BatchNorm in training mode the passes are coupled: the same split gives another step
    _, bn_all = _step_once(12, weights, freeze_bn=False)
    _, bn_micro = _step_once(5, weights, freeze_bn=False)
    assert any(not torch.allclose(a, b, atol=1e-6) for a, b in zip(bn_all, bn_micro))


def test_micro_batch_only_when_batchnorm_is_frozen():
    from medtl.backbones import create_backbone
    from medtl.training import micro_batch_for as _resolve_micro_batch

    model, _ = create_backbone("tiny_test", num_classes=2)
    cpu = torch.device("cpu")
    s = LoopSettings(batch_size=32)
    model.train()
    assert _resolve_micro_batch(model, s, cpu, 224) == 32  # BatchNorm trains: whole batch
    model.eval()
    assert _resolve_micro_batch(model, s, cpu, 224) == 4
    assert (
        _resolve_micro_batch(model, LoopSettings(batch_size=32, micro_batch_size=0), cpu, 224) == 32
    )
    assert (
        _resolve_micro_batch(model, LoopSettings(batch_size=8, micro_batch_size=3), cpu, 224) == 3
    )


def test_micro_batch_size_scales_with_image_area():
    from medtl.training import micro_batch_size

    cpu = torch.device("cpu")
    assert micro_batch_size(cpu, 224) == 4
    assert micro_batch_size(cpu, 112) == 16
    assert micro_batch_size(cpu, 512) == 2  # never a batch of one (BatchNorm, stable kernels)
    assert micro_batch_size(cpu, 64, batch_size=8) == 8  # never more than the logical batch
    assert micro_batch_size(cpu, 224, batch_size=32, training=True) == 16  # retained allocations
    assert micro_batch_size(torch.device("cuda"), 224, batch_size=32) == 32
    with pytest.raises(ConfigError, match="micro_batch_size"):
        LoopSettings(micro_batch_size=-1)


def test_fine_tuning_result_does_not_depend_on_the_pass_size(splits):
    train, val, test = splits
    # LP-FT (the default) freezes BatchNorm statistics, so passes of 3 give the same steps as 8
    # fp32: bf16 autocast rounds each pass differently, which is not what this test is about
    whole = ft(micro_batch_size=0, epochs=2, precision="fp32").fit(train, val)
    parts = ft(micro_batch_size=3, epochs=2, precision="fp32").fit(train, val)
    np.testing.assert_allclose(
        whole.predict_proba(test), parts.predict_proba(test), rtol=1e-3, atol=1e-4
    )
    assert [r["val_auroc"] for r in whole.history_] == pytest.approx(
        [r["val_auroc"] for r in parts.history_], abs=1e-6
    )


def test_confident_predictions_keep_their_order(splits, tmp_path):
    """float32 softmax rounds p to 1.0 past a logit margin of ~17: such images tied and AUROC fell."""
    from sklearn.metrics import roc_auc_score

    from medtl.report import read_predictions
    from medtl.runs import predictions_csv as _predictions_csv
    from medtl.training import logits_to_proba

    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(50, int), np.ones(50, int)]
    margin = np.where(y == 1, rng.uniform(18, 34, 100), rng.uniform(10, 30, 100))  # overlapping
    logits = np.stack([np.zeros(100), margin], 1).astype(np.float32)
    exact = roc_auc_score(y, margin)
    p32 = torch.softmax(torch.from_numpy(logits), 1).numpy()
    assert roc_auc_score(y, p32[:, 1]) < exact - 0.01  # the bug this guards against
    p = logits_to_proba(logits)
    assert p.dtype == np.float64 and np.allclose(p.sum(1), 1)
    assert roc_auc_score(y, p[:, 1]) == pytest.approx(exact)

    est = get_strategy("fine_tuning", backbone="tiny_test")
    est.predict_logits = lambda images, progress=False: logits  # what a confident network returns
    assert roc_auc_score(y, est.predict_proba(np.zeros((100, 1, 8, 8), np.uint8))[:, 1]) == exact

    # predictions.csv keeps that order too (it used to round to 6 decimals)
    class Imgs:
        uids, labels = [f"u{i}" for i in range(100)], y

    path = tmp_path / "predictions.csv"
    path.write_text(_predictions_csv([("test", Imgs, p)], ["a", "b"]))
    back = read_predictions(path)
    assert np.array_equal(back.proba, p)


def test_affine_resample_is_the_monai_layer_it_replaced():
    """medtl dropped MONAI (one affine layer was its only use): same pixels, same geometry."""
    from medtl.training._augment import affine_resample

    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 16, 20, generator=g)
    identity = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(4, 2, 3)
    torch.testing.assert_close(affine_resample(x, identity), x, atol=1e-5, rtol=0)
    # theta is in (row, column) order: a -1 on the column axis mirrors left-right
    mirror = torch.tensor([[1.0, 0, 0], [0, -1.0, 0]]).expand(4, 2, 3)
    torch.testing.assert_close(affine_resample(x, mirror), x.flip(-1), atol=1e-5, rtol=0)
    monai = pytest.importorskip("monai.networks.layers")
    theta = torch.randn(4, 2, 3, generator=g) * 0.3 + torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])
    ref = monai.AffineTransform(
        normalized=True, mode="bilinear", padding_mode="border", align_corners=False
    )(x, theta)
    torch.testing.assert_close(affine_resample(x, theta), ref, atol=1e-6, rtol=0)


def test_cpu_training_steps_run_in_fp32_unless_bf16_is_asked_for():
    """'auto' = fp32 for CPU training steps (bf16 autocast was slower there; see training_precision),
    while inference keeps bf16 where the CPU has it; the summary says both."""
    from medtl.training import describe_precision, training_precision

    cpu = torch.device("cpu")
    assert training_precision(cpu) == "fp32" and training_precision(cpu, "bf16") == "bf16"
    assert training_precision(torch.device("cuda"), "auto") == "auto"
    loss_auto, params_auto = _step_once(5, None, freeze_bn=True)  # precision fp32 in the helper
    torch.manual_seed(0)
    from torch import nn

    from medtl.backbones import create_backbone
    from medtl.training import training_step

    model, _ = create_backbone("tiny_test", num_classes=2)
    model.train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(12, 3, 32, 32, generator=g)
    y = torch.tensor([0, 1, 1, 1, 0, 1, 1, 1, 1, 0, 1, 1])
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1, reduction="sum")
    loss = training_step(model, opt, loss_fn, x, y, micro_batch=5, precision="auto")
    assert loss == loss_auto  # bit-identical to an explicit fp32 step
    for a, b in zip(params_auto, model.parameters()):
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=0)
    text = describe_precision(cpu)
    assert "fp32" in text and ("training" in text or text == "fp32 (CPU has no native bf16)")


def _timm_lite(seed: int):
    """EfficientNet-Lite0's architecture (timm's BatchNormAct2d with ReLU6), random weights and statistics."""
    import timm
    from torch import nn

    torch.manual_seed(seed)
    model = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model


def test_folded_training_step_equals_the_plain_fp32_step():
    """BatchNorm folded for training is the same function of the same parameters: one step from the same
    start gives the same loss and gradients (fp32 rounding apart), and the module is restored. (SGD: an
    Adam first step is ~lr * sign(gradient), which turns rounding of near-zero gradients into lr.)"""
    import copy

    from torch import nn

    from medtl.training import training_step
    from medtl.training._inference import folded_for_training

    model = _timm_lite(0)
    model.train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()  # LP-FT: statistics frozen, affine weights learn
    twin = copy.deepcopy(model)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 3, 64, 64, generator=g).contiguous(memory_format=torch.channels_last)
    y = torch.tensor([0, 1, 2, 1, 0, 2])
    keys = list(model.state_dict())

    def step(net):
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        loss_fn = nn.CrossEntropyLoss(reduction="sum")
        loss = training_step(net, opt, loss_fn, x, y, micro_batch=4, precision="fp32")
        return loss, [p.grad.clone() for p in net.parameters()]

    plain_loss, plain_grads = step(twin)
    with folded_for_training(model, x[:2]) as n:
        assert n == 49  # every (convolution, BatchNorm) pair of EfficientNet-Lite0
        folded_loss, folded_grads = step(model)
    assert float(model.bn1.weight.grad.abs().sum()) > 0  # gamma still learns
    assert folded_loss == pytest.approx(plain_loss, rel=1e-5)
    names = [name for name, _ in model.named_parameters()]
    for name, a, b in zip(names, folded_grads, plain_grads):
        # within 1e-3 of the tensor's largest gradient: fp32 sums in another order, nothing more
        torch.testing.assert_close(a, b, rtol=0, atol=1e-3 * float(b.abs().max()) + 1e-9, msg=name)
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)
    assert list(model.state_dict()) == keys
    assert not any("forward" in vars(m) for m in model.modules())  # class forwards are back
    model.eval(), twin.eval()
    with torch.inference_mode():
        torch.testing.assert_close(model(x), twin(x), rtol=1e-4, atol=1e-5)


def test_folding_for_training_skips_training_batchnorm_and_wrong_orders():

    from medtl.training._inference import folded_for_training

    model = _timm_lite(1).train()  # every BatchNorm trains: nothing may be folded
    x = torch.randn(2, 3, 64, 64)
    with folded_for_training(model, x) as n:
        assert n == 0

    odd = _reordered().eval()
    with folded_for_training(odd, torch.randn(2, 3, 8, 8)) as k:
        assert k == 0  # the numerical check refused the wrong fold ...
        assert "forward" not in vars(odd.conv)  # ... and undid it


def test_fine_tuning_with_folded_batchnorm_gives_the_unfolded_result(splits, monkeypatch):
    import contextlib

    from medtl.training import _loop

    train, val, test = splits
    folded = ft(epochs=2, precision="fp32").fit(train, val)
    assert folded.batchnorm_folded_ > 0
    monkeypatch.setattr(_loop, "_folding", lambda *a: contextlib.nullcontext(0))
    plain = ft(epochs=2, precision="fp32", micro_batch_size=16).fit(train, val)
    assert plain.batchnorm_folded_ == 0
    np.testing.assert_allclose(
        folded.predict_proba(test), plain.predict_proba(test), rtol=1e-3, atol=1e-4
    )
    assert [r["val_auroc"] for r in folded.history_] == pytest.approx(
        [r["val_auroc"] for r in plain.history_], abs=1e-6
    )


def test_frozen_stages_leave_the_trained_layers_the_full_steps_gradients():
    """Freezing the leading stages (issue 27) changes the computation by design: those stages get no
    gradient and keep their weights. Every other parameter gets the same gradient as in the step that
    trains everything (backpropagation only stops earlier), and the loss is the same."""
    import copy

    from torch import nn

    from medtl.backbones import set_trainable_stages
    from medtl.backbones._efficientnet_lite import FINE_TUNE_FROZEN, lite_config
    from medtl.training import training_step

    cfg = lite_config(0)
    model = _timm_lite(3).train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    twin = copy.deepcopy(model)
    frozen = set_trainable_stages(model, cfg, len(cfg.stages) - FINE_TUNE_FROZEN)
    assert [type(m).__name__ for m in frozen][:2] == ["Conv2d", "BatchNormAct2d"]
    g = torch.Generator().manual_seed(4)
    x = torch.randn(6, 3, 64, 64, generator=g).contiguous(memory_format=torch.channels_last)
    y = torch.tensor([0, 1, 2, 1, 0, 2])

    def step(net):
        params = [p for p in net.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=0.1)
        loss = training_step(
            net, opt, nn.CrossEntropyLoss(reduction="sum"), x, y, micro_batch=3, precision="fp32"
        )
        return loss, {n: p.grad for n, p in net.named_parameters()}

    start = {n: t.clone() for n, t in model.state_dict().items()}
    full_loss, full = step(twin)
    part_loss, part = step(model)
    assert part_loss == pytest.approx(full_loss, rel=1e-6)
    prefix = ("conv_stem.", "bn1.", "blocks.0.", "blocks.1.", "blocks.2.")
    assert sum(n.startswith(prefix) for n in part) == 45  # 15 convolutions and 15 BatchNorms
    for name, grad in part.items():
        if name.startswith(prefix):
            assert grad is None, name  # no gradient, no update
            assert torch.equal(dict(model.named_parameters())[name], start[name]), name
        else:
            torch.testing.assert_close(grad, full[name], rtol=1e-5, atol=1e-7, msg=name)


def test_fine_tuning_keeps_the_frozen_stages_as_pretrained(splits, tmp_path):
    from medtl.backbones import create_backbone, stage_index
    from medtl.backbones._efficientnet_lite import FINE_TUNE_FROZEN, lite_config

    train, val, _ = splits
    start, cfg = create_backbone("tiny_test", num_classes=2)
    before = {k: v.clone() for k, v in start.state_dict().items()}
    body = {k: v for k, v in before.items() if not k.startswith("fc.")}
    torch.save(body, tmp_path / "start.pt")  # the "pretrained" weights both sides start from
    est = ft(epochs=2, freeze_stages=1, weights_path=str(tmp_path / "start.pt")).fit(train, val)
    moved = {}
    for name, t in est.model_.state_dict().items():
        if stage_index(name, cfg) is not None and t.is_floating_point():
            moved.setdefault(stage_index(name, cfg), []).append(not torch.equal(t, before[name]))
    assert not any(moved[0])  # weights and BatchNorm statistics as pretrained
    assert any(moved[len(cfg.stages) - 1])
    assert est._extra_state()["recipe"]["frozen_stages"] == ["features.stem"]
    est.save(tmp_path / "model")  # a model folder read back and written again keeps the record
    again = type(est).load(tmp_path / "model")
    assert again._extra_state()["recipe"]["frozen_stages"] == ["features.stem"]
    # the default: EfficientNet-Lite keeps its stride <= 8 stages; the tiny test backbone none
    assert get_strategy("fine_tuning").frozen_stages(lite_config(0)) == FINE_TUNE_FROZEN == 5
    assert get_strategy("fine_tuning").frozen_stages(cfg) == 0
    assert get_strategy("from_scratch").frozen_stages(lite_config(0)) == 0


@pytest.mark.parametrize(
    ("name", "params", "needle"),
    [
        (
            "fine_tuning",
            {"freeze_stages": 3},
            "'freeze_stages' parameter must be an integer in [0, 2]",
        ),
        ("fine_tuning", {"freeze_stages": -1}, "'freeze_stages'"),
        ("from_scratch", {"freeze_stages": 1}, "freeze_stages do not apply"),
        ("partial_fine_tuning", {"freeze_stages": 1}, "leave 'freeze_stages' out"),
    ],
)
def test_freeze_stages_out_of_range_is_refused(splits, name, params, needle):
    train, val, _ = splits
    est = get_strategy(name, backbone="tiny_test", epochs=1, progress=False, **params)
    with pytest.raises(ConfigError) as err:
        est.fit(train, val)
    assert needle in str(err.value)


def test_retained_allocations_reuse_freed_memory_and_change_nothing_computed(monkeypatch):
    """Inside the block a large tensor allocated again after one was freed reuses its memory instead of
    page-faulting fresh pages (what made passes of 16 slow). In steady state: the first allocations
    inside may still grow the heap. (Outside, whether glibc maps fresh pages depends on what the heap
    holds, so it is not asserted.)"""
    import resource
    import sys

    from medtl.training import _device, retained_allocations

    def faults_of_two_allocations() -> int:
        torch.empty(25_000_000).fill_(1.0)  # 100 MB, freed at once
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.empty(25_000_000).fill_(2.0)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    if _device._glibc() is None:
        with retained_allocations() as changed:
            assert changed is False
        pytest.skip(f"not glibc ({sys.platform}): nothing to retain")
    pages = 100e6 / resource.getpagesize()
    with retained_allocations() as changed:
        assert changed is True
        with retained_allocations():  # a nested fit leaving does not end the outer one's
            pass
        assert _device._RETAINING == [1]
        assert min(faults_of_two_allocations() for _ in range(4)) < 0.1 * pages
    assert _device._RETAINING == [0]
    # where the memory comes from changes nothing computed: the same step, bit for bit
    with retained_allocations():
        loss_kept, params_kept = _step_once(5, None, freeze_bn=True)
    loss_plain, params_plain = _step_once(5, None, freeze_bn=True)
    assert loss_kept == loss_plain
    for a, b in zip(params_kept, params_plain):
        assert torch.equal(a, b)
    monkeypatch.setattr(_device, "_glibc", lambda: None)  # musl, macOS, Windows: no change
    with retained_allocations() as changed:
        assert changed is False

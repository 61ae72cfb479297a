"""BatchNorm folded into the preceding convolution: for inference, and for training with frozen statistics.

A BatchNorm whose statistics are frozen is an affine map, so it can be merged into the convolution before it.
This removes a full memory pass per layer (forward and backward), which matters on CPUs where depthwise
convolutions are memory-bound.

- :func:`fold_batchnorm` (inference): an eval-mode copy whose weights are folded once
  (``torch.nn.utils.fusion.fuse_conv_bn_weights`` does the arithmetic).
- :func:`folded_for_training` (LP-FT's fine-tuning stage, statistics frozen, affine still learning): the
  same modules compute ``conv(x, w * s, beta - mu * s)`` with ``s = gamma / sqrt(var + eps)`` on the fly, so
  gradients still reach ``w``, ``gamma`` and ``beta``: the same function of the same parameters, one memory
  pass fewer. Module tree, parameter objects and ``state_dict`` are unchanged (only the two modules'
  ``forward`` is replaced, and restored on exit). PyTorch's fusion utilities fold weights for inference
  only, hence this hand-written context.
- :func:`frozen_at_inference_precision` (the frozen stages of the default fine-tuning recipe): modules
  with no trainable parameter compute as inference does, without a graph and in bf16 where the CPU has
  it, while the trained rest computes in fp32.

The two folds are checked numerically against the original and not used if they disagree, so an architecture whose
module order does not match its forward order can never silently change results.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from medtl.training._device import autocast_context, inference_precision, training_precision

log = logging.getLogger(__name__)


def _bn_replacement(bn: nn.BatchNorm2d) -> nn.Module:
    # timm's BatchNormAct2d applies dropout + activation after the affine part; keep those.
    act = getattr(bn, "act", None)
    drop = getattr(bn, "drop", None)
    parts = [m for m in (drop, act) if isinstance(m, nn.Module) and not isinstance(m, nn.Identity)]
    if not parts:
        return nn.Identity()
    return parts[0] if len(parts) == 1 else nn.Sequential(*parts)


def _conv_bn_pairs(model: nn.Module) -> Iterator[tuple[nn.Module, str, nn.Conv2d, nn.BatchNorm2d]]:
    """(parent, BatchNorm's name, convolution, BatchNorm) for each BatchNorm that directly follows a
    convolution of matching width among its parent's children, with running statistics."""
    for parent in list(model.modules()):
        names = list(parent._modules.keys())
        for a, b in itertools.pairwise(names):
            conv, bn = parent._modules[a], parent._modules[b]
            if (
                isinstance(conv, nn.Conv2d)
                and isinstance(bn, nn.BatchNorm2d)
                and bn.track_running_stats
                and bn.num_features == conv.out_channels
            ):
                yield parent, b, conv, bn


def fold_batchnorm(
    model: nn.Module, example: torch.Tensor, *, rtol: float = 1e-3
) -> tuple[nn.Module, int]:
    """An eval-mode copy of ``model`` with every (Conv2d, BatchNorm2d) pair folded into the convolution.

    Args:
        model: the network (left untouched).
        example: an input batch used to check that the folded copy computes the same outputs.
        rtol: largest accepted relative difference of the outputs.

    Returns:
        (network to use, number of folded pairs); the original model and 0 when the check fails.
    """
    folded = copy.deepcopy(model).eval()
    n = 0
    with torch.no_grad():
        for parent, name, conv, bn in list(_conv_bn_pairs(folded)):
            w, bias = fuse_conv_bn_weights(
                conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
            )
            conv.weight, conv.bias = w, bias
            parent._modules[name] = _bn_replacement(bn)
            n += 1
    if n == 0:
        return model, 0
    with torch.inference_mode():
        ref = model.eval()(example)
        out = folded(example)
    err = _relative_error(out, ref)
    if err > rtol:
        log.warning(
            "BatchNorm folding changed outputs (relative error %.2e); using the unfolded network",
            err,
        )
        return model, 0
    return folded, n


def _folded_conv_forward(conv: nn.Conv2d, bn: nn.BatchNorm2d):
    """``conv`` followed by ``bn`` (eval statistics) as one convolution, differentiable in the weights."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        bias = -bn.running_mean * scale
        if bn.bias is not None:
            bias = bias + bn.bias
        if conv.bias is not None:
            bias = bias + conv.bias * scale
        return conv._conv_forward(x, conv.weight * scale.reshape(-1, 1, 1, 1), bias)

    return forward


def _after_affine(bn: nn.BatchNorm2d):
    """What ``bn`` does after its affine map: timm's BatchNormAct2d applies dropout then activation."""
    parts = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if m is not None]

    def forward(x: torch.Tensor) -> torch.Tensor:
        for m in parts:
            x = m(x)
        return x

    return forward


def _relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest absolute difference relative to the largest reference output."""
    return float((out.float() - ref.float()).abs().max() / (ref.float().abs().max() + 1e-12))


def _eval_output(model: nn.Module, example: torch.Tensor) -> torch.Tensor:
    """``model``'s eval-mode output on ``example``; every module's training flag is left as it was."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.inference_mode():
            return model(example)
    finally:
        for m, mode in modes.items():
            m.train(mode)


@contextlib.contextmanager
def folded_for_training(
    model: nn.Module, example: torch.Tensor | None = None, *, rtol: float = 1e-4
) -> Iterator[int]:
    """Inside the block, every frozen-statistics BatchNorm (eval mode now) computes inside its convolution.

    Only pairs whose BatchNorm is in eval mode when the block starts are folded (LP-FT keeps them so for
    the whole fit); a BatchNorm that trains is left alone. The model must keep those BatchNorms in eval
    mode inside the block (``train_network`` re-applies the frozen modules every epoch).

    Args:
        model: the network being trained (modified in place, restored on exit).
        example: a normalised input batch; when given, the folded network's eval-mode outputs must match
            the original's within ``rtol`` (relative to the largest output) or nothing is folded.
        rtol: tolerance of that check.

    Yields:
        the number of folded (convolution, BatchNorm) pairs (0: nothing changed).
    """
    pairs = [
        (conv, bn)
        for _, _, conv, bn in _conv_bn_pairs(model)
        if not bn.training and type(conv).forward is nn.Conv2d.forward
    ]
    ref = _eval_output(model, example) if pairs and example is not None else None
    for conv, bn in pairs:
        conv.forward = _folded_conv_forward(conv, bn)
        bn.forward = _after_affine(bn)  # a function: stored in the instance, not as a submodule
    try:
        if ref is not None:
            err = _relative_error(_eval_output(model, example), ref)
            if err > rtol:
                log.warning(
                    "BatchNorm folding for training changed outputs (relative error %.2e); "
                    "training unfolded",
                    err,
                )
                _unfold(pairs)
                pairs = []
        yield len(pairs)
    finally:
        _unfold(pairs)


@contextlib.contextmanager
def frozen_at_inference_precision(
    modules: Sequence[nn.Module], device: torch.device, precision: str = "auto"
) -> Iterator[int]:
    """Inside the block, the frozen ``modules`` compute as inference does: no autograd graph, and in the
    inference precision where it differs from the training precision (bf16 on a CPU with native bf16).

    A frozen module (no trainable parameter, eval mode) whose input carries no gradient is inference:
    nothing behind it needs its graph. On this project's 2-core CPU bf16 runs inference ~1.5x faster
    than fp32 but training steps slower (see :func:`training_precision`), so the frozen stem and early
    stages of the default fine-tuning recipe run in bf16 and the trained rest in fp32; each frozen
    module's output is handed on in the input's dtype (fp32). This changes the computation by design:
    the trained layers see bf16-computed features, as they do at prediction time (inference runs in bf16
    on such a CPU) and as feature extraction's heads do. Measured on pretrained EfficientNet-Lite0 and 32
    real Kermany images (2026-12-07): the five frozen stages' output differs from fp32 by ~6% in norm
    (the whole network's bf16 features, which extraction uses, by ~10%), a step's gradient of the trained
    parameters by 20-25% in norm at cosine 0.97-0.98; the test AUROC over 3 seeds is in the README.

    A module with a trainable parameter, or called on an input that needs a gradient (a frozen module
    behind a trained one), runs unchanged. Yields how many modules run this way (0: nothing changed,
    e.g. on CUDA, where training already uses mixed precision, or on a CPU without native bf16).
    """
    wrapped: list[nn.Module] = []
    if (
        device.type == "cpu"
        and inference_precision(device, precision) == "bf16"
        and training_precision(device, precision) == "fp32"
    ):
        frozen = [m for m in modules if not any(p.requires_grad for p in m.parameters())]
        inner = {id(sub) for m in frozen for sub in m.modules() if sub is not m}
        wrapped = [m for m in frozen if id(m) not in inner]  # outermost only (LP-FT lists every BN)
    before = [m.__dict__.get("forward") for m in wrapped]  # e.g. a folded convolution's
    for m in wrapped:
        m.forward = _as_inference(m, device, precision)
    try:
        yield len(wrapped)
    finally:
        for m, fwd in zip(wrapped, before, strict=True):
            if fwd is None:
                m.__dict__.pop("forward", None)
            else:
                m.forward = fwd


def _as_inference(module: nn.Module, device: torch.device, precision: str) -> Callable[..., Any]:
    """``module.forward`` run without a graph in the inference precision, its output in the input's dtype."""
    forward = module.forward  # the instance's own (a folded convolution's) or its class's

    def run(x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(x, torch.Tensor) or (
            torch.is_grad_enabled() and (x.requires_grad or module.training)
        ):
            return forward(x, *args, **kwargs)  # gradients must flow through, or it is not frozen
        with torch.no_grad(), autocast_context(device, precision):
            out = forward(x, *args, **kwargs)
        return out.to(x.dtype) if isinstance(out, torch.Tensor) and out.is_floating_point() else out

    return run


def _unfold(pairs: list[tuple[nn.Conv2d, nn.BatchNorm2d]]) -> None:
    """Give each module its class's ``forward`` back (instance attributes removed)."""
    for conv, bn in pairs:
        conv.__dict__.pop("forward", None)
        bn.__dict__.pop("forward", None)

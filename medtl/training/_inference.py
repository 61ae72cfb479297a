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

Both are checked numerically against the original and not used if they disagree, so an architecture whose
module order does not match its forward order can never silently change results.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

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


def _unfold(pairs: list[tuple[nn.Conv2d, nn.BatchNorm2d]]) -> None:
    """Give each module its class's ``forward`` back (instance attributes removed)."""
    for conv, bn in pairs:
        conv.__dict__.pop("forward", None)
        bn.__dict__.pop("forward", None)

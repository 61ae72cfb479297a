"""Inference-only speed-ups for a frozen network: BatchNorm folded into the preceding convolution.

A frozen backbone's BatchNorm is an affine map with fixed statistics, so it can be merged into the weights of
the convolution before it (``torch.nn.utils.fusion.fuse_conv_bn_weights`` does the arithmetic). This removes a
full memory pass per layer, which matters on CPUs where depthwise convolutions are memory-bound. The folded
copy is checked numerically against the original and discarded if they disagree, so an architecture whose
module order does not match its forward order can never silently change results.
"""

from __future__ import annotations

import copy
import itertools
import logging

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
        for parent in list(folded.modules()):
            names = list(parent._modules.keys())
            for a, b in itertools.pairwise(names):
                conv, bn = parent._modules[a], parent._modules[b]
                if (
                    isinstance(conv, nn.Conv2d)
                    and isinstance(bn, nn.BatchNorm2d)
                    and bn.track_running_stats
                    and bn.num_features == conv.out_channels
                ):
                    w, bias = fuse_conv_bn_weights(
                        conv.weight,
                        conv.bias,
                        bn.running_mean,
                        bn.running_var,
                        bn.eps,
                        bn.weight,
                        bn.bias,
                    )
                    conv.weight, conv.bias = w, bias
                    parent._modules[b] = _bn_replacement(bn)
                    n += 1
    if n == 0:
        return model, 0
    with torch.inference_mode():
        ref = model.eval()(example)
        out = folded(example)
    err = float((out - ref).abs().max() / (ref.abs().max() + 1e-12))
    if err > rtol:
        log.warning(
            "BatchNorm folding changed outputs (relative error %.2e); using the unfolded network",
            err,
        )
        return model, 0
    return folded, n

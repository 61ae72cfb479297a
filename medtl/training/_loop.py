"""The training loop shared by fine-tuning, partial fine-tuning and from-scratch training.

Features: AdamW with per-group learning rates, one-cycle or warm-up + cosine schedule, class-balanced loss,
radiograph augmentation, early stopping on validation AUROC with the best weights kept, channels-last memory
and autocast where the hardware benefits, a tqdm progress bar with live loss/AUROC, per-epoch history written
as it goes, and an end-of-epoch checkpoint from which an interrupted run resumes to the same result.

Reproducibility: the shuffling order, augmentation parameters and dropout of epoch ``e`` are derived from
``(seed, e)`` only, so a run resumed at an epoch boundary replays exactly what an uninterrupted run does.

Distributed (``torchrun``, see :mod:`medtl.distributed`): the model is wrapped in DistributedDataParallel
and every process takes an equal contiguous share of each *global* batch of ``batch_size`` images. The
order, the augmentation parameters (drawn for the whole global batch), the loss denominator (the global
batch's class weight), the schedule and early stopping are those of one process with the same batch, so
the result does not depend on the number of processes beyond floating-point noise, as long as no layer
couples the samples of a batch (BatchNorm in training mode does: each process normalises its own share).
Validation predictions are sharded and gathered in order; rank 0 decides early stopping and writes the
history and checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medtl import distributed
from medtl._fileio import atomic_write, atomic_write_json
from medtl._options import look_up_option
from medtl.backbones import to_model_input
from medtl.data import PreparedImages
from medtl.tasks import Task, task_for
from medtl.training._augment import AugmentSettings, BatchAugment
from medtl.training._device import (
    autocast_context,
    grad_scaler,
    micro_batch_size,
    resolve_device,
    retained_allocations,
    to_device,
    training_precision,
)
from medtl.training._inference import folded_for_training

log = logging.getLogger(__name__)


@dataclass
class LoopSettings:
    """Settings of :func:`train_network` (validated on construction)."""

    epochs: int = 10
    batch_size: int = 32
    # None: cache-sized on a CPU (see micro_batch_size), 128 on CUDA
    eval_batch_size: int | None = None
    weight_decay: float = 0.01
    schedule: str = "onecycle"  # "onecycle" | "cosine" (linear warm-up then cosine) | "constant"
    warmup_frac: float = 0.1
    patience: int | None = 3  # epochs without val-AUROC improvement before stopping; None = never
    class_weighting: str = "balanced"  # "balanced" | "none"
    label_smoothing: float = 0.0
    grad_clip: float | None = 2.0
    precision: str = "auto"
    channels_last: bool = True
    device: str = "auto"
    seed: int = 0
    max_minutes: float | None = None  # wall-clock budget; stops after the epoch that exceeds it
    # On tiny datasets an epoch repeats the (reshuffled) data until it has this many optimiser
    # steps, so that the schedule, early stopping and "epochs" still mean something at 50 images.
    min_steps_per_epoch: int = 10
    # Images per forward/backward pass inside one optimiser step. When no BatchNorm layer is in training
    # mode (LP-FT freezes their statistics), the gradients of a step accumulated over micro-batches equal
    # those of the whole batch, and smaller passes are faster on a CPU. None = automatic (16 images at
    # 224 px on a CPU, see micro_batch_size and retained_allocations; the whole batch on CUDA or while
    # BatchNorm trains); 0 = always whole batch.
    micro_batch_size: int | None = None
    # On a CPU, fold each frozen-statistics BatchNorm into its convolution while training (same function
    # of the same parameters, one memory pass fewer; see folded_for_training). False = train unfolded.
    fold_batchnorm: bool = True

    def __post_init__(self) -> None:
        from medtl._options import check_epochs_bounded, check_range

        check_range("epochs", self.epochs, 1)
        check_epochs_bounded(self.epochs, self.patience, self.max_minutes)
        check_range("batch_size", self.batch_size, 1)
        if self.micro_batch_size is not None:
            check_range("micro_batch_size", self.micro_batch_size, 0)
        check_range("warmup_frac", self.warmup_frac, 0.0, 0.9)
        look_up_option("schedule", self.schedule, ["onecycle", "cosine", "constant"])
        look_up_option("class_weighting", self.class_weighting, ["balanced", "none"])
        look_up_option("precision", self.precision, ["auto", "bf16", "fp16", "fp32"])


@dataclass
class TrainResult:
    """What :func:`train_network` returns: best weights (already loaded in the model) and history."""

    history: list[dict[str, Any]]
    best_epoch: int
    best_val_auroc: float
    seconds: float
    stopped_early: bool
    resumed_from_epoch: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def logits_to_proba(logits: np.ndarray | torch.Tensor, task: Task | None = None) -> np.ndarray:
    """Probabilities from (N, K) logits in float64, as the task defines them (softmax for one
    label per image; :meth:`medtl.tasks.Task.proba_from_logits`).

    Why float64: a confident network's float32 softmax rounds p to exactly 1.0 once the logit margin
    passes about 17, so such images tie and AUROC drops. Measured on Kermany: a 10-epoch fine-tuned
    model put 308 of 624 test images at p = 1.0 in float32, which read as AUROC 0.970 where its actual
    ranking gives 0.977. float64 keeps them apart up to a margin of about 36.
    """
    if task is None:
        task = task_for([str(k) for k in range(np.shape(logits)[1])])
    return task.proba_from_logits(logits)


def val_auroc(labels: np.ndarray, proba: np.ndarray, task: Task | None = None) -> float:
    """The task's headline AUROC (binary: positive = class 1; multi-class: macro one-vs-rest);
    NaN if undefined. ``task`` defaults to the single-label task of ``proba``'s columns."""
    if task is None:
        task = task_for([str(k) for k in range(np.shape(proba)[1])])
    return task.headline_auroc(labels, proba)


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    pixels: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    batch_size: int | None = None,
    device: torch.device | None = None,
    precision: str = "auto",
    channels_last: bool = True,
    progress: bool = False,
    desc: str = "predict",
) -> np.ndarray:
    """Batched inference of ``model`` on uint8 pixels (N, C, S, S); returns float32 logits (N, K).

    ``batch_size=None`` picks a cache-sized batch on a CPU and 128 on CUDA (:func:`micro_batch_size`).
    """
    from tqdm.auto import tqdm

    device = device or next(model.parameters()).device
    if batch_size is None:
        batch_size = micro_batch_size(device, int(pixels.shape[-1]) if pixels.ndim == 4 else 224)
    was_training = model.training
    model.eval()
    out = []
    try:
        for i in tqdm(
            range(0, len(pixels), batch_size), desc=desc, disable=not progress, leave=False
        ):
            xb = to_device(pixels[i : i + batch_size], device)
            xb = to_model_input(xb.float().div_(255.0), mean, std)
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with autocast_context(device, precision):
                out.append(model(xb).float().cpu())
    finally:
        model.train(was_training)
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(out).numpy()


def _make_scheduler(opt: torch.optim.Optimizer, s: LoopSettings, steps_per_epoch: int):
    total = max(1, s.epochs * steps_per_epoch)
    if s.schedule == "onecycle" and total >= 4:  # OneCycleLR needs a few steps per phase
        return torch.optim.lr_scheduler.OneCycleLR(
            opt,
            max_lr=[g["lr"] for g in opt.param_groups],
            total_steps=total,
            pct_start=min(max(s.warmup_frac, 1.5 / total), 1 - 1.5 / total),
            anneal_strategy="cos",
            div_factor=10.0,
            final_div_factor=100.0,
        )
    if s.schedule in ("cosine", "onecycle"):
        warm = round(s.warmup_frac * total)

        def f(step: int) -> float:
            if step < warm:
                return (step + 1) / (warm + 1)
            prog = (step - warm) / max(1, total - warm)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, prog)))

        return torch.optim.lr_scheduler.LambdaLR(opt, f)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)


def _set_train_mode(model: nn.Module, frozen: Sequence[nn.Module]) -> None:
    model.train()
    for m in frozen:  # frozen parts keep BatchNorm statistics and dropout fixed
        m.eval()


def micro_batch_for(
    model: nn.Module,
    s: LoopSettings,
    device: torch.device,
    image_size: int,
    *,
    retained: bool = False,
) -> int:
    """Images per pass: the whole batch while any BatchNorm trains (its statistics depend on the batch);
    else ``s.micro_batch_size`` or :func:`micro_batch_size`'s choice (``retained``: inside
    :func:`retained_allocations`, where training passes of 16 at 224 px are the fastest)."""
    if s.micro_batch_size == 0:
        return s.batch_size
    if any(m.training for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)):
        return s.batch_size
    if s.micro_batch_size is not None:
        return min(s.micro_batch_size, s.batch_size)
    return micro_batch_size(device, image_size, s.batch_size, training=retained)


def training_step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    loss_fn: nn.Module,
    xb: torch.Tensor,
    yb: torch.Tensor,
    *,
    micro_batch: int | None = None,
    class_weights: torch.Tensor | None = None,
    regularizer: Callable[[nn.Module], torch.Tensor] | None = None,
    grad_clip: float | None = None,
    precision: str = "auto",
    channels_last: bool = True,
    denominator: float | None = None,
    scaler: torch.amp.GradScaler | None = None,
    task: Task | None = None,
) -> float:
    """One optimiser step on the batch ``(xb, yb)``, its gradients accumulated over micro-batches.

    ``loss_fn`` must sum over samples (``reduction="sum"``); the sum is divided by the batch's total
    class weight, which is exactly PyTorch's weighted mean over the whole batch, so the step does not
    depend on ``micro_batch`` (up to floating-point rounding) as long as no layer couples the samples of
    a pass (BatchNorm in training mode does; the loop then passes the whole batch).

    Distributed: when ``model`` is a ``DistributedDataParallel`` wrapper, ``(xb, yb)`` is this
    process's share of a global batch and ``denominator`` that global batch's total class weight.
    DDP averages gradients over the N processes, so each process's loss is scaled by N: the averaged
    gradient is then the global batch's, and the step equals the single-process step. Gradients are
    synchronised once per step (``no_sync`` on all but the last micro-batch).

    ``scaler``: a ``torch.amp.GradScaler`` for fp16 training on CUDA (None elsewhere).
    ``task``: the task kind, which says what a batch's total weight is (default: class-weighted
    single-label counting).

    Returns:
        the batch's loss (including the regulariser); for a share of a distributed batch, that share's
        part, so that the sum over processes is the global batch's loss.
    """
    from torch.nn.parallel import DistributedDataParallel

    device = xb.device
    n = len(xb)
    micro = n if not micro_batch else min(int(micro_batch), n)
    if denominator is not None:
        denom = float(denominator)
    elif task is not None:
        denom = task.batch_weight(yb, class_weights)
    else:
        denom = float(class_weights[yb].sum()) if class_weights is not None else float(n)
    ddp = isinstance(model, DistributedDataParallel)
    n_ranks = distributed.world_size() if ddp else 1

    def backward(loss: torch.Tensor) -> None:
        (scaler.scale(loss) if scaler is not None else loss).backward()

    opt.zero_grad(set_to_none=True)
    total = 0.0
    starts = list(range(0, n, micro))
    for j, i in enumerate(starts):
        last = j == len(starts) - 1
        x = xb[i : i + micro]
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        sync = model.no_sync() if ddp and not last else contextlib.nullcontext()
        with sync:
            with autocast_context(device, training_precision(device, precision)):
                logits = model(x)
            loss = loss_fn(logits.float(), yb[i : i + micro]) / denom
            total += float(loss.detach())
            if not ddp:
                backward(loss)
            elif last and regularizer is not None:
                # inside the last synchronised backward: DDP hooks fire once per parameter per step
                reg = regularizer(model.module)
                total += float(reg.detach()) / n_ranks
                backward(loss * n_ranks + reg)
            else:
                backward(loss * n_ranks)
    if regularizer is not None and not ddp:
        reg = regularizer(model)
        backward(reg)
        total += float(reg.detach())
    if scaler is not None:
        scaler.unscale_(opt)
    if grad_clip:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if scaler is not None:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
    return total


@dataclass
class _Loop:
    """What :func:`train_network` sets up once and every epoch uses."""

    s: LoopSettings
    task: Task
    device: torch.device
    net: nn.Module  # the model, or its DistributedDataParallel wrapper
    opt: torch.optim.Optimizer
    sched: Any
    scaler: Any
    loss_fn: nn.Module
    weights_cpu: torch.Tensor | None
    weights: torch.Tensor | None
    aug: BatchAugment
    steps_per_epoch: int
    n_ranks: int
    allocations_retained: bool = False  # inside retained_allocations (set by train_network)


@dataclass
class _Progress:
    """The state that an end-of-epoch checkpoint saves and a resumed run restores."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_score: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    start_epoch: int = 0
    elapsed_before: float = 0.0


def _set_up(
    model: nn.Module,
    param_groups: list[dict[str, Any]],
    train: PreparedImages,
    s: LoopSettings,
    task: Task,
    augment: AugmentSettings | None,
) -> _Loop:
    """Device, optimiser, schedule, loss (the task's, class-balanced when asked) and augmentation."""
    n_ranks = distributed.world_size()
    if n_ranks > 1 and s.batch_size % n_ranks:
        raise distributed.DistributedError(
            f"The 'batch_size' is {s.batch_size}, which the world size {n_ranks} does not divide. "
            f"Use a multiple of {n_ranks}."
        )
    device = resolve_device(s.device)
    model.to(device)
    if s.channels_last:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(param_groups, weight_decay=s.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(train) / s.batch_size), s.min_steps_per_epoch)
    weights_cpu = task.class_weights(train.labels) if s.class_weighting == "balanced" else None
    weights = None if weights_cpu is None else weights_cpu.to(device)
    return _Loop(
        s=s,
        task=task,
        device=device,
        net=model,
        opt=opt,
        sched=_make_scheduler(opt, s, steps_per_epoch),
        scaler=grad_scaler(device, s.precision),
        # summed per micro-batch, divided by the whole batch's weight in training_step (= the mean)
        loss_fn=task.loss(weights, label_smoothing=s.label_smoothing, reduction="sum"),
        weights_cpu=weights_cpu,
        weights=weights,
        aug=BatchAugment(augment or AugmentSettings()),
        steps_per_epoch=steps_per_epoch,
        n_ranks=n_ranks,
    )


def _resume(model: nn.Module, lp: _Loop, ckpt: Path | None, resume: bool) -> _Progress:
    """The progress saved in ``ckpt`` (model, optimiser, schedule and scaler restored), or a fresh one."""
    state = None
    if resume and ckpt is not None:
        # rank 0 owns the run folder: it reads the checkpoint and every other rank gets its content
        if distributed.is_main() and ckpt.exists():
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
        state = distributed.broadcast_object(state)
    if state is None:
        return _Progress()
    model.load_state_dict(state["model"])
    lp.opt.load_state_dict(state["optimizer"])
    lp.sched.load_state_dict(state["scheduler"])
    if lp.scaler is not None and state.get("scaler"):
        lp.scaler.load_state_dict(state["scaler"])
    meta = state["meta"]
    log.info("resumed from %s at epoch %d", ckpt, int(meta["epoch"]) + 2)
    return _Progress(
        history=list(meta["history"]),
        best_score=meta["best_score"],
        best_epoch=meta["best_epoch"],
        bad_epochs=meta["bad_epochs"],
        best_state=state["best_state"],
        start_epoch=int(meta["epoch"]) + 1,
        elapsed_before=float(meta["elapsed"]),
    )


def _train_epoch(
    model: nn.Module,
    lp: _Loop,
    train: PreparedImages,
    epoch: int,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    frozen_modules: Sequence[nn.Module],
    regularizer: Callable[[nn.Module], torch.Tensor] | None,
    first: bool,
    progress: bool,
    desc: str,
    on_batch_end: Callable[[int, int], None] | None,
) -> tuple[float, int]:
    """One epoch of optimiser steps; (summed loss over the global batches, images seen).

    The order, augmentation and dropout of epoch ``epoch`` derive from ``(seed, epoch)`` only.
    """
    from tqdm.auto import tqdm

    s = lp.s
    torch.manual_seed(s.seed * 100_003 + epoch)
    gen = torch.Generator().manual_seed(s.seed * 7_919 + epoch)
    rng = np.random.default_rng([s.seed, epoch])
    passes = math.ceil(lp.steps_per_epoch * s.batch_size / max(1, len(train)))
    order = np.concatenate([rng.permutation(len(train)) for _ in range(passes)])
    _set_train_mode(model, frozen_modules)
    micro = micro_batch_for(
        model, s, lp.device, int(train.pixels.shape[-1]), retained=lp.allocations_retained
    )
    if first and micro < s.batch_size:
        log.info("%s: %d images per pass, %d per optimiser step", desc, micro, s.batch_size)
    total_loss, seen = 0.0, 0
    bar = tqdm(
        range(lp.steps_per_epoch),
        desc=f"{desc} epoch {epoch + 1}/{s.epochs}",
        disable=not progress,
        leave=False,
    )
    for b in bar:
        idx = order[b * s.batch_size : (b + 1) * s.batch_size]
        if len(idx) < 2 and len(train) >= 2:  # a batch of one breaks BatchNorm; fold it away
            continue
        denom = None
        if lp.n_ranks > 1:  # this process's contiguous share of the global batch
            lo, hi = distributed.shard_bounds(len(idx))
            denom = lp.task.batch_weight(torch.from_numpy(train.labels[idx]), lp.weights_cpu)
            mine = idx[lo:hi]
        else:
            lo, hi, mine = 0, len(idx), idx
        xb = to_device(train.pixels[mine], lp.device).float().div_(255.0)
        yb = to_device(train.labels[mine], lp.device)
        xb = to_model_input(lp.aug(xb, gen, rows=slice(lo, hi), n_total=len(idx)), mean, std)
        loss_value = training_step(
            lp.net,
            lp.opt,
            lp.loss_fn,
            xb,
            yb,
            micro_batch=micro,
            class_weights=lp.weights,
            regularizer=regularizer,
            grad_clip=s.grad_clip,
            precision=s.precision,
            channels_last=s.channels_last,
            denominator=denom,
            scaler=lp.scaler,
            task=lp.task,
        )
        lp.sched.step()
        total_loss += loss_value * len(idx)
        seen += len(idx)
        bar.set_postfix(loss=f"{total_loss / max(1, seen):.4f}")
        if on_batch_end is not None:
            on_batch_end(b, lp.steps_per_epoch)
    bar.close()
    return distributed.all_reduce_sum(total_loss), seen  # each process summed its share


def _validation_logits(
    model: nn.Module, lp: _Loop, val: PreparedImages, mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
    """Validation logits, predicted in shards and gathered in order."""
    s = lp.s
    logits = distributed.map_shards(
        lambda i: predict_logits(
            model,
            val.pixels[i],
            mean,
            std,
            batch_size=s.eval_batch_size,
            device=lp.device,
            precision=s.precision,
            channels_last=s.channels_last,
        ),
        len(val),
    )
    return logits


def _save_checkpoint(
    ckpt: Path, model: nn.Module, lp: _Loop, pg: _Progress, epoch: int, elapsed: float
) -> None:
    """The end-of-epoch checkpoint (written atomically) from which a resumed run replays exactly."""
    payload = {
        "model": model.state_dict(),
        "optimizer": lp.opt.state_dict(),
        "scheduler": lp.sched.state_dict(),
        "scaler": lp.scaler.state_dict() if lp.scaler is not None else None,
        "best_state": pg.best_state,
        "meta": {
            "epoch": epoch,
            "history": pg.history,
            "best_score": pg.best_score,
            "best_epoch": pg.best_epoch,
            "bad_epochs": pg.bad_epochs,
            "elapsed": elapsed,
            "settings": asdict(lp.s),
        },
    }
    atomic_write(ckpt, lambda tmp, p=payload: torch.save(p, tmp))


def _record_epoch(
    model: nn.Module, pg: _Progress, auc: float, vloss: float, elapsed: float, s: LoopSettings
) -> tuple[bool, bool]:
    """The stopping rule's bookkeeping: (improved, over the time budget). The best weights are kept
    on improvement (validation AUROC; the validation loss when AUROC is undefined)."""
    score = auc if not math.isnan(auc) else -vloss
    improved = score > pg.best_score + 1e-6
    over_budget = s.max_minutes is not None and elapsed > 60 * s.max_minutes
    # every rank saw the same gathered predictions; rank 0's decision is still the one all follow
    improved, over_budget = distributed.broadcast_object((improved, over_budget))
    if improved:
        pg.best_score, pg.bad_epochs = score, 0
        pg.best_state = {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}
    else:
        pg.bad_epochs += 1
    return improved, over_budget


def train_network(
    model: nn.Module,
    param_groups: list[dict[str, Any]],
    mean: Sequence[float],
    std: Sequence[float],
    train: PreparedImages,
    val: PreparedImages,
    settings: LoopSettings,
    *,
    augment: AugmentSettings | None = None,
    frozen_modules: Sequence[nn.Module] = (),
    checkpoint_path: str | os.PathLike | None = None,
    resume: bool = False,
    history_path: str | os.PathLike | None = None,
    progress: bool = True,
    desc: str = "train",
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    on_batch_end: Callable[[int, int], None] | None = None,
    regularizer: Callable[[nn.Module], torch.Tensor] | None = None,
    task: Task | None = None,
) -> TrainResult:
    """Train ``model`` on ``train``, early-stop on validation AUROC, and load the best weights back.

    Steps: :func:`_set_up`, :func:`_resume`, then per epoch :func:`_train_epoch`, :func:`_validation_logits`,
    :func:`_record_epoch` (the stopping rule) and :func:`_finish_epoch` (history, checkpoint).

    Args:
        model: network mapping normalised (N, 3, S, S) inputs to logits (N, K).
        param_groups: AdamW parameter groups with their peak learning rates (discriminative rates).
        mean, std: normalisation of the backbone.
        train, val: prepared images; validation must not overlap training.
        settings: loop settings.
        augment: augmentation settings (None = defaults; ``AugmentSettings(enabled=False)`` = none).
        frozen_modules: modules kept in eval mode during training (partial fine-tuning).
        checkpoint_path: end-of-epoch checkpoint file (written atomically); with ``resume=True`` and an
            existing file, training continues from it.
        history_path: JSON file rewritten after every epoch with the history so far.
        on_epoch_end: called with each epoch's history row (e.g. a progress element in the app).
        on_batch_end: called with (batch index, number of batches) (tests use it to simulate a crash).
        regularizer: extra loss term computed from the model (e.g. L2-SP).
        task: the task kind (loss, validation AUROC); default: the single-label task of
            ``train.classes``.
    """
    s = settings
    task = task or task_for(train.classes)
    progress = progress and distributed.is_main()  # one progress bar per job, not per process
    check_batch_fits(s.batch_size, train)
    lp = _set_up(model, param_groups, train, s, task, augment)
    ckpt = Path(checkpoint_path) if checkpoint_path else None
    pg = _resume(model, lp, ckpt, resume)
    if lp.n_ranks > 1:
        _wrap_ddp(model, lp)

    t0 = time.perf_counter()
    _set_train_mode(model, frozen_modules)  # folding looks at which BatchNorms are frozen
    retain = retained_allocations() if lp.device.type == "cpu" else contextlib.nullcontext(False)
    with retain as lp.allocations_retained, _folding(model, lp, train, mean, std) as folded:
        if folded:
            log.debug("%s: BatchNorm folded into %d convolutions for training", desc, folded)
        stopped_early = _run_epochs(
            model, lp, pg, train, val, mean=mean, std=std, frozen_modules=frozen_modules,
            regularizer=regularizer, progress=progress, desc=desc, history_path=history_path,
            ckpt=ckpt, t0=t0, on_epoch_end=on_epoch_end, on_batch_end=on_batch_end,
        )  # fmt: skip
    if pg.best_state is not None:
        model.load_state_dict(pg.best_state)
    model.to(memory_format=torch.contiguous_format)
    best_auc = max(
        (r["val_auroc"] for r in pg.history if not math.isnan(r["val_auroc"])),
        default=float("nan"),
    )
    return TrainResult(
        history=pg.history,
        best_epoch=pg.best_epoch,
        best_val_auroc=best_auc,
        seconds=pg.elapsed_before + time.perf_counter() - t0,
        stopped_early=stopped_early,
        resumed_from_epoch=pg.start_epoch,
        extra={"batchnorm_folded": folded},
    )


def _folding(
    model: nn.Module, lp: _Loop, train: PreparedImages, mean: Sequence[float], std: Sequence[float]
) -> contextlib.AbstractContextManager[int]:
    """BatchNorm folded for training (checked on two training images) where it applies: on a CPU,
    ``fold_batchnorm`` on, frozen statistics; a context yielding 0 everywhere else."""
    if not lp.s.fold_batchnorm or lp.device.type != "cpu":
        return contextlib.nullcontext(0)
    x = to_device(train.pixels[:2], lp.device).float().div_(255.0)
    example = to_model_input(x, mean, std)
    if lp.s.channels_last:
        example = example.contiguous(memory_format=torch.channels_last)
    return folded_for_training(model, example)


def _run_epochs(
    model: nn.Module,
    lp: _Loop,
    pg: _Progress,
    train: PreparedImages,
    val: PreparedImages,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    frozen_modules: Sequence[nn.Module],
    regularizer: Callable[[nn.Module], torch.Tensor] | None,
    progress: bool,
    desc: str,
    history_path: str | os.PathLike | None,
    ckpt: Path | None,
    t0: float,
    on_epoch_end: Callable[[dict[str, Any]], None] | None,
    on_batch_end: Callable[[int, int], None] | None,
) -> bool:
    """The epochs from ``pg.start_epoch``: train, validate, record, stop; True when stopped early."""
    s = lp.s
    stopped_early = False
    for epoch in range(pg.start_epoch, s.epochs):
        if s.patience is not None and pg.bad_epochs >= s.patience:
            stopped_early = True
            break
        te = time.perf_counter()
        total_loss, seen = _train_epoch(
            model, lp, train, epoch, mean=mean, std=std, frozen_modules=frozen_modules,
            regularizer=regularizer, first=epoch == pg.start_epoch, progress=progress, desc=desc,
            on_batch_end=on_batch_end,
        )  # fmt: skip
        train_seconds = time.perf_counter() - te
        logits = _validation_logits(model, lp, val, mean, std)
        check_finite_training(total_loss, logits, epoch + 1, lp.opt.param_groups)
        auc = lp.task.headline_auroc(val.labels, lp.task.proba_from_logits(logits))
        vloss = lp.task.mean_loss(logits, val.labels)
        elapsed = pg.elapsed_before + time.perf_counter() - t0
        improved, over_budget = _record_epoch(model, pg, auc, vloss, elapsed, s)
        if improved:
            pg.best_epoch = epoch + 1
        _finish_epoch(
            model, lp, pg, s, epoch, te=te, train_seconds=train_seconds, total_loss=total_loss,
            seen=seen, vloss=vloss, auc=auc, elapsed=elapsed, improved=improved, desc=desc,
            progress=progress, history_path=history_path, ckpt=ckpt, on_epoch_end=on_epoch_end,
        )  # fmt: skip
        if over_budget:
            log.info(
                "%s: time budget of %.1f min reached after epoch %d", desc, s.max_minutes, epoch + 1
            )
            stopped_early = True
            break
    return stopped_early


def _wrap_ddp(model: nn.Module, lp: _Loop) -> None:
    """Wrap ``model`` for distributed data parallel training (``lp.net``)."""
    from torch.nn.parallel import DistributedDataParallel

    # construction broadcasts rank 0's parameters and buffers: every replica starts identical
    lp.net = DistributedDataParallel(
        model, device_ids=[lp.device.index] if lp.device.type == "cuda" else None
    )


def _finish_epoch(
    model: nn.Module,
    lp: _Loop,
    pg: _Progress,
    s: LoopSettings,
    epoch: int,
    *,
    te: float,
    train_seconds: float,
    total_loss: float,
    seen: int,
    vloss: float,
    auc: float,
    elapsed: float,
    improved: bool,
    desc: str,
    progress: bool,
    history_path: str | os.PathLike | None,
    ckpt: Path | None,
    on_epoch_end: Callable[[dict[str, Any]], None] | None,
) -> None:
    """Record the epoch's history row, log it, write history and checkpoint, call back."""
    from tqdm.auto import tqdm

    row = {
        "epoch": epoch + 1,
        "train_loss": total_loss / max(1, seen),
        "val_loss": vloss,
        "val_auroc": auc,
        "seconds": time.perf_counter() - te,
        "train_seconds": train_seconds,
        "images": seen,
        "elapsed": elapsed,
        "lr": [g["lr"] for g in lp.opt.param_groups],
        "best": improved,
    }
    pg.history.append(row)
    log.info(
        "%s epoch %d: train loss %.4f, val AUROC %.4f, %.1fs",
        desc, epoch + 1, row["train_loss"], auc, row["seconds"],
    )  # fmt: skip
    if progress:
        tqdm.write(
            f"{desc} epoch {epoch + 1}/{s.epochs}: train loss {row['train_loss']:.4f}  "
            f"val AUROC {auc:.4f}  ({row['seconds']:.1f}s)",
            file=sys.stderr,  # stdout is for results
        )
    if history_path is not None and distributed.is_main():
        atomic_write_json(history_path, pg.history)
    if ckpt is not None and distributed.is_main():
        _save_checkpoint(ckpt, model, lp, pg, epoch, elapsed)
    if on_epoch_end is not None:
        on_epoch_end(row)


# A batch larger than the training set repeats its images to fill itself (harmless at 32 on 9 images,
# as the advisor's pilots do); beyond this many input bytes it is refused before the first step.
MAX_REPEATED_BATCH_BYTES = 2 * 1024**3


def check_batch_fits(batch_size: int, train: PreparedImages) -> None:
    """Refuse, before any work, a batch larger than the training set whose float32 input alone would
    exceed :data:`MAX_REPEATED_BATCH_BYTES` (``batch_size=100000`` on 80 images: 60 GB at 224 px).
    A config's batch size is checked against its training split earlier
    (:func:`medtl.config.check_batch_sizes`)."""
    from medtl.errors import ConfigError

    n_train = len(train)
    per_image = 4 * int(np.prod(train.pixels.shape[1:])) if n_train else 0
    if n_train and batch_size > n_train and batch_size * per_image > MAX_REPEATED_BATCH_BYTES:
        raise ConfigError(
            f"The 'batch_size' is {batch_size}, larger than the {n_train} training images (one "
            f"batch would need {batch_size * per_image / 1024**3:.0f} GiB): a batch cannot hold "
            f"more images than the training set. Use batch_size <= {n_train} (e.g. "
            f"{min(32, n_train)})."
        )


def check_finite_training(
    loss: float, val_logits: np.ndarray, epoch: int, param_groups: Sequence[dict[str, Any]]
) -> None:
    """Stop when training diverged (training loss or validation outputs NaN or infinite), naming
    the epoch and the fix, instead of failing later in a metric with "Input contains NaN"."""
    if math.isfinite(loss) and np.isfinite(val_logits).all():
        return
    from medtl.errors import ConfigError

    peak = max(
        (float(g.get("max_lr") or g.get("initial_lr") or g.get("lr") or 0) for g in param_groups),
        default=float("nan"),
    )
    what = (
        f"the training loss became {loss}"
        if not math.isfinite(loss)
        else ("the validation outputs became NaN or infinite")
    )
    raise ConfigError(
        f"Training diverged: {what} at epoch {epoch} (peak learning rate {peak:g}): lower the "
        "learning rate ('lr', e.g. 10 times lower) and run again."
    )


def copy_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of a model's state dict."""
    return {k: v.detach().clone().cpu() for k, v in copy.copy(model.state_dict()).items()}

"""Strategies that train the network: fine-tuning, partial fine-tuning, and from scratch (the control).

Fine-tuning options that hold up under distribution shift (see DESIGN.md and issue "LP-FT"):

- ``head_init="probe"`` (LP-FT, Kumar et al. 2022): fit the linear head on frozen features first (reusing
  feature extraction's cached embeddings), then fine-tune every layer from that head.
- ``l2sp`` (Li et al. 2018): penalise the distance of the backbone weights to their pretrained values.
- ``layer_decay``: layer-wise learning-rate decay; each earlier stage learns ``layer_decay`` times slower.
- ``freeze_stages``: the leading backbone stages kept at their pretrained weights (None = the backbone's
  measured default, ``BackboneConfig.fine_tune_frozen``: EfficientNet-Lite keeps its stem and first three
  block stages, which cost ~45% of a CPU training step and hold 1.6% of the weights; 0 = every layer).
- ``augment_strength``: scale of the radiograph augmentation (1 = default, 2 = stronger, 0 = none).
- ``interpolate`` (WiSE-FT, Wortsman et al. 2022): mix the starting (probe) and fine-tuned weights,
  ``(1 - a) * start + a * finetuned``, with ``a`` chosen on the validation split.

Speed: ``micro_batch_size`` is the number of images per forward/backward pass inside one optimiser step
(None = 16 images at 224 px on a CPU while BatchNorm statistics are frozen, as in LP-FT, with freed
memory kept for reuse while training; 0 = the whole batch).
It does not change the step, only how fast it runs.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medtl._options import look_up_option
from medtl.backbones import DEFAULT_BACKBONE
from medtl.data import PreparedImages
from medtl.strategies._base import Strategy, StrategyTags, _build_network, register_strategy
from medtl.tasks import Task, task_for

log = logging.getLogger(__name__)

DEFAULT_ALPHAS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def interpolate_state(
    start: dict[str, torch.Tensor], end: dict[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """Weight-space mix ``(1 - alpha) * start + alpha * end`` (integer buffers are taken from ``end``).

    ``alpha=0`` returns ``start`` and ``alpha=1`` returns ``end`` exactly (no floating-point mixing).
    """
    if alpha == 0.0:
        return {k: v.clone() for k, v in start.items()}
    if alpha == 1.0:
        return {k: v.clone() for k, v in end.items()}
    out = {}
    for k, v in end.items():
        if v.is_floating_point():
            out[k] = torch.lerp(start[k].to(v.device, v.dtype), v, alpha)
        else:
            out[k] = v.clone()
    return out


class _TrainedNetwork(Strategy):
    """Shared implementation: build the network, choose trainable parts and rates, run the loop."""

    pretrained: bool = True

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        image_size: int | None = None,
        epochs: int = 8,
        batch_size: int = 32,
        lr: float | None = None,
        backbone_lr_ratio: float | None = None,
        weight_decay: float = 0.01,
        schedule: str = "onecycle",
        warmup_frac: float = 0.15,
        patience: int | None = 3,
        augment: bool = True,
        augment_strength: float = 1.0,
        hflip: bool = False,
        class_weighting: str = "balanced",
        head_init: str = "probe",
        l2sp: float = 0.0,
        layer_decay: float | None = None,
        freeze_stages: int | None = None,
        interpolate: bool = False,
        freeze_batchnorm: bool | None = None,
        precision: str = "auto",
        device: str = "auto",
        seed: int = 0,
        max_minutes: float | None = None,
        min_steps_per_epoch: int = 10,
        micro_batch_size: int | None = None,
        weights_path: str | None = None,
        allow_download: bool = False,
        cache_dir: str | None = None,
        checkpoint_dir: str | None = None,
        resume: bool = False,
        progress: bool = True,
    ) -> None:
        self.backbone = backbone
        self.image_size = image_size
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.backbone_lr_ratio = backbone_lr_ratio
        self.weight_decay = weight_decay
        self.schedule = schedule
        self.warmup_frac = warmup_frac
        self.patience = patience
        self.augment = augment
        self.augment_strength = augment_strength
        self.hflip = hflip
        self.class_weighting = class_weighting
        self.head_init = head_init
        self.l2sp = l2sp
        self.layer_decay = layer_decay
        self.freeze_stages = freeze_stages
        self.interpolate = interpolate
        self.freeze_batchnorm = freeze_batchnorm
        self.precision = precision
        self.device = device
        self.seed = seed
        self.max_minutes = max_minutes
        self.min_steps_per_epoch = min_steps_per_epoch
        self.micro_batch_size = micro_batch_size
        self.weights_path = weights_path
        self.allow_download = allow_download
        self.cache_dir = cache_dir
        self.checkpoint_dir = checkpoint_dir
        self.resume = resume
        self.progress = progress

    # -- what trains, and how fast ---------------------------------------------------------------------
    def frozen_stages(self, cfg: Any) -> int:
        """How many leading stages of backbone ``cfg`` keep their pretrained weights: ``freeze_stages``,
        or when None the backbone's measured default (``cfg.fine_tune_frozen``)."""
        from medtl.backbones import check_stage_count

        k = cfg.fine_tune_frozen if self.freeze_stages is None else self.freeze_stages
        most = len(cfg.stages) - 1
        return check_stage_count(
            cfg, k, most, "'freeze_stages' parameter", "Use 0 to train every layer."
        )

    def _param_groups(
        self, model: nn.Module, cfg: Any
    ) -> tuple[list[dict[str, Any]], list[nn.Module]]:
        """Head at ``lr``; backbone at ``lr * backbone_lr_ratio`` (times ``layer_decay`` per stage); the
        first :meth:`frozen_stages` stages frozen (no gradient, eval mode: their BatchNorm statistics
        and dropout stay as pretrained, and backpropagation stops where they end)."""
        from medtl.backbones import set_trainable_stages, stage_index

        n_frozen = self.frozen_stages(cfg)
        frozen: list[nn.Module] = []
        if n_frozen:
            frozen = set_trainable_stages(model, cfg, len(cfg.stages) - n_frozen)
        head = model.get_classifier()
        head_ids = {id(p) for p in head.parameters()}
        lr, ratio = self._rates()
        base = lr * ratio
        n = len(cfg.stages)
        by_stage: dict[int, list[nn.Parameter]] = {}
        for name, p in model.named_parameters():
            if id(p) in head_ids or not p.requires_grad:
                continue
            idx = stage_index(name, cfg) if self.layer_decay else n - 1
            by_stage.setdefault(n - 1 if idx is None else idx, []).append(p)
        groups = []
        for idx in sorted(by_stage):
            scale = self.layer_decay ** (n - 1 - idx) if self.layer_decay else 1.0
            groups.append({"params": by_stage[idx], "lr": base * scale, "name": f"stage{idx}"})
        groups.append({"params": list(head.parameters()), "lr": lr, "name": "head"})
        return groups, frozen

    def _rates(self) -> tuple[float, float]:
        """(head learning rate, backbone/head ratio); None picks the recipe's measured defaults.

        LP-FT (head from the probe): 3e-4 and 0.3, i.e. every layer moves gently from a good start.
        Random head: 1e-3 and 0.1 (the head must learn fast, the backbone slowly).
        """
        probe = self.head_init == "probe"
        lr = self.lr if self.lr is not None else (3e-4 if probe else 1e-3)
        ratio = self.backbone_lr_ratio
        if ratio is None:
            ratio = 0.3 if probe else 0.1
        return float(lr), float(ratio)

    def freezes_batchnorm(self) -> bool:
        """LP-FT (the probe head) keeps BatchNorm statistics frozen unless told otherwise."""
        return self._freeze_bn()

    def _freeze_bn(self) -> bool:
        """``freeze_batchnorm`` or, when None, True exactly for LP-FT (``head_init="probe"``)."""
        if self.freeze_batchnorm is None:
            return self.head_init == "probe"
        return bool(self.freeze_batchnorm)

    def _check_params(self) -> None:
        from medtl.errors import ConfigError

        look_up_option("head_init", self.head_init, ["random", "probe"])
        if self.interpolate and self.head_init != "probe":
            raise ConfigError(
                "The 'interpolate' option mixes the linear-probe and fine-tuned weights, so it needs "
                "head_init='probe'. Set head_init: probe (LP-FT) or interpolate: false."
            )
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise ConfigError(
                f"The 'layer_decay' parameter must be in (0, 1]. Got {self.layer_decay!r}."
            )
        if self.l2sp < 0:
            raise ConfigError(f"The 'l2sp' parameter must be >= 0. Got {self.l2sp!r}.")
        if self.augment_strength < 0:
            raise ConfigError(
                f"The 'augment_strength' parameter must be >= 0. Got {self.augment_strength!r}."
            )

    def _linear_probe(self, train: PreparedImages, val: PreparedImages) -> Strategy:
        """LP-FT phase 1: feature extraction on the same backbone (cached embeddings reused).

        The probe's head is fitted on the training images only (``refit=False``): fine-tuning then
        chooses its epoch (and WiSE-FT its mix) on the validation images, which a head refit on
        train + validation would already have seen. (Measured on the NIH multi-label subset with the
        refit head: validation macro AUROC 0.87 after epoch 1 against 0.59 on test.)
        """
        from medtl.strategies._feature_extraction import FeatureExtraction

        probe = FeatureExtraction(
            refit=False,
            backbone=self.backbone,
            class_weighting=self.class_weighting,
            precision=self.precision,
            device=self.device,
            seed=self.seed,
            cache_dir=self.cache_dir,
            weights_path=self.weights_path,
            allow_download=self.allow_download,
            progress=self.progress,
        )
        return probe.fit(train, val)

    def _augment_settings(self) -> Any:
        from medtl.training import AugmentSettings

        k = float(self.augment_strength)
        if not self.augment or k == 0:
            return AugmentSettings(enabled=False)
        d = AugmentSettings()
        return AugmentSettings(
            rotate_deg=d.rotate_deg * k,
            translate=d.translate * k,
            zoom=(1 - (1 - d.zoom[0]) * k, 1 + (d.zoom[1] - 1) * k),
            hflip=bool(self.hflip),
            brightness=d.brightness * k,
            contrast=d.contrast * k,
            gamma=(1 - (1 - d.gamma[0]) * k, 1 + (d.gamma[1] - 1) * k),
            noise_std=0.01 * (k - 1) if k > 1 else 0.0,
        )

    def fit(
        self,
        train: PreparedImages,
        val: PreparedImages,
        *,
        on_epoch_end: Any = None,
        on_batch_end: Any = None,
        history_path: str | Path | None = None,
    ) -> _TrainedNetwork:
        """Train on ``train``, early-stop on ``val`` AUROC, keep the best epoch's weights; returns self."""
        from medtl.training import resolve_device, train_network, val_auroc

        self._check_params()
        self._check_fit_inputs(train, val)
        task = task_for(train.classes, self.task_kind_)
        self.device_ = resolve_device(
            self.device
        )  # resolved once: training, alpha search, prediction
        t0 = time.perf_counter()
        model, cfg, probe_auroc = self._initial_network(train, val)
        model.to(self.device_)  # before the L2-SP anchor and the optimiser see the parameters
        start_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        groups, frozen = self._trainable(model, cfg)
        self.frozen_stage_names_ = list(cfg.stages[: self.frozen_stages(cfg)])
        regularizer = self._l2sp_regularizer(model, start_state) if self.l2sp > 0 else None
        settings = self._loop_settings()
        ckpt = Path(self.checkpoint_dir) / "checkpoint.pt" if self.checkpoint_dir else None
        result = train_network(
            model,
            groups,
            cfg.mean,
            cfg.std,
            train,
            val,
            settings,
            augment=self._augment_settings(),
            frozen_modules=frozen,
            checkpoint_path=ckpt,
            resume=self.resume,
            history_path=history_path,
            progress=self.progress,
            desc=self.name,
            on_epoch_end=on_epoch_end,
            on_batch_end=on_batch_end,
            regularizer=regularizer,
            task=task,
        )
        model.eval()  # stays on self.device_: the alpha search and predictions run there
        self.alpha_ = None
        if self.interpolate:
            self.alpha_, self.interpolation_ = self._choose_alpha(
                model, cfg, start_state, val, task
            )
            log.info("%s: interpolation alpha %.2f chosen on validation", self.name, self.alpha_)
        self.model_ = model
        self.backbone_config_ = cfg
        self.image_size_ = int(train.pixels.shape[-1])
        self.classes_ = list(train.classes)
        self.history_ = result.history
        self.best_epoch_ = result.best_epoch
        self.best_val_auroc_ = (
            float(val_auroc(val.labels, self.predict_proba(val, shard=True), task))
            if self.interpolate
            else result.best_val_auroc
        )
        self.probe_val_auroc_ = probe_auroc
        self.fit_seconds_ = (
            time.perf_counter() - t0 if not result.resumed_from_epoch else result.seconds
        )
        self.epochs_run_ = len(result.history)
        self.stopped_early_ = result.stopped_early
        self.batchnorm_folded_ = int(result.extra.get("batchnorm_folded", 0))
        return self

    def _initial_network(
        self, train: PreparedImages, val: PreparedImages
    ) -> tuple[nn.Module, Any, float | None]:
        """The network training starts from, its config, and the probe's val AUROC (LP-FT only)."""
        if self.head_init == "probe":
            probe = self._linear_probe(train, val)
            model, cfg = probe.model_, probe.backbone_config_
            for p in model.parameters():
                p.requires_grad_(True)
            return model, cfg, probe.best_val_auroc_
        torch.manual_seed(self.seed)  # head initialisation (and from-scratch weights) are seeded
        model, cfg = _build_network(
            self.backbone,
            len(train.classes),
            pretrained=self.pretrained,
            weights_path=self.weights_path,
            allow_download=self.allow_download,
        )
        return model, cfg, None

    def _trainable(
        self, model: nn.Module, cfg: Any
    ) -> tuple[list[dict[str, Any]], list[nn.Module]]:
        """The parameter groups with their learning rates, and the modules kept in eval mode."""
        groups, frozen = self._param_groups(model, cfg)
        if self._freeze_bn():
            # BatchNorm keeps its running statistics (eval mode) while its affine weights still learn:
            # the features at step 0 are exactly those the probe head was fitted on.
            frozen = [
                *frozen,
                *(m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)),
            ]
        return groups, frozen

    def _loop_settings(self) -> Any:
        """The training loop's settings, from this strategy's parameters."""
        from medtl.training import LoopSettings

        return LoopSettings(
            epochs=self.epochs,
            batch_size=self.batch_size,
            weight_decay=self.weight_decay,
            schedule=self.schedule,
            warmup_frac=self.warmup_frac,
            patience=self.patience,
            class_weighting=self.class_weighting,
            precision=self.precision,
            device=self.device,
            seed=self.seed,
            max_minutes=self.max_minutes,
            min_steps_per_epoch=self.min_steps_per_epoch,
            micro_batch_size=self.micro_batch_size,
        )

    def _l2sp_regularizer(self, model: nn.Module, start: dict[str, torch.Tensor]):
        """L2-SP: ``l2sp / 2 * sum ||w - w0||^2`` over the backbone's (not the head's) parameters."""
        head_ids = {id(p) for p in model.get_classifier().parameters()}
        pairs = [
            (p, start[name].to(p.device))
            for name, p in model.named_parameters()
            if id(p) not in head_ids and p.requires_grad
        ]
        alpha = float(self.l2sp)

        def reg(_model: nn.Module) -> torch.Tensor:
            return 0.5 * alpha * sum(((p - p0) ** 2).sum() for p, p0 in pairs)

        return reg

    def _choose_alpha(
        self,
        model: nn.Module,
        cfg: Any,
        start: dict[str, torch.Tensor],
        val: PreparedImages,
        task: Task,
    ) -> tuple[float, list[dict[str, float]]]:
        """WiSE-FT: pick the mixing coefficient with the best validation AUROC (ties -> closer to 0).

        Runs on the estimator's device; in a distributed job each process predicts its share of the
        validation images and every process sees all of them (so all choose the same alpha).
        """
        from medtl import distributed
        from medtl.training import logits_to_proba, predict_logits, val_auroc

        end = {k: v.detach().clone() for k, v in model.state_dict().items()}
        scores = []
        best = (-np.inf, 1.0, end)
        for a in DEFAULT_ALPHAS:
            state = interpolate_state(start, end, a)
            model.load_state_dict(state)
            logits = distributed.map_shards(
                lambda i: predict_logits(
                    model,
                    val.pixels[i],
                    cfg.mean,
                    cfg.std,
                    device=self.device_,
                    precision=self.precision,
                ),
                len(val),
            )
            auc = val_auroc(val.labels, logits_to_proba(logits, task), task)
            scores.append({"alpha": a, "val_auroc": auc})
            if np.nan_to_num(auc, nan=-1.0) > best[0] + 1e-4:
                best = (float(np.nan_to_num(auc, nan=-1.0)), a, state)
        model.load_state_dict(best[2])
        return best[1], scores

    def _extra_state(self) -> dict[str, Any]:
        lr, ratio = self._rates()
        return {
            "alpha": getattr(self, "alpha_", None),
            "interpolation": getattr(self, "interpolation_", None),
            "probe_val_auroc": getattr(self, "probe_val_auroc_", None),
            # convolutions that computed their frozen-statistics BatchNorm while training (CPU speed-up)
            "batchnorm_folded": getattr(self, "batchnorm_folded_", 0),
            # the recipe as it ran (None parameters resolved), for the report's training details
            "recipe": {
                "optimizer": "AdamW",
                "head_lr": lr,
                "backbone_lr": lr * ratio,
                "layer_decay": self.layer_decay,
                "frozen_stages": list(getattr(self, "frozen_stage_names_", [])),
                "weight_decay": self.weight_decay,
                "schedule": self.schedule,
                "warmup_frac": self.warmup_frac,
                "head_init": self.head_init,
                "freeze_batchnorm": self._freeze_bn(),
                "augment": self.augment,
                "augment_strength": self.augment_strength,
                "hflip": self.hflip,
                "early_stopping_patience": self.patience,
            },
        }

    def _restore_extra(self, extra: dict[str, Any]) -> None:
        self.alpha_ = extra.get("alpha")
        self.interpolation_ = extra.get("interpolation")
        self.probe_val_auroc_ = extra.get("probe_val_auroc")
        self.batchnorm_folded_ = int(extra.get("batchnorm_folded") or 0)
        self.frozen_stage_names_ = list((extra.get("recipe") or {}).get("frozen_stages") or [])


@register_strategy
class FineTuning(_TrainedNetwork):
    """Fine-tune the network from ImageNet weights; the backbone learns ``backbone_lr_ratio`` times slower.

    The default recipe is LP-FT: the head starts from the linear probe (feature extraction on the same
    cached embeddings), BatchNorm statistics stay frozen, and every layer then moves at a small rate,
    except the first high-resolution stages where the backbone says so (``freeze_stages``; EfficientNet-
    Lite keeps its stem and first three block stages, 1.6% of the weights, ~45% of a CPU step). On
    the Kermany train -> shifted-test benchmark it beat plain fine-tuning and feature extraction at 200
    and 1000 training images (benchmarks/shift_eval.py). ``head_init="random"`` gives plain fine-tuning.

    Example:
        >>> ft = FineTuning(backbone="efficientnet_lite0.in1k", epochs=5).fit(train, val)
        >>> proba = ft.predict_proba(test)
        >>> lpft = FineTuning(head_init="probe", interpolate=True, cache_dir=".medtl_cache")  # LP-FT + WiSE
    """

    name = "fine_tuning"
    label = "Fine-tuning"
    description = "backbone and head"
    tags = StrategyTags(
        reads_embedding_cache=True,  # LP-FT's probe starts from the cached embeddings
        default=True,
        summary="the network trained from ImageNet weights (its first high-resolution stages kept), "
        "the backbone at a smaller rate",
    )


@register_strategy
class FromScratch(_TrainedNetwork):
    """The control: the same architecture from random weights, every layer at the same rate.

    It shows what transfer buys: on small data it should start lower, rise slower and end lower.
    """

    name = "from_scratch"
    label = "From scratch"
    description = "no pretraining"
    pretrained = False
    tags = StrategyTags(
        pretrained=False,
        default=True,
        control=True,
        summary="a slow control: what pretraining adds",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("lr", 3e-3)
        kwargs.setdefault("backbone_lr_ratio", 1.0)
        kwargs.setdefault("head_init", "random")
        kwargs.setdefault("freeze_stages", 0)  # random layers kept as they are would learn nothing
        super().__init__(*args, **kwargs)

    @classmethod
    def _param_names(cls) -> list[str]:
        return _TrainedNetwork._param_names()

    def _check_params(self) -> None:
        from medtl.errors import ConfigError

        super()._check_params()
        if self.head_init != "random" or self.l2sp or self.freeze_stages:
            raise ConfigError(
                "from_scratch starts from random weights: head_init='probe', l2sp and freeze_stages "
                "do not apply."
            )


@register_strategy
class PartialFineTuning(_TrainedNetwork):
    """The middle ground: freeze the early stages, fine-tune the last ``trainable_stages`` and the head.

    Frozen stages stay in eval mode, so their BatchNorm statistics do not move.
    """

    name = "partial_fine_tuning"
    label = "Partial fine-tuning"
    description = "last stages and head"
    tags = StrategyTags(
        reads_embedding_cache=True,
        summary="only the last stages are trained",
    )

    def __init__(self, *args: Any, trainable_stages: int = 2, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.trainable_stages = trainable_stages

    @classmethod
    def _param_names(cls) -> list[str]:
        return [*_TrainedNetwork._param_names(), "trainable_stages"]

    def frozen_stages(self, cfg: Any) -> int:
        """All stages but the last ``trainable_stages`` (``freeze_stages`` does not apply here)."""
        from medtl.backbones import check_stage_count
        from medtl.errors import ConfigError

        if self.freeze_stages is not None:
            raise ConfigError(
                "partial_fine_tuning says what trains with 'trainable_stages'; leave 'freeze_stages' "
                f"out (got {self.freeze_stages!r})."
            )
        n = len(cfg.stages)
        return n - check_stage_count(cfg, self.trainable_stages, n, "'trainable_stages' parameter")

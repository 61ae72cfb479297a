"""Feature extraction: a frozen ImageNet backbone (eval mode) and a new linear head on its embeddings."""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from medtl._memo import memoized
from medtl._options import look_up_option
from medtl.backbones import DEFAULT_BACKBONE
from medtl.cachekeys import memo_versions
from medtl.data import PreparedImages
from medtl.strategies._base import Strategy, StrategyTags, _build_network, register_strategy
from medtl.strategies._embeddings import EmbeddingCache
from medtl.tasks import task_for

log = logging.getLogger(__name__)

DEFAULT_CS = tuple(float(c) for c in np.logspace(-4, 1, 11))


def _features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.forward_head(model.forward_features(x), pre_logits=True)


def extract_embeddings(
    model: nn.Module,
    cfg: Any,
    pixels: np.ndarray,
    *,
    batch_size: int | None = None,
    precision: str = "auto",
    progress: bool = True,
    desc: str = "extract",
) -> np.ndarray:
    """Pooled backbone features (N, D) for uint8 pixels (N, C, S, S), with the backbone in eval mode.

    Uses channels-last memory and autocast where the hardware benefits; batches are formed from the
    in-memory decoded-image array, so the forward pass is the only real cost. ``batch_size=None`` picks
    a cache-sized batch on a CPU (4 images at 224 px) and 128 on CUDA (see ``micro_batch_size``).
    """
    from tqdm.auto import tqdm

    from medtl.training import autocast_context, fold_batchnorm, to_device, to_model_input

    if len(pixels) == 0:
        return np.zeros((0, cfg.feature_dim), np.float32)
    from medtl.training import micro_batch_size

    device = next(model.parameters()).device
    model.eval()
    if batch_size is None:
        batch_size = micro_batch_size(device, int(pixels.shape[-1]))

    def batch(i: int) -> torch.Tensor:
        xb = to_device(pixels[i : i + batch_size], device)
        xb = to_model_input(xb.float().div_(255.0), cfg.mean, cfg.std)
        return xb.contiguous(memory_format=torch.channels_last)

    # A frozen backbone: fold BatchNorm into the convolutions (checked numerically) and use
    # channels-last memory; both on a copy, outside inference mode, so the model is untouched.
    # Hooks on BatchNorm layers (e.g. the advisor's statistics recorder) must see the real layers:
    # then run the model itself, only switching its memory format for the duration.
    hooked = any(
        m._forward_hooks or m._forward_pre_hooks
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    )
    if hooked:
        net = model
    else:
        net, _ = fold_batchnorm(model, batch(0)[:4])
        net = net if net is not model else copy.deepcopy(model)
    net.to(memory_format=torch.channels_last)
    out = []
    with torch.inference_mode():
        for i in tqdm(
            range(0, len(pixels), batch_size), desc=desc, disable=not progress, leave=False
        ):
            with autocast_context(device, precision):
                out.append(_features(net, batch(i)).float().cpu())
    if hooked:
        model.to(memory_format=torch.contiguous_format)
    return torch.cat(out).numpy() if out else np.zeros((0, cfg.feature_dim), np.float32)


@register_strategy
class FeatureExtraction(Strategy):
    """Freeze the pretrained backbone; fit a regularised linear head on its cached embeddings.

    Args:
        backbone: registered backbone name.
        head: ``"logreg"`` (scikit-learn logistic regression on standardised embeddings, C chosen on the
            validation split; the default) or ``"linear"`` (a linear layer trained with AdamW and early
            stopping on validation AUROC).
        Cs: inverse regularisation strengths tried by ``"logreg"``.
        select_by: how ``"logreg"`` picks C on validation: ``"log_loss_1se"`` (the default: the
            strongest regularisation whose class-weighted validation log-loss is within one standard
            error of the best), ``"log_loss"`` (the best log-loss) or ``"auroc"`` (the best AUROC;
            unreliable once validation AUROC saturates near 1).
        cache_dir: where embeddings are cached by content (None = no cache).
        refit: after C is chosen on validation, refit the ``"logreg"`` head with that C on train +
            validation (the usual practice; on 1,000 Kermany images it is the difference to a plain
            script that trains on every image). The validation predictions kept for choosing the
            operating point and for the reported validation AUROC are those of the train-only head
            (``heldout_val_proba_``): never in-sample.

    Example:
        >>> fe = FeatureExtraction(backbone="efficientnet_lite0.in1k").fit(train, val)
        >>> fe.predict_proba(test)[:, 1]
    """

    name = "feature_extraction"
    label = "Feature extraction"
    description = "frozen backbone"
    tags = StrategyTags(
        trains_in_epochs=False,
        freezes_batchnorm=True,
        reads_embedding_cache=True,
        default=True,
        summary="one pass of the images through the frozen network, then a classifier fitted on "
        "its features (no epochs)",
    )

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        image_size: int | None = None,
        head: str = "logreg",
        Cs: tuple[float, ...] | list[float] = DEFAULT_CS,
        class_weighting: str = "balanced",
        select_by: str = "log_loss_1se",
        batch_size: int | None = None,
        precision: str = "auto",
        device: str = "auto",
        seed: int = 0,
        cache_dir: str | None = None,
        weights_path: str | None = None,
        allow_download: bool = False,
        progress: bool = True,
        refit: bool = True,
    ) -> None:
        self.backbone = backbone
        self.image_size = image_size
        self.head = head
        self.Cs = Cs
        self.class_weighting = class_weighting
        self.select_by = select_by
        self.batch_size = batch_size
        self.precision = precision
        self.device = device
        self.seed = seed
        self.cache_dir = cache_dir
        self.weights_path = weights_path
        self.allow_download = allow_download
        self.progress = progress
        self.refit = refit

    def get_params(self) -> dict[str, Any]:
        params = super().get_params()
        params["Cs"] = [float(c) for c in params["Cs"]]
        return params

    # -- embeddings ------------------------------------------------------------------------------------
    def embed(
        self,
        images: PreparedImages,
        model: nn.Module,
        cfg: Any,
        desc: str,
        *,
        progress: bool | None = None,
        collective: bool = True,
        use_cache: bool = True,
    ) -> np.ndarray:
        """Embeddings of ``images``, from the content-keyed cache where possible.

        In a distributed job with ``collective`` (every process calls it with the same images) each
        process embeds its contiguous share of the images to compute and every process gets all of
        them, in order; only rank 0 writes the cache. ``collective=False`` embeds everything here.
        ``use_cache=False`` (images without content keys) neither reads nor writes the cache.
        """
        from medtl import distributed

        show = self.progress if progress is None else progress

        def compute_here(idx: np.ndarray) -> np.ndarray:
            return extract_embeddings(
                model,
                cfg,
                images.pixels[idx],
                batch_size=self.batch_size,
                precision=self.precision,
                progress=show and distributed.is_main(),
                desc=desc,
            )

        def compute(idx: np.ndarray) -> np.ndarray:
            if distributed.world_size() == 1 or not collective:
                return compute_here(idx)
            out = distributed.map_shards(lambda j: compute_here(idx[j]), len(idx))
            return out if len(out) else np.zeros((0, cfg.feature_dim), np.float32)

        if self.cache_dir is None or not use_cache:
            return compute(np.arange(len(images)))
        if getattr(self, "adaptation_", None) is not None:
            # AdaBN re-estimated the BatchNorm statistics: the weights are no longer the pretrained
            # file's, so the cache is keyed by the tensors themselves (else the pretrained
            # backbone's cached embeddings would be served for the adapted one)
            cfg = dataclasses.replace(cfg, weights_sha256=None)
        key = self._embedding_key(model, cfg, images.pixels.shape)
        cache = EmbeddingCache(self.cache_dir, key, write=distributed.is_main())
        emb, n_new = cache.get_or_compute(images.keys, compute, collective=collective)
        log.info(
            "%s: %d embeddings, %d computed, %d from cache", desc, len(emb), n_new, len(emb) - n_new
        )
        self.cache_hits_ = getattr(self, "cache_hits_", 0) + len(emb) - n_new
        return emb

    def _embedding_key(self, model: nn.Module, cfg: Any, shape: tuple[int, ...]) -> dict[str, Any]:
        """Everything that changes an embedding of these pixels (``medtl.cachekeys``): the backbone
        and its weights, size, channels, and the precision, device kind and pass size this
        estimator's extraction actually uses."""
        from medtl.backbones import backbone_fingerprint
        from medtl.cachekeys import device_kind, embedding_key_parts
        from medtl.training import inference_precision, micro_batch_size

        device = next(model.parameters()).device
        size = int(shape[-1])
        return embedding_key_parts(
            backbone_name=cfg.name,
            backbone_fingerprint=backbone_fingerprint(cfg, model),
            image_size=size,
            channels=int(shape[1]),
            precision=inference_precision(device, self.precision),
            device_kind=device_kind(device),
            pass_size=self.batch_size or micro_batch_size(device, size),
        )

    # -- fitting ---------------------------------------------------------------------------------------
    def fit(self, train: PreparedImages, val: PreparedImages, **_: Any) -> FeatureExtraction:
        """Embed train and val once (cached), fit the head on train, choose regularisation on val,
        then (``refit``) refit the chosen head on train + val."""
        from medtl.training import logits_to_proba, val_auroc

        look_up_option("head", self.head, ["logreg", "linear"])
        look_up_option("select_by", self.select_by, ["log_loss_1se", "log_loss", "auroc"])
        self._check_fit_inputs(train, val)
        task = task_for(train.classes, self.task_kind_)
        # several findings per image: one logistic head per finding (labels (N, K), NaN = not
        # labelled; each head drops its finding's unlabelled rows), all on the same embeddings
        per_finding = np.asarray(train.labels).ndim == 2
        from medtl.training import resolve_device

        self.device_ = resolve_device(self.device)
        t0 = time.perf_counter()
        torch.manual_seed(self.seed)
        n_classes = len(train.classes)
        model, cfg = _build_network(
            self.backbone,
            n_classes,
            pretrained=True,
            weights_path=self.weights_path,
            allow_download=self.allow_download,
        )
        for p in model.parameters():
            p.requires_grad_(False)
        model.eval()
        model.to(self.device_)  # embeddings are computed on the estimator's device
        self.cache_hits_ = 0
        te = time.perf_counter()
        f_tr = self.embed(train, model, cfg, "embed train")
        f_va = self.embed(val, model, cfg, "embed val")
        self.extract_seconds_ = time.perf_counter() - te
        mu = f_tr.mean(0)
        sd = f_tr.std(0) + 1e-6
        z_tr, z_va = (f_tr - mu) / sd, (f_va - mu) / sd
        if self.head == "logreg" and per_finding:
            W, b, history = self._fit_logreg_per_finding(z_tr, train.labels, z_va, val.labels)
        elif self.head == "logreg":
            W, b, history = self._fit_logreg(z_tr, train.labels, z_va, val.labels, n_classes)
        else:
            W, b, history = self._fit_linear(z_tr, train.labels, z_va, val.labels, n_classes, task)
        # held out: the train-only head's validation predictions (operating point, val AUROC)
        self.heldout_val_proba_ = logits_to_proba(z_va @ W.T + b, task)
        self.best_val_auroc_ = float(val_auroc(val.labels, self.heldout_val_proba_, task))
        self.refit_on_ = "train"
        if self.refit and self.head == "logreg":
            f_all = np.concatenate([f_tr, f_va])
            y_all = np.concatenate([train.labels, val.labels])
            mu, sd = f_all.mean(0), f_all.std(0) + 1e-6
            if per_finding:
                W, b = self._refit_per_finding((f_all - mu) / sd, y_all)
            else:
                W, b = self._logreg_head((f_all - mu) / sd, y_all, self.C_, n_classes)
            self.refit_on_ = "train+val"
        # fold the standardisation into the linear head: W (f - mu)/sd + b
        W_f = W / sd[None, :]
        b_f = b - (W_f * mu[None, :]).sum(1)
        clf = model.get_classifier()
        with torch.no_grad():
            clf.weight.copy_(torch.from_numpy(W_f.astype(np.float32)))
            clf.bias.copy_(torch.from_numpy(b_f.astype(np.float32)))
        self.model_ = model
        self.backbone_config_ = cfg
        self.image_size_ = int(train.pixels.shape[-1])
        self.classes_ = list(train.classes)
        self.history_ = history
        best = next((r for r in history if r.get("chosen")), None) or max(
            history, key=lambda r: np.nan_to_num(r["val_auroc"], nan=-1.0)
        )
        self.best_epoch_ = int(best["epoch"])
        self.epochs_run_ = len(history)
        self.fit_seconds_ = time.perf_counter() - t0
        return self

    def _fit_logreg(self, z_tr, y_tr, z_va, y_va, n_classes):
        """The regularisation path on train, C chosen on val (memoised under ``cache_dir``)."""
        W, b, history, self.C_ = memoized(_logreg_path, self.cache_dir)(
            z_tr, np.asarray(y_tr), z_va, np.asarray(y_va), n_classes,
            tuple(sorted(float(c) for c in self.Cs)), self.class_weighting, self.select_by,
            self.seed, _head_versions(),
        )  # fmt: skip
        return W, b, history

    def _logreg_head(
        self, z: np.ndarray, y: np.ndarray, C: float, n_classes: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """One logistic-regression head at a fixed C (the refit), as (W, b) over all classes."""
        return memoized(_logreg_refit, self.cache_dir)(
            z, np.asarray(y), float(C), n_classes, self.class_weighting, self.seed,
            _head_versions(),
        )  # fmt: skip

    def _fit_logreg_per_finding(
        self, z_tr: np.ndarray, y_tr: np.ndarray, z_va: np.ndarray, y_va: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
        """One logistic head per finding, each on its finding's labelled rows, its C chosen on its
        labelled validation rows (``C_`` becomes a dict finding -> C). The history row of each C
        carries the mean over findings of their validation AUROC and loss at that C; the row
        marked chosen is the median of the findings' choices."""
        import warnings

        y_tr, y_va = np.asarray(y_tr, np.float64), np.asarray(y_va, np.float64)
        # every finding's rows are among the training rows: one basis of their span serves all
        # heads (exact, see row_span_basis), computed once instead of once per finding
        basis = row_span_basis(z_tr)
        if basis is not None:
            z_tr, z_va = z_tr @ basis, z_va @ basis
        k, d = y_tr.shape[1], z_tr.shape[1]
        W, b = np.zeros((k, d)), np.zeros(k)
        Cs = tuple(sorted(float(c) for c in self.Cs))
        paths, picks, self.C_ = [], [], {}
        for j in range(k):
            lt, lv = ~np.isnan(y_tr[:, j]), ~np.isnan(y_va[:, j])
            yt = y_tr[lt, j].astype(np.int64)
            if len(np.unique(yt)) < 2:  # nothing to learn: the labelled prevalence, no slope
                b[j] = _logit(float(np.mean(yt)) if len(yt) else 0.5)
                self.C_[str(j)] = None
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                Wj, bj, hist, C = memoized(_logreg_path, self.cache_dir)(
                    z_tr[lt], yt, z_va[lv], y_va[lv, j].astype(np.int64), 2, Cs,
                    self.class_weighting, self.select_by, self.seed,
                    _head_versions(),
                )  # fmt: skip
            W[j], b[j] = Wj[1] - Wj[0], bj[1] - bj[0]
            self.C_[str(j)] = C
            paths.append(hist)
            picks.append(next(i for i, r in enumerate(hist) if r.get("chosen")))
        history = []
        for i, C in enumerate(Cs):
            rows = [p[i] for p in paths]
            history.append(
                {
                    "epoch": i + 1,
                    "C": C,
                    "val_auroc": _nanmean([r["val_auroc"] for r in rows]),
                    "val_loss": _nanmean([r["val_loss"] for r in rows]),
                    "elapsed": max((r["elapsed"] for r in rows), default=0.0),
                }
            )
        if history:
            history[int(np.median(picks)) if picks else 0]["chosen"] = True
        return (W if basis is None else W @ basis.T), b, history

    def _refit_per_finding(self, z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The per-finding heads refitted on train + validation at their chosen C."""
        y = np.asarray(y, np.float64)
        basis = row_span_basis(
            z
        )  # one basis for every finding's heads (see _fit_logreg_per_finding)
        if basis is not None:
            z = z @ basis
        W, b = np.zeros((y.shape[1], z.shape[1])), np.zeros(y.shape[1])
        for j in range(y.shape[1]):
            lab = ~np.isnan(y[:, j])
            yj = y[lab, j].astype(np.int64)
            C = self.C_.get(str(j))
            if C is None or len(np.unique(yj)) < 2:
                b[j] = _logit(float(np.mean(yj)) if len(yj) else 0.5)
                continue
            Wj, bj = self._logreg_head(z[lab], yj, C, 2)
            W[j], b[j] = Wj[1] - Wj[0], bj[1] - bj[0]
        return (W if basis is None else W @ basis.T), b

    def _fit_linear(
        self, z_tr, y_tr, z_va, y_va, n_classes, task, epochs: int = 200, patience: int = 20
    ):
        from medtl.training import logits_to_proba, val_auroc

        g = torch.Generator().manual_seed(self.seed)
        lin = nn.Linear(z_tr.shape[1], n_classes)
        nn.init.zeros_(lin.weight)
        nn.init.zeros_(lin.bias)
        opt = torch.optim.AdamW(lin.parameters(), lr=1e-2, weight_decay=1e-2)
        # the task's loss (class-balanced cross-entropy; masked BCE for several findings)
        loss_fn = task.loss(task.class_weights(y_tr))
        xt, yt = torch.from_numpy(z_tr).float(), torch.from_numpy(y_tr)
        xv = torch.from_numpy(z_va).float()
        history, best, bad = [], (-1.0, None), 0
        t0 = time.perf_counter()
        for ep in range(epochs):
            perm = torch.randperm(len(xt), generator=g)
            for i in range(0, len(xt), 64):
                idx = perm[i : i + 64]
                loss = loss_fn(lin(xt[idx]), yt[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            with torch.no_grad():
                auc = val_auroc(y_va, logits_to_proba(lin(xv), task), task)
            history.append({"epoch": ep + 1, "val_auroc": auc, "elapsed": time.perf_counter() - t0})
            if np.nan_to_num(auc, nan=-1) > best[0] + 1e-6:
                best = (
                    float(np.nan_to_num(auc, nan=-1)),
                    {k: v.clone() for k, v in lin.state_dict().items()},
                )
                bad = 0
            else:
                bad += 1
                if bad >= patience:
                    break
        lin.load_state_dict(best[1])
        return lin.weight.detach().double().numpy(), lin.bias.detach().double().numpy(), history

    # -- prediction ----------------------------------------------------------------------------------
    def predict_logits(
        self, images: PreparedImages | np.ndarray, *, progress: bool = False, shard: bool = False
    ) -> np.ndarray:
        """Logits (N, K, float64): the head applied to the backbone's embeddings.

        The embeddings come from the same extraction as :meth:`fit` (BatchNorm folded, one function
        for both) and the same content-keyed cache, so the test images of a re-run with warm caches
        never go through the network again, and a prediction equals the one made at training time.
        ``shard``: a collective in a distributed job (see :meth:`Strategy.predict_logits`).
        """
        self._check_fitted()
        px = self._pixels(images)
        if not isinstance(images, PreparedImages):  # a bare array: no content keys, no cache
            images = PreparedImages(
                pixels=px, labels=np.full(len(px), -1), uids=[], keys=[], classes=self.classes_
            )
        self._device  # noqa: B018 (moves the model to the estimator's device)
        emb = self.embed(
            images, self.model_, self.backbone_config_, "predict", progress=progress,
            collective=shard, use_cache=bool(images.keys),
        )  # fmt: skip
        clf = self.model_.get_classifier()
        W = clf.weight.detach().cpu().double().numpy()
        b = clf.bias.detach().cpu().double().numpy()
        return emb.astype(np.float64) @ W.T + b

    def _extra_state(self) -> dict[str, Any]:
        return {
            "C": getattr(self, "C_", None),  # a dict finding index -> C for several findings
            "head_fitted_on": getattr(self, "refit_on_", "train"),
            "extract_seconds": getattr(self, "extract_seconds_", None),
            "cache_hits": getattr(self, "cache_hits_", 0),
        }

    def _restore_extra(self, extra: dict[str, Any]) -> None:
        self.C_ = extra.get("C")
        self.refit_on_ = extra.get("head_fitted_on", "train")
        self.extract_seconds_ = extra.get("extract_seconds")
        self.cache_hits_ = int(extra.get("cache_hits") or 0)


def _logreg_path(
    z_tr: np.ndarray,
    y_tr: np.ndarray,
    z_va: np.ndarray,
    y_va: np.ndarray,
    n_classes: int,
    Cs: tuple[float, ...],
    class_weighting: str | None,
    select_by: str,
    seed: int,
    versions: tuple[str, ...],
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]], float]:
    """Logistic heads along ``Cs`` (ascending) on train; (W, b, history, C) of the one chosen on val.

    A pure function of its arguments (memoised by :meth:`FeatureExtraction._fit_logreg`; ``versions``
    only keys the memo). The history's ``elapsed`` is the time of the fit that computed it.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.utils.class_weight import compute_sample_weight

    from medtl.training import val_auroc

    cw = "balanced" if class_weighting == "balanced" else None
    # The regularisation is chosen by the validation log-loss (weighted like the training loss)
    # rather than the AUROC: a proper scoring rule keeps discriminating when in-distribution
    # validation AUROC saturates (0.997 on Kermany for every C from 3e-3 to 10). With the
    # one-standard-error rule (Breiman et al. 1984; glmnet's lambda.1se) the strongest
    # regularisation whose loss is within one standard error of the best is taken: validation
    # cannot tell those apart, and the simpler head transfers better to shifted data.
    w_va = compute_sample_weight(cw, y_va) if cw else np.ones(len(y_va))
    # fewer images than features: fit in the span of the training rows (exact, see row_span_basis)
    basis = row_span_basis(z_tr)
    if basis is not None:
        z_tr, z_va = z_tr @ basis, z_va @ basis
    history, fits = [], []
    t0 = time.perf_counter()
    # Walk the regularisation path from strong to weak with warm starts: each fit starts from the
    # previous solution, so the whole path costs little more than one fit.
    clf = LogisticRegression(class_weight=cw, max_iter=2000, warm_start=True, random_state=seed)
    for i, C in enumerate(Cs):
        clf.set_params(C=C)
        clf.fit(z_tr, y_tr)
        proba = clf.predict_proba(z_va)
        auc = val_auroc(y_va, proba)
        col = np.searchsorted(clf.classes_, y_va)
        per_sample = -np.log(np.clip(proba[np.arange(len(y_va)), col], 1e-15, 1.0))
        loss = float(np.sum(w_va * per_sample) / np.sum(w_va))
        se = float(np.sqrt(np.sum(w_va**2 * (per_sample - loss) ** 2)) / np.sum(w_va))
        history.append(
            {
                "epoch": i + 1,
                "C": C,
                "val_auroc": auc,
                "val_loss": loss,
                "val_loss_se": se,
                "elapsed": time.perf_counter() - t0,
            }
        )
        fits.append((clf.coef_.copy(), clf.intercept_.copy()))
    pick = _choose_regularisation(history, select_by)
    history[pick]["chosen"] = True
    coef, intercept = fits[pick]
    if basis is not None:
        coef = coef @ basis.T
    W, b = _as_head(coef, intercept, n_classes)
    return W, b, history, float(history[pick]["C"])


def _logreg_refit(
    z: np.ndarray,
    y: np.ndarray,
    C: float,
    n_classes: int,
    class_weighting: str | None,
    seed: int,
    versions: tuple[str, ...],
) -> tuple[np.ndarray, np.ndarray]:
    """One logistic-regression head at a fixed C as (W, b) over all classes. Pure (memoised)."""
    from sklearn.linear_model import LogisticRegression

    cw = "balanced" if class_weighting == "balanced" else None
    clf = LogisticRegression(C=C, class_weight=cw, max_iter=2000, random_state=seed)
    basis = row_span_basis(z)
    clf.fit(z if basis is None else z @ basis, y)
    coef = clf.coef_ if basis is None else clf.coef_ @ basis.T
    return _as_head(coef, clf.intercept_, n_classes)


def row_span_basis(z: np.ndarray) -> np.ndarray | None:
    """An orthonormal basis (d, r) of the span of the rows of ``z`` when there are fewer rows than
    columns (None otherwise).

    An L2-penalised logistic regression's weights lie in the span of its training rows (the
    gradient of the data term is ``z.T @ r`` and the optimum sets ``w = -C z.T @ r``), so fitting on
    ``z @ basis`` (n columns instead of d) and mapping the weights back with ``basis.T`` gives the
    same head up to the solver's tolerance, at a fraction of the cost: 418 NIH images against
    1280 Lite0 features fit 14 findings' regularisation paths ~3x faster. Hand-written because
    scikit-learn's lbfgs solver works in the original d dimensions.
    """
    n, d = z.shape
    if n >= d:
        return None
    # QR of z.T: n orthonormal columns spanning (at least) the rows; half the cost of an SVD
    q, _ = np.linalg.qr(np.asarray(z, dtype=np.float64).T)
    return q


def _head_versions() -> tuple[str, ...]:
    """The memo key's versions of the logistic heads: libraries and the medtl helpers they call."""
    from medtl.tasks import BinaryTask, MultiClassTask
    from medtl.training import val_auroc

    # the validation AUROC that chooses C is the task's headline AUROC (medtl.tasks)
    helpers = [_as_head, _choose_regularisation, row_span_basis, val_auroc]
    helpers += [BinaryTask.headline_auroc, MultiClassTask.headline_auroc]
    return memo_versions(["scikit-learn", "numpy"], helpers)


def _as_head(
    coef: np.ndarray, intercept: np.ndarray, n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's binary (1, D) coefficients as a two-row head; multi-class ones as they are."""
    if n_classes == 2:
        W = np.vstack([np.zeros_like(coef[0]), coef[0]])
        b = np.array([0.0, intercept[0]])
    else:
        W, b = coef, intercept
    return W.astype(np.float64), b.astype(np.float64)


def _choose_regularisation(history: list[dict[str, Any]], select_by: str) -> int:
    """Index of the chosen row of a regularisation path ordered from strong to weak."""
    if select_by == "auroc":
        aucs = [np.nan_to_num(r["val_auroc"], nan=-1.0) for r in history]
        return int(np.argmax(aucs))  # first maximum: the strongest regularisation among ties
    losses = np.array([r["val_loss"] for r in history])
    best = int(np.argmin(losses))
    if select_by == "log_loss":
        return best
    limit = losses[best] + history[best]["val_loss_se"]
    return int(np.flatnonzero(losses <= limit)[0])  # strongest within one standard error


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return float(np.log(p / (1 - p)))


def _nanmean(values: list[float]) -> float:
    v = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")


__all__ = ["FeatureExtraction", "extract_embeddings"]

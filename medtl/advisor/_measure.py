"""Cheap measurements behind the advice: BatchNorm divergence, ImageNet entropy, probes, timing.

Each function is small and pure enough to test on its own; ``_profile.py`` runs them on one dataset.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from medtl.strategies import FineTuning, PartialFineTuning

#: the strategies the advisor compares, named by their classes (the registry owns the names)
FT = FineTuning.name
PFT = PartialFineTuning.name

# -- domain gap: BatchNorm statistics ---------------------------------------------------------------


@dataclass
class _LayerAcc:
    n: int = 0
    images: int = 0
    s: np.ndarray | None = None
    ss: np.ndarray | None = None


@dataclass
class BNStatsRecorder:
    """Forward hooks that accumulate per-channel mean/variance of every BatchNorm layer's *input*.

    The pretrained network's running statistics describe ImageNet activations; comparing them with the
    target images' activations measures the domain gap with no labels and no extra forward pass (the
    hooks ride along with the embedding extraction).

    Example:
        >>> rec = BNStatsRecorder(model).attach()
        >>> extract_embeddings(model, cfg, pixels)
        >>> rec.detach(); rec.divergence()["kl"]
    """

    model: nn.Module
    layers: dict[str, nn.modules.batchnorm._BatchNorm] = field(default_factory=dict)
    _acc: dict[str, _LayerAcc] = field(default_factory=dict)
    _handles: list[Any] = field(default_factory=list)

    def attach(self) -> BNStatsRecorder:
        for name, m in self.model.named_modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                self.layers[name] = m
                self._acc[name] = _LayerAcc()
                self._handles.append(m.register_forward_hook(self._hook(name)))
        return self

    def _hook(self, name: str):
        def hook(_m: nn.Module, inputs: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
            x = inputs[0].detach().float()
            dims = [0, *range(2, x.ndim)]
            acc = self._acc[name]
            s = x.sum(dim=dims).double().cpu().numpy()
            ss = (x * x).sum(dim=dims).double().cpu().numpy()
            acc.n += int(x.numel() // x.shape[1])
            acc.images += int(x.shape[0])
            acc.s = s if acc.s is None else acc.s + s
            acc.ss = ss if acc.ss is None else acc.ss + ss

        return hook

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    @property
    def images_seen(self) -> int:
        """Images that went through the first BN layer while attached (0 when none has a BN layer)."""
        return max((a.images for a in self._acc.values()), default=0)

    def divergence(self) -> dict[str, float | int | None]:
        """Mean over layers of the per-layer median channel KL(target || ImageNet) and mean shift.

        Per channel (Gaussian approximation): ``KL = 0.5 * (log(v_s / v_t) + (v_t + (m_t - m_s)^2) / v_s
        - 1)``; the standardised mean shift is ``|m_t - m_s| / sqrt(v_s)``. The median over channels
        keeps a few dead channels (v_t near 0) from dominating.
        """
        kls, shifts = [], []
        for name, m in self.layers.items():
            acc = self._acc[name]
            if acc.n == 0 or acc.s is None:
                continue
            mt = acc.s / acc.n
            vt = np.maximum(acc.ss / acc.n - mt**2, 0.0)
            ms = m.running_mean.detach().double().cpu().numpy()
            vs = m.running_var.detach().double().cpu().numpy() + float(m.eps)
            vt = np.maximum(vt, 1e-3 * vs)
            kl = 0.5 * (np.log(vs / vt) + (vt + (mt - ms) ** 2) / vs - 1.0)
            kls.append(float(np.median(kl)))
            shifts.append(float(np.median(np.abs(mt - ms) / np.sqrt(vs))))
        if not kls:
            return {"kl": None, "mean_shift": None, "layers": 0}
        return {"kl": float(np.mean(kls)), "mean_shift": float(np.mean(shifts)), "layers": len(kls)}


def imagenet_entropy(model: nn.Module, embeddings: np.ndarray) -> float | None:
    """Mean normalised entropy (0..1) of the 1000-way ImageNet classifier on pooled features.

    High entropy: the images look like no ImageNet class (a sign of a large domain gap). None when the
    model's classifier is not 1000-way.
    """
    head = model.get_classifier()
    if not isinstance(head, nn.Linear) or head.out_features != 1000 or len(embeddings) == 0:
        return None
    with torch.no_grad():
        logits = head(torch.from_numpy(np.asarray(embeddings, dtype=np.float32)))
        logp = torch.log_softmax(logits.double(), dim=1)
        ent = -(logp.exp() * logp).sum(1) / math.log(1000)
    return float(ent.mean())


def group_codes(groups: Sequence[str | None]) -> np.ndarray:
    """Integer group per image, numbered in order of first appearance (an image without an id is its
    own group). Patient ids are salted hashes, so their sorted order - what scikit-learn's grouped
    splitters shuffle - differs between projects; numbering by appearance (files are listed in sorted
    path order) keeps the advisor's folds, and so its advice, the same for the same files and seed."""
    codes: dict[str, int] = {}
    return np.array(
        [codes.setdefault(gid if gid else f"\0{i}", len(codes)) for i, gid in enumerate(groups)]
    )


# -- adaptability: where the target task's gradient falls --------------------------------------------

# images of the one backward pass, evenly spaced over the profiled images (listed by class folder, so
# the classes come in about their proportions)
GRAD_IMAGES = 64


def gradient_early_share(
    model: nn.Module,
    cfg: Any,
    pixels: np.ndarray,
    y: np.ndarray,
    emb: np.ndarray,
    *,
    C: float = 0.1,
    seed: int = 0,
    task: Any = None,
) -> dict[str, Any]:
    """Share of the target task's relative gradient that falls in the first half of the backbone.

    A gradient-based adaptability signal in the spirit of Juodelyte et al. (2024, "On dataset
    transferability in medical image classification", which pairs feature quality with gradients), not
    their exact metric: a logistic head is fitted on the frozen embeddings ``emb`` (standardised, as the
    probe), put on the network (BatchNorm statistics frozen, as the default LP-FT recipe trains), and
    one backward pass of its cross-entropy on ``pixels`` gives each stage's relative gradient
    ``||dL/dW|| / ||W||``. ``early_share`` is the first half's sum over all stages' sum: high when the
    task's error pulls on low-level features that feature extraction cannot change. Descriptive only:
    reported in the profile, never voted. ``model`` is not changed. Several findings per image
    (``y`` (N, K) with NaN = not labelled): one logistic head per finding and the task's masked
    binary cross-entropy (``task``, a :class:`medtl.tasks.Task`; default from ``y``).

    Returns:
        ``{"early_share": float, "per_stage": [relative gradient per stage], "images": int}``;
        ``early_share`` is None when the backbone has fewer than 2 stages.
    """

    from medtl.training import micro_batch_size, to_model_input

    stages = list(getattr(cfg, "stages", ()) or ())
    multilabel = np.asarray(y).ndim == 2  # (N, K) targets of several findings per image
    if len(stages) < 2 or (not multilabel and len(np.unique(y)) < 2):
        return {"early_share": None, "per_stage": [], "images": 0}
    head_params = _probe_head(emb, y, C, seed, multilabel)
    if head_params is None:
        return {"early_share": None, "per_stage": [], "images": 0}
    coef, bias = head_params
    net = copy.deepcopy(model).eval()  # eval: BatchNorm statistics frozen, as LP-FT trains
    device = next(net.parameters()).device
    for p in net.parameters():
        p.requires_grad_(True)
    head = nn.Linear(coef.shape[1], coef.shape[0]).to(device)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(coef).float())
        head.bias.copy_(torch.from_numpy(bias).float())
    idx = np.arange(len(y))
    if len(idx) > GRAD_IMAGES:
        idx = idx[np.linspace(0, len(idx) - 1, GRAD_IMAGES).round().astype(int)]
    x = torch.from_numpy(np.ascontiguousarray(pixels[idx])).to(device).float().div_(255.0)
    x = to_model_input(x, cfg.mean, cfg.std)
    target = torch.from_numpy(np.asarray(y)[idx]).to(device)
    if not multilabel:
        target = target.long()
    if task is None:
        from medtl.tasks import MultiLabelTask, task_for

        names = [str(k) for k in range(coef.shape[0])]
        task = task_for(names, MultiLabelTask.kind if multilabel else None)
    # the task's own loss: cross-entropy, or the masked binary cross-entropy of several findings
    loss_fn = task.loss(reduction="sum")
    # cache-sized channels-last passes, gradients summed (BatchNorm frozen: equal to one whole pass,
    # and ~8x faster on a CPU than 64 images of 224 px at once)
    net.to(memory_format=torch.channels_last)
    per_pass = micro_batch_size(device, int(pixels.shape[-1]))
    for i in range(0, len(idx), per_pass):
        xb = x[i : i + per_pass].contiguous(memory_format=torch.channels_last)
        feats = net.forward_head(net.forward_features(xb), pre_logits=True)
        loss = loss_fn(head(feats), target[i : i + per_pass])
        (loss / len(idx)).backward()
    rel = _stage_relative_gradients(net, cfg, len(stages))
    half = len(stages) // 2
    total = float(rel.sum())
    share = float(rel[:half].sum() / total) if total > 0 else None
    return {"early_share": share, "per_stage": [float(v) for v in rel], "images": len(idx)}


def _probe_head(
    emb: np.ndarray, y: np.ndarray, C: float, seed: int, multilabel: bool
) -> tuple[np.ndarray, np.ndarray] | None:
    """The probe's logistic head on standardised embeddings, the scaler folded in, as (coef, bias)
    over the network's outputs (binary: logits [0, z]); None when no finding can be learned."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    sc = StandardScaler().fit(emb)

    def logreg(z: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf = LogisticRegression(
                C=C, max_iter=1000, class_weight="balanced", random_state=seed
            ).fit(z, t)
        return clf.coef_, clf.intercept_

    z = sc.transform(emb)
    if multilabel:  # one logistic head per finding on its labelled images (as feature extraction)
        yf = np.asarray(y, dtype=np.float64)
        coef, bias = np.zeros((yf.shape[1], emb.shape[1])), np.zeros(yf.shape[1])
        for k in range(yf.shape[1]):
            rows = ~np.isnan(yf[:, k])
            if len(np.unique(yf[rows, k])) == 2:
                (coef[k],), (bias[k],) = logreg(z[rows], yf[rows, k].astype(np.int64))
        if not coef.any():
            return None
    else:
        coef, bias = logreg(z, y)
    coef = coef / sc.scale_  # fold the scaler into the head: (x - mu) / s . w
    bias = bias - coef @ sc.mean_
    if not multilabel and coef.shape[0] == 1:  # binary: logits [0, z]
        coef = np.vstack([np.zeros_like(coef), coef])
        bias = np.r_[0.0, bias]
    return coef, bias


def _stage_relative_gradients(net: nn.Module, cfg: Any, n_stages: int) -> np.ndarray:
    """Each stage's relative gradient ``||dL/dW|| / ||W||`` after the backward pass."""
    from medtl.backbones import stage_index

    g2 = np.zeros(n_stages)
    w2 = np.zeros(n_stages)
    for name, p in net.named_parameters():
        i = stage_index(name, cfg)
        if i is None or p.grad is None:
            continue
        g2[i] += float(p.grad.double().pow(2).sum())
        w2[i] += float(p.detach().double().pow(2).sum())
    return np.sqrt(g2) / np.sqrt(np.maximum(w2, 1e-12))


# -- transferability of frozen features --------------------------------------------------------------

PROBE_CS = (0.01, 0.1, 1.0)
CURVE_FRACTIONS = (0.25, 0.5, 1.0)


def _auroc(y: np.ndarray, proba: np.ndarray) -> float:
    from medtl.training import val_auroc

    return val_auroc(y, proba)


def _stratified_fraction(y: np.ndarray, frac: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of a stratified subsample (at least 2 per class) of the rows of ``y``."""
    if frac >= 1.0:
        return np.arange(len(y))
    keep = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        k = max(2, round(frac * len(idx)))
        keep.append(rng.choice(idx, size=min(k, len(idx)), replace=False))
    return np.sort(np.concatenate(keep))


def probe_transferability(
    emb: np.ndarray,
    y: np.ndarray,
    *,
    seed: int = 0,
    n_splits: int = 5,
    groups: Sequence[str | None] | None = None,
) -> dict[str, Any]:
    """Cross-validated k-NN and logistic-regression AUROC on frozen embeddings, plus a learning curve.

    Stratified ``n_splits``-fold CV (seeded; fewer folds when the smallest class is smaller), grouped by
    patient when ``groups`` gives ids (images without one count as their own patient), so that a
    patient's images never sit on both sides of a fold and the probe is not optimistic. The
    logistic probe's C is the best of ``PROBE_CS`` by mean CV AUROC (slightly optimistic, 3 options);
    its learning curve refits at ``CURVE_FRACTIONS`` of each training fold; ``slope_per_doubling`` is
    the least-squares slope of mean AUROC against log2(fraction).

    Returns:
        dict with ``knn_auroc``, ``knn_std``, ``probe_auroc``, ``probe_std``, ``probe_folds``,
        ``probe_C``, ``curve`` ({fraction: auroc}), ``curve_n`` ({fraction: mean train size}),
        ``slope_per_doubling``, ``n_splits``, ``head_seconds`` (one logistic fit on all rows, estimated).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.preprocessing import StandardScaler

    y = np.asarray(y)
    counts = np.bincount(y)
    counts = counts[counts > 0]
    k = int(min(n_splits, counts.min())) if len(counts) >= 2 else 0
    if k < 2:
        return {"n_splits": 0, "error": "fewer than 2 images in some class: no cross-validation"}
    rng = np.random.default_rng(seed)
    if groups is not None and any(groups):
        g = group_codes(groups)
        k = min(k, len(np.unique(g)))
        cv = StratifiedGroupKFold(k, shuffle=True, random_state=seed)
        folds = list(cv.split(emb, y, g))
    else:
        folds = list(StratifiedKFold(k, shuffle=True, random_state=seed).split(emb, y))
    knn_auc: list[float] = []
    lr_auc: dict[float, list[float]] = {c: [] for c in PROBE_CS}
    curve: dict[float, list[float]] = {f: [] for f in CURVE_FRACTIONS}
    curve_n: dict[float, list[int]] = {f: [] for f in CURVE_FRACTIONS}
    fit_seconds: list[tuple[int, float]] = []

    def logreg(C: float) -> LogisticRegression:
        return LogisticRegression(C=C, class_weight="balanced", max_iter=1000, random_state=seed)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter on tiny folds
        zs = []
        for tr, te in folds:
            sc = StandardScaler().fit(emb[tr])
            ztr, zte = sc.transform(emb[tr]), sc.transform(emb[te])
            zs.append(_in_row_span(ztr, zte))
            nn_k = int(max(1, min(15, round(math.sqrt(len(tr))))))
            knn = KNeighborsClassifier(n_neighbors=nn_k, weights="distance", metric="cosine")
            knn.fit(ztr, y[tr])
            knn_auc.append(_auroc(y[te], knn.predict_proba(zte)))
            ptr, pte = zs[-1]  # the logistic probes fit in the span of the fold's rows (exact)
            for C in PROBE_CS:
                t0 = time.perf_counter()
                clf = logreg(C).fit(ptr, y[tr])
                fit_seconds.append((len(tr), time.perf_counter() - t0))
                lr_auc[C].append(_auroc(y[te], clf.predict_proba(pte)))
        best_C = max(PROBE_CS, key=lambda c: np.nan_to_num(np.nanmean(lr_auc[c]), nan=-1.0))
        for (tr, te), (ztr, zte) in zip(folds, zs):
            for f in CURVE_FRACTIONS:
                if f >= 1.0:
                    curve[f].append(lr_auc[best_C][len(curve[f])])
                    curve_n[f].append(len(tr))
                    continue
                sub = _stratified_fraction(y[tr], f, rng)
                clf = logreg(best_C).fit(ztr[sub], y[tr][sub])
                curve[f].append(_auroc(y[te], clf.predict_proba(zte)))
                curve_n[f].append(len(sub))
    means = {f: float(np.nanmean(v)) for f, v in curve.items()}
    xs = np.log2(np.array(list(means)))
    ys = np.array(list(means.values()))
    ok = np.isfinite(ys)
    slope = float(np.polyfit(xs[ok], ys[ok], 1)[0]) if ok.sum() >= 2 else float("nan")
    n_all, sec = max(fit_seconds)  # the largest fold's fit, scaled to all rows
    head_seconds = len(PROBE_CS) * 4 * sec * len(y) / max(n_all, 1)  # ~11 Cs in FeatureExtraction
    folds_auc = [float(a) for a in lr_auc[best_C]]
    return {
        "n_splits": k,
        "knn_auroc": float(np.nanmean(knn_auc)),
        "knn_std": float(np.nanstd(knn_auc)),
        "probe_auroc": float(np.nanmean(folds_auc)),
        "probe_std": float(np.nanstd(folds_auc)),
        "probe_folds": folds_auc,
        "probe_C": float(best_C),
        "curve": {str(f): v for f, v in means.items()},
        "curve_n": {str(f): float(np.mean(v)) for f, v in curve_n.items()},
        "slope_per_doubling": slope,
        "head_seconds": float(head_seconds),
    }


def _in_row_span(ztr: np.ndarray, zte: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(ztr, zte)`` in the span of ``ztr``'s rows when there are fewer rows than features: an
    L2-penalised logistic fit on any subset of those rows is the same there within the solver's
    tolerance, at n instead of d columns (see :func:`medtl.strategies.row_span_basis`)."""
    from medtl.strategies import row_span_basis

    basis = row_span_basis(ztr)
    return (ztr, zte) if basis is None else (ztr @ basis, zte @ basis)


def probe_findings(
    emb: np.ndarray,
    y: np.ndarray,
    names: Sequence[str],
    *,
    seed: int = 0,
    n_splits: int = 5,
    groups: Sequence[str | None] | None = None,
) -> dict[str, Any]:
    """:func:`probe_transferability` once per finding of (N, K) multi-label targets, each on the
    images labelled for that finding, with the per-finding results under ``per_finding`` and their
    means as the summary (``probe_auroc`` is then a macro AUROC over the probed findings).

    A finding with fewer than 2 positive or negative labelled images cannot be cross-validated:
    it is listed under ``per_finding`` with its ``error``, and left out of the means.
    """
    y = np.asarray(y, dtype=np.float64)
    per: dict[str, dict[str, Any]] = {}
    for k, name in enumerate(names):
        rows = np.flatnonzero(~np.isnan(y[:, k]))
        per[name] = probe_transferability(
            emb[rows],
            y[rows, k].astype(np.int64),
            seed=seed,
            n_splits=n_splits,
            groups=None if groups is None else [groups[i] for i in rows],
        )
        per[name]["n_pos"] = int(np.sum(y[rows, k] == 1))
    done = [r for r in per.values() if r.get("n_splits")]
    if not done:
        return {"n_splits": 0, "error": "no finding has 2 positive and 2 negative images",
                "per_finding": per}  # fmt: skip

    def mean(key: str) -> float:
        return float(np.nanmean([r[key] for r in done]))

    fractions = list(done[0]["curve"])
    return {
        "n_splits": min(r["n_splits"] for r in done),
        "knn_auroc": mean("knn_auroc"),
        "knn_std": mean("knn_std"),
        "probe_auroc": mean("probe_auroc"),
        "probe_std": mean("probe_std"),
        "probe_C": float(np.median([r["probe_C"] for r in done])),
        "curve": {f: float(np.nanmean([r["curve"][f] for r in done])) for f in fractions},
        "curve_n": {f: float(np.mean([r["curve_n"][f] for r in done])) for f in fractions},
        "slope_per_doubling": mean("slope_per_doubling"),
        "head_seconds": float(sum(r["head_seconds"] for r in done)),
        "findings_probed": len(done),
        "per_finding": {
            f: {k: r.get(k) for k in ("probe_auroc", "knn_auroc", "n_pos", "error") if k in r}
            for f, r in per.items()
        },
    }


# -- cost ----------------------------------------------------------------------------------------------


def _timed(fn, warmup: int = 1, repeats: int = 2) -> float:
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats

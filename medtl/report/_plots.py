"""Report figures: ROC, learning curves, calibration, decision curve, confusion matrices.

Every function returns a :class:`matplotlib.figure.Figure` built directly (no ``pyplot``), so no
global figure state leaks between calls and the functions are safe in a web app (Streamlit) or a
worker thread. Figures are 8 inches wide at 100 dpi (800 px), the width the HTML report shows.

Example:
    >>> fig = plot_roc({"Fine-tuning": ([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])})
    >>> png = figure_to_png(fig)
"""

from __future__ import annotations

import io
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import roc_auc_score, roc_curve

from medtl._fileio import atomic_write_bytes
from medtl._options import look_up_option
from medtl.metrics import (
    auroc_ci,
    decision_curve,
    expected_calibration_error,
    learning_curve_summary,
    reliability_curve,
)
from medtl.metrics._validate import check_pair

WIDTH_IN = 8.0
DPI = 100
_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")

Curves = Mapping[str, tuple[Any, Any]]


def _color(i: int) -> str:
    return _PALETTE[i % len(_PALETTE)]


def _figure(height: float) -> Figure:
    return Figure(figsize=(WIDTH_IN, height), dpi=DPI, layout="constrained")


def _empty(fig: Figure, ax: Any, what: str) -> Figure:
    ax.text(0.5, 0.5, f"Nothing to plot: {what}", ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()
    return fig


def _pair(name: str, y: Any, p: Any) -> tuple[np.ndarray, np.ndarray]:
    return check_pair(y, p, f"y of {name!r}", f"p of {name!r}")


def _both_classes(y: np.ndarray) -> bool:
    return bool(y.size) and 0 < int(y.sum()) < y.size


def figure_to_png(fig: Figure) -> bytes:
    """Render a figure to PNG bytes (deterministic: no software/time metadata)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Save a figure as PNG atomically (temp file then rename) and return the path."""
    return atomic_write_bytes(path, figure_to_png(fig))


def plot_roc(
    curves: Curves,
    operating_points: Mapping[str, tuple[float, float]] | None = None,
    *,
    cis: Mapping[str, tuple[float, float]] | None = None,
    title: str = "ROC curves on the test set",
) -> Figure:
    """ROC curves of several models on the same test set, with their operating points.

    Args:
        curves: name -> (0/1 labels, P(positive)).
        operating_points: name -> (false-positive rate, true-positive rate) at the threshold chosen
            on validation; drawn as a circled dot on that model's curve.
        cis: name -> (low, high) 95% CI of the AUROC; computed with DeLong's method when omitted.
        title: figure title.
    """
    fig = _figure(6.2)
    ax = fig.add_subplot()
    if not curves:
        return _empty(fig, ax, "no test predictions")
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color="0.6", label="Chance (AUROC 0.5)")
    shown_op = False
    for i, (name, (y, p)) in enumerate(curves.items()):
        ya, pa = _pair(name, y, p)
        color = _color(i)
        if not _both_classes(ya):
            ax.plot([], [], color=color, label=f"{name}: AUROC n/a (test set has one class)")
            continue
        fpr, tpr, _ = roc_curve(ya, pa)
        auc = float(roc_auc_score(ya, pa))
        if cis is not None and name in cis:
            lo, hi = (float(v) for v in cis[name])
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = auroc_ci(ya, pa)
            lo, hi = res["low"], res["high"]
        ci = "" if not (math.isfinite(lo) and math.isfinite(hi)) else f" (95% CI {lo:.3f}–{hi:.3f})"
        ax.plot(fpr, tpr, lw=2, color=color, label=f"{name}: AUROC {auc:.3f}{ci}")
        if operating_points and name in operating_points:
            ofpr, otpr = operating_points[name]
            if (
                ofpr is not None
                and otpr is not None
                and math.isfinite(ofpr)
                and math.isfinite(otpr)
            ):
                ax.plot(ofpr, otpr, "o", ms=9, mfc=color, mec="black", mew=1.5, zorder=5)
                shown_op = True
    if shown_op:
        ax.plot([], [], "o", ms=9, mfc="white", mec="black", mew=1.5,
                label="Operating point (threshold chosen on validation)")  # fmt: skip
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("1 − specificity (false-positive rate, fraction of negatives)")
    ax.set_ylabel("Sensitivity (true-positive rate, fraction of positives)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8.5)
    return fig


def _num(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return f


def _epochless(rows: Sequence[Mapping[str, Any]]) -> bool:
    """True for histories without training epochs (e.g. feature extraction's search over C)."""
    return not rows or any("C" in r for r in rows) or not any("epoch" in r for r in rows)


def _elapsed(rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Cumulative wall-clock seconds per row: ``elapsed`` if recorded, else cumsum of ``seconds``."""
    el = np.array([_num(r.get("elapsed")) for r in rows])
    if rows and np.all(np.isfinite(el)):
        return el
    sec = np.array([_num(r.get("seconds")) for r in rows])
    if rows and np.all(np.isfinite(sec)):
        return np.cumsum(sec)
    return np.full(len(rows), np.nan)


def history_summary(rows: Sequence[Mapping[str, Any]], metric: str = "val_auroc") -> dict[str, Any]:
    """Start / slope / asymptote of one history (see :func:`medtl.metrics.learning_curve_summary`).

    Histories without epochs (feature extraction) have no slope: start = asymptote = best value.
    Returns NaN entries when the history is empty or holds no finite values.
    """
    vals = np.array([_num(r.get(metric)) for r in rows]) if rows else np.array([])
    nan = float("nan")
    if vals.size == 0 or not np.isfinite(vals).any():
        return {"start": nan, "slope": nan, "asymptote": nan, "best_epoch": None, "n_epochs": 0}
    if _epochless(rows):
        best = float(np.nanmax(vals))
        return {"start": best, "slope": nan, "asymptote": best, "best_epoch": None, "n_epochs": 0}
    return learning_curve_summary(vals.tolist())


def plot_learning_curves(
    histories: Mapping[str, Sequence[Mapping[str, Any]]],
    x: str = "epoch",
    *,
    metric: str = "val_auroc",
    title: str | None = None,
) -> Figure:
    """Validation AUROC against epoch or wall-clock time, one line per strategy.

    The legend gives each strategy's start (after epoch 1), early slope (gain per epoch over the first
    3 epochs) and asymptote (best value, starred), the signature of transfer learning. A strategy
    without epochs (feature extraction: a frozen backbone plus a head fitted once per
    regularisation value) is a dotted horizontal line at its best validation AUROC, with a diamond
    at the time it took when ``x="elapsed"``.

    Args:
        histories: strategy name -> per-epoch rows (``history.json``).
        x: ``"epoch"`` or ``"elapsed"`` (seconds since training started).
        metric: the row key to plot.
        title: figure title (a default names the axis).
    """
    x = look_up_option("x", x, ("epoch", "elapsed"))
    fig = _figure(6.0)
    ax = fig.add_subplot()
    if not histories:
        return _empty(fig, ax, "no training histories")
    drawn = False
    for i, (name, rows_in) in enumerate(histories.items()):
        rows = list(rows_in or [])
        color = _color(i)
        vals = np.array([_num(r.get(metric)) for r in rows])
        if not rows or not np.isfinite(vals).any():
            ax.plot([], [], color=color, label=f"{name}: no validation history")
            continue
        summ = history_summary(rows, metric)
        if _epochless(rows):
            best_i = int(np.nanargmax(vals))
            best = float(vals[best_i])
            c_best = _num(rows[best_i].get("C"))
            extra = f", C = {c_best:g}" if math.isfinite(c_best) else ""
            el = _elapsed(rows)
            t_total = float(np.nanmax(el)) if np.isfinite(el).any() else None
            when = f" after {t_total:.0f} s" if (x == "elapsed" and t_total is not None) else ""
            ax.axhline(best, ls=":", lw=2, color=color,
                       label=f"{name}: no epochs; best {best:.3f}{extra}{when}")  # fmt: skip
            if x == "elapsed" and t_total is not None:
                ax.plot(t_total, best, "D", ms=9, color=color, mec="black")
            drawn = True
            continue
        if x == "epoch":
            xs = np.array([_num(r.get("epoch", j + 1)) for j, r in enumerate(rows)])
        else:
            xs = _elapsed(rows)
            if not np.isfinite(xs).all():
                ax.plot([], [], color=color, label=f"{name}: no timing recorded")
                continue
        label = (
            f"{name}: start {summ['start']:.3f}, slope {summ['slope']:+.3f}/epoch, "
            f"asymptote {summ['asymptote']:.3f}"
        )
        ax.plot(xs, vals, marker="o", ms=4, lw=2, color=color, label=label)
        b = int(np.nanargmax(vals))
        ax.plot(xs[b], vals[b], "*", ms=15, color=color, mec="black", zorder=5)
        drawn = True
    if drawn:
        ax.plot([], [], "*", ms=12, color="white", mec="black", label="Best epoch (asymptote)")
    if x == "epoch":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("Epoch" if x == "epoch" else "Wall-clock time since training started (s)")
    ax.set_ylabel("Validation AUROC")
    default = "vs epoch" if x == "epoch" else "vs training time"
    ax.set_title(title or f"Learning curves: validation AUROC {default}")
    ax.grid(alpha=0.3)
    # Below the axes, so long start/slope/asymptote labels never hide the curves.
    fig.legend(loc="outside lower center", fontsize=8)
    return fig


def plot_calibration(curves: Curves, *, n_bins: int = 10, title: str | None = None) -> Figure:
    """Reliability diagram (observed vs predicted risk) above a histogram of predicted risks.

    Args:
        curves: name -> (0/1 labels, P(positive)).
        n_bins: equal-width probability bins.
        title: figure title.
    """
    fig = _figure(6.4)
    if not curves:
        return _empty(fig, fig.add_subplot(), "no test predictions")
    gs = fig.add_gridspec(2, 1, height_ratios=(3, 1))
    ax = fig.add_subplot(gs[0])
    axh = fig.add_subplot(gs[1], sharex=ax)
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color="0.6", label="Perfect calibration")
    edges = np.linspace(0, 1, n_bins + 1)
    for i, (name, (y, p)) in enumerate(curves.items()):
        ya, pa = _pair(name, y, p)
        color = _color(i)
        rc = reliability_curve(ya, pa, n_bins)
        ok = np.asarray(rc["count"]) > 0
        mp, fp = np.asarray(rc["mean_pred"])[ok], np.asarray(rc["frac_pos"])[ok]
        ece = expected_calibration_error(ya, pa, n_bins)
        brier = float(np.mean((pa - ya) ** 2))
        ax.plot(mp, fp, marker="o", lw=2, color=color,
                label=f"{name}: ECE {ece:.3f}, Brier {brier:.3f}")  # fmt: skip
        axh.hist(pa, bins=edges, histtype="step", lw=2, color=color)
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("Observed fraction positive")
    ax.set_title(title or f"Calibration on the test set ({n_bins} equal-width bins)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8.5)
    axh.set_xlabel("Predicted probability of the positive class")
    axh.set_ylabel("Images (count)")
    axh.grid(alpha=0.3)
    ax.tick_params(labelbottom=False)
    return fig


def plot_decision_curve(
    curves: Curves, *, thresholds: Any = None, title: str | None = None
) -> Figure:
    """Decision curve: net benefit of acting on each model vs treating all or none.

    Args:
        curves: name -> (0/1 labels, P(positive)); all on the same test set.
        thresholds: threshold probabilities in (0, 1) (default 0.01 … 0.99).
        title: figure title.
    """
    fig = _figure(5.2)
    ax = fig.add_subplot()
    if not curves:
        return _empty(fig, ax, "no test predictions")
    prev_max = 0.0
    treat_all_drawn = False
    for i, (name, (y, p)) in enumerate(curves.items()):
        ya, pa = _pair(name, y, p)
        dc = decision_curve(ya, pa, thresholds)
        ax.plot(dc["threshold"], dc["net_benefit"], lw=2, color=_color(i), label=name)
        prev_max = max(prev_max, float(ya.mean()))
        if not treat_all_drawn:
            ax.plot(dc["threshold"], dc["treat_all"], lw=1.5, ls="--", color="0.35",
                    label=f"Treat all (prevalence {ya.mean():.2f})")  # fmt: skip
            ax.plot(
                dc["threshold"], dc["treat_none"], lw=1.5, ls=":", color="0.1", label="Treat none"
            )
            treat_all_drawn = True
    ax.set_ylim(-0.05 - 0.05 * prev_max, max(0.05, prev_max * 1.1))
    ax.set_xlim(0, 1)
    ax.set_xlabel("Threshold probability (risk at which one would act)")
    ax.set_ylabel("Net benefit (net true positives per image)")
    ax.set_title(title or "Decision curve on the test set")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8.5)
    return fig


def plot_confusion(
    matrices: Mapping[str, Any],
    *,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Confusion matrices (rows = truth, columns = prediction) with counts and row percentages.

    Args:
        matrices: name -> square count matrix, e.g. ``[[tn, fp], [fn, tp]]`` for a binary model.
        class_names: one label per row/column (default "negative"/"positive" for 2x2).
        title: figure title.
    """
    items = list(matrices.items())
    n = max(len(items), 1)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(WIDTH_IN, 3.1 * rows + 0.5), dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    if not items:
        return _empty(fig, axes[0], "no confusion matrices")
    for ax, (name, m) in zip(axes, items):
        mat = np.asarray(m, dtype=np.float64)
        if mat.ndim != 2 or mat.shape[0] != mat.shape[1]:
            raise ValueError(
                f"plot_confusion: the matrix of {name!r} must be square (k x k counts); got shape "
                f"{mat.shape}. Pass [[tn, fp], [fn, tp]] for a binary model."
            )
        k = mat.shape[0]
        names = list(class_names) if class_names is not None else (
            ["negative", "positive"] if k == 2 else [str(j) for j in range(k)]
        )  # fmt: skip
        with np.errstate(invalid="ignore", divide="ignore"):
            frac = np.nan_to_num(mat / mat.sum(axis=1, keepdims=True))
        ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
        fs = 10 if k <= 3 else 7
        for r in range(k):
            for c in range(k):
                pct = f"({100 * frac[r, c]:.0f}% of row)" if k == 2 else f"{100 * frac[r, c]:.0f}%"
                ax.text(c, r, f"{int(mat[r, c])}\n{pct}", ha="center",
                        va="center", fontsize=fs, color="white" if frac[r, c] > 0.6 else "black")  # fmt: skip
        ax.set_xticks(range(k), names, rotation=20 if k > 2 else 0, fontsize=8)
        ax.set_yticks(range(k), names, fontsize=8)
        ax.set_xlabel("Predicted class")
        ax.set_ylabel("True class")
        ax.set_title(name, fontsize=10)
    for ax in axes[len(items) :]:
        ax.set_axis_off()
    fig.suptitle(title or "Confusion matrices on the test set (counts of images)")
    return fig

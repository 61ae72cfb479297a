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
    brier,
    calibration_slope_intercept,
    check_pair,
    decision_curve,
    expected_calibration_error,
    learning_curve_summary,
    reliability_curve,
)
from medtl.report._html import fseconds

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


def _legend_below(fig: Figure, ax: Any, ncols: int = 1) -> None:
    """The legend under the axes, outside them, so it never covers a curve."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", fontsize=8.5, ncols=ncols)


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
    fig = _figure(7.4)
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
        # roc_curve rather than RocCurveDisplay: the display computes the same points but labels
        # them without the CI and styles them its own way; drawing them here keeps one legend style.
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
    _legend_below(fig, ax)
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


def chosen_row(rows: Sequence[Mapping[str, Any]], metric: str = "val_auroc") -> int | None:
    """Index of the setting an epochless strategy kept: the row marked ``chosen`` (feature
    extraction picks its C by validation log-loss, not always the best AUROC), else the best row."""
    for i, r in enumerate(rows):
        if r.get("chosen"):
            return i
    vals = np.array([_num(r.get(metric)) for r in rows]) if rows else np.array([])
    return int(np.nanargmax(vals)) if np.isfinite(vals).any() else None


def setting_text(row: Mapping[str, Any]) -> str:
    """The kept setting of an epochless strategy in words, e.g. "C = 0.0316" (or "")."""
    c = _num(row.get("C"))
    return f"C = {c:.3g}" if math.isfinite(c) else ""


def history_summary(rows: Sequence[Mapping[str, Any]], metric: str = "val_auroc") -> dict[str, Any]:
    """Start / slope / asymptote of one history (see :func:`medtl.metrics.learning_curve_summary`).

    Histories without epochs (feature extraction: one regularisation value per row) have no start,
    slope or best epoch: they give ``epochless`` True, the kept row's value as ``asymptote`` and its
    ``setting`` ("C = 0.0316"). Returns NaN entries when the history holds no finite values.
    """
    vals = np.array([_num(r.get(metric)) for r in rows]) if rows else np.array([])
    nan = float("nan")
    empty = {"start": nan, "slope": nan, "asymptote": nan, "best_epoch": None, "n_epochs": 0}
    if vals.size == 0 or not np.isfinite(vals).any():
        return {**empty, "epochless": bool(rows) and _epochless(rows), "setting": ""}
    if _epochless(rows):
        i = chosen_row(rows, metric)
        kept = float(vals[i]) if i is not None else nan
        return {
            **empty,
            "asymptote": kept,
            "epochless": True,
            "setting": setting_text(rows[i or 0]),
        }
    return {**learning_curve_summary(vals.tolist()), "epochless": False, "setting": ""}


def plot_learning_curves(
    histories: Mapping[str, Sequence[Mapping[str, Any]]],
    x: str = "epoch",
    *,
    metric: str = "val_auroc",
    title: str | None = None,
    kept: Mapping[str, tuple[float, float]] | None = None,
    metric_label: str = "AUROC",
) -> Figure:
    """Validation AUROC against epoch or wall-clock time, one line per strategy.

    The legend gives each strategy's start (after epoch 1), early slope (gain per epoch over the first
    3 epochs) and asymptote (best value, starred), the signature of transfer learning. A strategy
    without epochs (feature extraction: a frozen backbone plus a head fitted once per
    regularisation value) is a dotted horizontal line at the validation AUROC of the setting it
    kept, with a diamond at the time it took when ``x="elapsed"``.

    Args:
        histories: strategy name -> per-epoch rows (``history.json``).
        x: ``"epoch"`` or ``"elapsed"`` (seconds since training started).
        metric: the row key to plot.
        title: figure title (a default names the axis).
        kept: strategy name -> (validation AUROC, training seconds) of the model that was kept, as
            the results table shows them; the epochless lines use them so legend and table agree.
        metric_label: what ``metric`` is, in words (``Task.curve_metric``: "macro AUROC" for
            several findings per image).
    """
    x = look_up_option("x", x, ("epoch", "elapsed"))
    fig = _figure(6.4)
    ax = fig.add_subplot()
    if not histories:
        return _empty(fig, ax, "no training histories")
    drawn = False
    max_epoch = 1.0
    for i, (name, rows_in) in enumerate(histories.items()):
        rows = list(rows_in or [])
        color = _color(i)
        vals = np.array([_num(r.get(metric)) for r in rows])
        if not rows or not np.isfinite(vals).any():
            ax.plot([], [], color=color, label=f"{name}: no validation history")
            continue
        summ = history_summary(rows, metric)
        if summ["epochless"]:
            value, seconds = summ["asymptote"], float("nan")
            el = _elapsed(rows)
            if np.isfinite(el).any():
                seconds = float(np.nanmax(el))
            if kept and name in kept:
                kv, ks = (_num(v) for v in kept[name])
                value = kv if math.isfinite(kv) else value
                seconds = ks if math.isfinite(ks) else seconds
            extra = f" ({summ['setting']})" if summ["setting"] else ""
            when = f", trained in {fseconds(seconds)}" if math.isfinite(seconds) else ""
            ax.axhline(value, ls=":", lw=2, color=color,
                       label=f"{name}: no epochs; validation {metric_label} {value:.3f}{extra}{when}")  # fmt: skip
            if x == "elapsed" and math.isfinite(seconds):
                ax.plot(seconds, value, "D", ms=9, color=color, mec="black")
            drawn = True
            continue
        if x == "epoch":
            xs = np.array([_num(r.get("epoch", j + 1)) for j, r in enumerate(rows)])
            max_epoch = max(max_epoch, float(np.nanmax(xs)))
        else:
            xs = _elapsed(rows)
            if not np.isfinite(xs).all():
                ax.plot([], [], color=color, label=f"{name}: no timing recorded")
                continue
        slope = f"slope {summ['slope']:+.3f}/epoch" if len(rows) > 1 else "one epoch, no slope"
        label = f"{name}: start {summ['start']:.3f}, {slope}, asymptote {summ['asymptote']:.3f}"
        ax.plot(xs, vals, marker="o", ms=4, lw=2, color=color, label=label)
        b = int(np.nanargmax(vals))
        ax.plot(xs[b], vals[b], "*", ms=15, color=color, mec="black", zorder=5)
        drawn = True
    if drawn:
        ax.plot([], [], "*", ms=12, color="white", mec="black", label="Best epoch (asymptote)")
    if x == "epoch":
        # whole epochs only, and room around a single epoch (not a 0.945-1.05 axis)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_xlim(0.5, max_epoch + 0.5)
    ax.set_xlabel("Epoch" if x == "epoch" else "Wall-clock time since training started (s)")
    ax.set_ylabel(f"Validation {metric_label}")
    default = "vs epoch" if x == "epoch" else "vs training time"
    ax.set_title(title or f"Learning curves: validation {metric_label} {default}")
    ax.grid(alpha=0.3)
    # Below the axes, so long start/slope/asymptote labels never hide the curves.
    _legend_below(fig, ax)
    return fig


def plot_calibration(
    curves: Curves,
    *,
    n_bins: int | str = "auto",
    strategy: str = "quantile",
    title: str | None = None,
) -> Figure:
    """Reliability diagram (observed vs predicted risk, with Wilson intervals and the number of
    images per bin) above a histogram of predicted risks.

    scikit-learn's ``CalibrationDisplay`` is not used: it draws no intervals and no counts, and
    with few test images a bin's observed rate is only readable with both.

    Args:
        curves: name -> (0/1 labels, P(positive)).
        n_bins: bins, or "auto" (about one per 30 images, 3 to 10; see
            :func:`medtl.metrics.reliability_bins`).
        strategy: "quantile" (equal counts per bin) or "uniform" (equal widths).
        title: figure title.
    """
    fig = _figure(7.4)
    if not curves:
        return _empty(fig, fig.add_subplot(), "no test predictions")
    gs = fig.add_gridspec(2, 1, height_ratios=(3, 1))
    ax = fig.add_subplot(gs[0])
    axh = fig.add_subplot(gs[1], sharex=ax)
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color="0.6", label="Perfect calibration")
    bins_used = []
    for i, (name, (y, p)) in enumerate(curves.items()):
        ya, pa = _pair(name, y, p)
        color = _color(i)
        rc = reliability_curve(ya, pa, n_bins, strategy=strategy)
        k = len(rc["count"])
        bins_used.append(k)
        cnt = np.asarray(rc["count"])
        ok = cnt > 0
        mp, fp = np.asarray(rc["mean_pred"])[ok], np.asarray(rc["frac_pos"])[ok]
        lo, hi = np.asarray(rc["frac_low"])[ok], np.asarray(rc["frac_high"])[ok]
        ece = expected_calibration_error(ya, pa, k, strategy=strategy)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cal = calibration_slope_intercept(ya, pa)
        slope = f"slope {cal['slope']:.2f}" if math.isfinite(cal["slope"]) else "slope n/a"
        # slight horizontal offsets so that the intervals of models with similar scores stay visible
        dx = 0.006 * (i - (len(curves) - 1) / 2)
        ax.errorbar(mp + dx, fp, yerr=[fp - lo, hi - fp], marker="o", lw=2, capsize=3, color=color,
                    elinewidth=1, alpha=0.85,
                    label=f"{name}: {slope}, intercept {cal['intercept']:+.2f}, ECE {ece:.3f}, "
                          f"Brier {brier(ya, pa):.3f}")  # fmt: skip
        for xm, yf, c in zip(mp + dx, fp, cnt[ok]):
            ax.annotate(f"n={c}", (xm, yf), xytext=(4, -11), textcoords="offset points",
                        fontsize=7, color=color)  # fmt: skip
        axh.hist(pa, bins=np.linspace(0, 1, 21), histtype="step", lw=2, color=color)
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("Observed fraction positive (95% CI)")
    what = "equal-count" if strategy == "quantile" else "equal-width"
    nb = bins_used[0] if len(set(bins_used)) == 1 else "per-model"
    ax.set_title(title or f"Calibration on the test set ({nb} {what} bins; n = images per bin)")
    ax.grid(alpha=0.3)
    axh.set_xlabel("Predicted probability of the positive class")
    axh.set_ylabel("Images (count)")
    axh.grid(alpha=0.3)
    ax.tick_params(labelbottom=False)
    _legend_below(fig, ax)
    return fig


def plot_decision_curve(
    curves: Curves,
    *,
    thresholds: Any = None,
    prevalence: float | None = None,
    title: str | None = None,
) -> Figure:
    """Decision curve: net benefit of acting on each model vs treating all or none.

    Args:
        curves: name -> (0/1 labels, P(positive)); all on the same test set.
        thresholds: threshold probabilities in (0, 1) (default 0.01 … 0.99).
        prevalence: the deployment prevalence; None uses the test set's (net benefit depends on it).
        title: figure title.
    """
    fig = _figure(6.2)
    ax = fig.add_subplot()
    if not curves:
        return _empty(fig, ax, "no test predictions")
    prev_max = 0.0
    treat_all_drawn = False
    where = "test set"
    for i, (name, (y, p)) in enumerate(curves.items()):
        ya, pa = _pair(name, y, p)
        dc = decision_curve(ya, pa, thresholds, prevalence=prevalence)
        ax.plot(dc["threshold"], dc["net_benefit"], lw=2, color=_color(i), label=name)
        prev_max = max(prev_max, float(dc["prevalence"]))
        if not treat_all_drawn:
            where = "deployment" if dc["prevalence_source"] == "deployment" else "test set"
            ax.plot(dc["threshold"], dc["treat_all"], lw=1.5, ls="--", color="0.35",
                    label=f"Treat all ({where} prevalence {dc['prevalence']:.1%})")  # fmt: skip
            ax.plot(
                dc["threshold"], dc["treat_none"], lw=1.5, ls=":", color="0.1", label="Treat none"
            )
            treat_all_drawn = True
    ax.set_ylim(-0.05 - 0.05 * prev_max, max(0.05, prev_max * 1.1))
    ax.set_xlim(0, 1)
    ax.set_xlabel("Threshold probability (risk at which one would act)")
    ax.set_ylabel("Net benefit (net true positives per image)")
    default = "at the deployment prevalence" if where == "deployment" else "on the test set"
    ax.set_title(title or f"Decision curve {default}")
    ax.grid(alpha=0.3)
    _legend_below(fig, ax, ncols=2)
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

"""The task kind: the one owner of "what question does a model answer".

Three kinds of classification task reach medtl:

==============  ==========================  ====================================================
kind            labels                      head, loss, metrics, operating point, predictions
==============  ==========================  ====================================================
``binary``      one of two classes          2 softmax outputs, cross-entropy; AUROC (DeLong),
                                            sensitivity/specificity/PPV/NPV at a threshold
                                            chosen on validation; calibration
``multiclass``  one of K > 2 classes        K softmax outputs, cross-entropy; per-class
                                            one-vs-rest AUROC and macro AUROC (bootstrap CI);
                                            the call is the most probable class
``multilabel``  several findings per image  K sigmoid outputs, masked binary cross-entropy;
                                            per-finding clinical metrics, macro/micro AUROC
==============  ==========================  ====================================================

Every other module asks a :class:`Task` (``task_for(classes, kind)``, ``RunData.task``,
``Strategy.task_``) instead of counting classes: the head's output and activation, the loss, which
metrics are computed and how they are summarised, how an operating point is chosen and applied, and
how predictions are written and read back. Adding a kind is one subclass registered with
:func:`register_task`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from medtl.errors import ConfigError

__all__ = [
    "BinaryTask",
    "MultiClassTask",
    "Task",
    "list_task_kinds",
    "register_task",
    "task_for",
]

_KINDS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: make a task kind available by its ``kind`` name (refuses duplicates)."""
    if cls.kind in _KINDS and _KINDS[cls.kind] is not cls:
        raise ValueError(f"A task kind named {cls.kind!r} is already registered.")
    _KINDS[cls.kind] = cls
    return cls


def list_task_kinds() -> list[str]:
    """Names of the registered task kinds."""
    return sorted(_KINDS)


def task_for(classes: Sequence[str], kind: str | None = None) -> Task:
    """The task that ``classes`` (class or finding names) define.

    ``kind`` is what a run or model folder recorded; without it (older folders, single-label data)
    two classes are ``binary`` and more are ``multiclass`` (no names at all: ``binary``). This is the only place in medtl that
    tells the kind from the number of classes.

    Example:
        >>> task_for(["normal", "pneumonia"]).positive_class
        'pneumonia'
    """
    names = [str(c) for c in classes]
    if kind is None:
        # fewer than two names: a run folder that never recorded its classes reads as binary
        kind = MultiClassTask.kind if len(names) > 2 else BinaryTask.kind
    if kind not in _KINDS:
        from medtl._options import look_up_option

        look_up_option("task", kind, list_task_kinds())
    return _KINDS[kind](names)


class Task:
    """What a model answers, and everything that follows from it (see the module docstring)."""

    kind: ClassVar[str] = "base"
    #: how users read the kind ("two-class", "multi-class", "multi-label")
    title: ClassVar[str] = ""
    #: the headline metric's name in tables and sentences
    metric_name: ClassVar[str] = "AUROC"
    #: how the headline metric's interval is computed
    ci_name: ClassVar[str] = "95% CI"
    #: True when calls are made at an operating threshold chosen on validation
    thresholded: ClassVar[bool] = False
    #: what a label is called in text ("class" / "finding")
    label_noun: ClassVar[str] = "class"

    def __init__(self, classes: Sequence[str]) -> None:
        self.classes = [str(c) for c in classes]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.classes!r})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.classes == self.classes  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((self.kind, tuple(self.classes)))

    # -- the head ---------------------------------------------------------------------------------
    @property
    def n_outputs(self) -> int:
        """Outputs of the network's head (one logit per class or finding)."""
        return len(self.classes)

    @property
    def positive_class(self) -> str | None:
        """The finding a two-class model reports sensitivity for; None for the other kinds."""
        return None

    def describe(self) -> str:
        """One phrase for cards and reports, e.g. "binary classification into normal, pneumonia"."""
        return f"{self.title} classification into {', '.join(self.classes) or 'n/a'}"

    def proba_from_logits(self, logits: Any) -> np.ndarray:
        """Probabilities (N, K, float64) from logits; softmax here, sigmoid for several findings.

        float64 so that confident predictions near 0 or 1 keep their order.
        """
        from scipy.special import softmax

        return softmax(_as_float64(logits), axis=1)

    def class_weights(self, labels: np.ndarray) -> Any:
        """Balanced class weights (a float32 tensor): total / (K * count), absent classes as 1."""
        import torch

        k = len(self.classes)
        counts = np.bincount(np.asarray(labels), minlength=k).astype(np.float64)
        counts[counts == 0] = 1.0
        return torch.tensor(counts.sum() / (k * counts), dtype=torch.float32)

    def log_proba(self, logits: Any) -> Any:
        """Log-probabilities of torch logits, differentiable (heatmaps): log-softmax here."""
        import torch

        return torch.log_softmax(logits, dim=1)

    def loss(
        self, class_weights: Any = None, *, label_smoothing: float = 0.0, reduction: str = "mean"
    ) -> Any:
        """The training loss as a torch module (cross-entropy, class-weighted when given).

        With ``reduction="sum"`` the training step divides by :meth:`batch_weight`, which makes it
        PyTorch's weighted mean over the whole batch however the batch is split into passes.
        """
        from torch import nn

        return nn.CrossEntropyLoss(
            weight=class_weights, label_smoothing=label_smoothing, reduction=reduction
        )

    def batch_weight(self, labels: Any, class_weights: Any = None) -> float:
        """The total weight of a batch's labels (the denominator of a summed loss)."""
        if class_weights is None:
            return float(len(labels))
        return float(class_weights[labels].sum())

    def mean_loss(self, logits: Any, labels: np.ndarray) -> float:
        """The unweighted mean loss of (N, K) logits against labels (validation loss)."""
        import torch
        from torch import nn

        z = logits if isinstance(logits, torch.Tensor) else torch.from_numpy(np.asarray(logits))
        return float(nn.functional.cross_entropy(z, torch.from_numpy(np.asarray(labels))))

    # -- metrics ----------------------------------------------------------------------------------
    def headline_auroc(self, y: np.ndarray, proba: np.ndarray) -> float:  # pragma: no cover
        """The one AUROC that ranks models (validation selection, learning curves); NaN if undefined."""
        raise NotImplementedError

    def evaluate(
        self,
        y_val: np.ndarray,
        p_val: np.ndarray,
        y_test: np.ndarray,
        p_test: np.ndarray,
        *,
        metrics: Any,
        seed: int,
    ) -> dict[str, Any]:  # pragma: no cover
        """``metrics.json`` content: test and validation metrics at the validation-chosen operating
        point (``{"test": ..., "val": ..., "threshold": ...}``)."""
        raise NotImplementedError

    def auroc_of(self, metrics: dict[str, Any], split: str) -> tuple[float, list[float] | None]:
        """(headline AUROC, [low, high] or None) of one split of a ``metrics.json``."""
        return metrics_auroc(metrics, split)

    def compare_paired(
        self,
        y: np.ndarray,
        pa: np.ndarray,
        pb: np.ndarray,
        *,
        threshold_a: float | None,
        threshold_b: float | None,
        seed: int,
        name_a: str,
        name_b: str,
    ) -> dict[str, Any]:  # pragma: no cover
        """Paired comparison of two models' (N, K) probabilities on the same images."""
        raise NotImplementedError

    def score(
        self, y: np.ndarray, proba: np.ndarray, *, threshold: float | None, prevalence: float | None
    ) -> dict[str, Any]:  # pragma: no cover
        """One evaluation row (``medtl evaluate``): the headline AUROC with its interval and, for a
        thresholded task, the clinical numbers at ``threshold`` (fixed, not re-chosen)."""
        raise NotImplementedError

    #: the paired tests' names, for reports and checklists
    paired_tests: ClassVar[str] = ""
    #: the metrics and their intervals, for reports and checklists
    metrics_text: ClassVar[str] = ""

    # -- operating point --------------------------------------------------------------------------
    def decide(self, proba: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """Calls per image: a class index (single-label kinds)."""
        return np.asarray(proba).argmax(1)

    def scores(self, proba: np.ndarray) -> np.ndarray:
        """The scores a ROC curve is drawn from: (N,) P(positive) for two classes, (N, K) otherwise."""
        return np.asarray(proba)

    def questions(
        self, y: np.ndarray, proba: np.ndarray
    ) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """The yes/no questions whose AUROCs make the headline metric, as (name, positive, score):
        ``positive`` is 1.0/0.0 per image (NaN where the image is not labelled for that question),
        ``score`` the probability ranked for it. Binary: one question (the positive class); several
        classes: one-vs-rest per class; several findings: one per finding."""
        y = np.asarray(y)
        proba = np.asarray(proba)
        return [(c, (y == k).astype(np.float64), proba[:, k]) for k, c in enumerate(self.classes)]

    def label_of(self, index: int) -> str:
        """The name of class ``index``."""
        return self.classes[int(index)]


def _as_float64(logits: Any) -> np.ndarray:
    try:
        import torch

        if isinstance(logits, torch.Tensor):
            logits = logits.detach().float().cpu().numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return np.asarray(logits, dtype=np.float64)


def metrics_auroc(metrics: dict[str, Any], split: str) -> tuple[float, list[float] | None]:
    """(AUROC, [low, high] or None) of one split of a ``metrics.json`` of any kind: the binary
    ``auroc`` block, else the ``macro`` of a ``multiclass`` / ``multilabel`` summary."""
    from medtl.formatting import num

    part = metrics.get(split) or {}
    if isinstance(part.get("auroc"), dict):
        a = part["auroc"]
        return num(a.get("auroc")), [num(a.get("low")), num(a.get("high"))]
    for key in ("multilabel", "multiclass", "multiclass_auroc"):
        mc = part.get(key)
        if isinstance(mc, dict):
            lo, hi = mc.get("macro_low"), mc.get("macro_high")
            return num(mc.get("macro")), ([num(lo), num(hi)] if lo is not None else None)
    return float("nan"), None


@register_task
class BinaryTask(Task):
    """One label of two classes; the last class is the finding (positive)."""

    kind = "binary"
    title = "binary"
    metric_name = "AUROC"
    ci_name = "95% CI"
    thresholded = True
    paired_tests = "DeLong, paired bootstrap, McNemar"
    metrics_text = "AUROC (DeLong 95% CI), sensitivity/specificity/PPV/NPV (Wilson 95% CI)"

    def __init__(self, classes: Sequence[str]) -> None:
        super().__init__(classes)
        if len(self.classes) > 2:
            raise ConfigError(
                f"A binary task has two classes; got {len(self.classes)} ({self.classes})."
            )

    @property
    def positive_class(self) -> str | None:
        return self.classes[-1] if len(self.classes) == 2 else None

    def headline_auroc(self, y: np.ndarray, proba: np.ndarray) -> float:
        from sklearn.metrics import roc_auc_score

        y = np.asarray(y)
        if len(np.unique(y)) < 2:
            return float("nan")
        return float(roc_auc_score(y, np.asarray(proba)[:, 1]))

    def evaluate(
        self,
        y_val: np.ndarray,
        p_val: np.ndarray,
        y_test: np.ndarray,
        p_test: np.ndarray,
        *,
        metrics: Any,
        seed: int,
    ) -> dict[str, Any]:
        from medtl.metrics import clinical_report

        m = metrics

        def report(y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
            # the operating threshold is always chosen on validation, for both splits' numbers
            return clinical_report(
                y, p[:, 1], y_val=y_val, p_val=p_val[:, 1], rule=m.threshold_rule,
                target=m.target, prevalence=m.prevalence, ci_method=m.ci_method, seed=seed,
            ).to_dict()  # fmt: skip

        test, val = report(y_test, p_test), report(y_val, p_val)
        return {"test": test, "val": val, "threshold": test.get("threshold")}

    def compare_paired(
        self,
        y: np.ndarray,
        pa: np.ndarray,
        pb: np.ndarray,
        *,
        threshold_a: float | None,
        threshold_b: float | None,
        seed: int,
        name_a: str,
        name_b: str,
    ) -> dict[str, Any]:
        from medtl.metrics import compare_paired

        return compare_paired(
            y,
            pa[:, 1],
            pb[:, 1],
            threshold_a=0.5 if threshold_a is None else float(threshold_a),
            threshold_b=0.5 if threshold_b is None else float(threshold_b),
            seed=seed,
            name_a=name_a,
            name_b=name_b,
        )

    def score(
        self, y: np.ndarray, proba: np.ndarray, *, threshold: float | None, prevalence: float | None
    ) -> dict[str, Any]:
        from medtl.metrics import clinical_report

        rep = clinical_report(
            y, proba[:, 1], rule="fixed", target=threshold, prevalence=prevalence
        ).to_dict()
        op = rep.get("operating_point", {})
        cal = rep.get("calibration") or {}
        auc = rep.get("auroc") or {}
        return {
            "n_pos": int((np.asarray(y) == 1).sum()),
            "prevalence": float(np.mean(np.asarray(y) == 1)),
            "auroc": auc.get("auroc"),
            "auroc_low": auc.get("low"),
            "auroc_high": auc.get("high"),
            "auprc": rep.get("auprc"),
            "threshold": threshold,
            "sensitivity": op.get("sensitivity"),
            "sens_low": op.get("sensitivity_low"),
            "sens_high": op.get("sensitivity_high"),
            "specificity": op.get("specificity"),
            "spec_low": op.get("specificity_low"),
            "spec_high": op.get("specificity_high"),
            "ppv": op.get("ppv"),
            "npv": op.get("npv"),
            "ppv_deploy": op.get("ppv_at_prevalence"),
            "npv_deploy": op.get("npv_at_prevalence"),
            "lr_pos": op.get("lr_pos"),
            "lr_neg": op.get("lr_neg"),
            "f1": op.get("f1"),
            "brier": cal.get("brier"),
            "ece": cal.get("ece"),
        }

    def decide(self, proba: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """Positive (1) when P(positive) >= ``threshold`` (0.5 when None), else 0."""
        t = 0.5 if threshold is None else float(threshold)
        return (np.asarray(proba)[:, 1] >= t).astype(np.int64)

    def scores(self, proba: np.ndarray) -> np.ndarray:
        return np.asarray(proba)[:, 1]

    def questions(
        self, y: np.ndarray, proba: np.ndarray
    ) -> list[tuple[str, np.ndarray, np.ndarray]]:
        return [(self.classes[1], (np.asarray(y) == 1).astype(np.float64), np.asarray(proba)[:, 1])]


@register_task
class MultiClassTask(Task):
    """One label of K > 2 classes; the call is the most probable class."""

    kind = "multiclass"
    title = "multi-class"
    metric_name = "macro AUROC (one-vs-rest)"
    ci_name = "95% bootstrap CI"
    thresholded = False
    paired_tests = "paired bootstrap of the macro AUROC, DeLong per class, McNemar"
    metrics_text = (
        "per-class one-vs-rest AUROC (DeLong 95% CI), macro AUROC (class-stratified bootstrap "
        "95% CI)"
    )

    def headline_auroc(self, y: np.ndarray, proba: np.ndarray) -> float:
        from sklearn.metrics import roc_auc_score

        y = np.asarray(y)
        if len(np.unique(y)) < 2:
            return float("nan")
        try:
            return float(roc_auc_score(y, proba, multi_class="ovr", average="macro"))
        except ValueError:
            return float("nan")

    def evaluate(
        self,
        y_val: np.ndarray,
        p_val: np.ndarray,
        y_test: np.ndarray,
        p_test: np.ndarray,
        *,
        metrics: Any,
        seed: int,
    ) -> dict[str, Any]:
        from medtl.metrics import json_safe, multiclass_auroc_ci

        names = self.classes

        def summary(y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
            mc = multiclass_auroc_ci(y, p, names, seed=seed)
            short = {
                "per_class": {c: v["auroc"] for c, v in mc["per_class"].items()},
                **{k: mc[k] for k in ("macro", "macro_low", "macro_high")},
            }
            return json_safe({"multiclass": mc, "multiclass_auroc": short, "n": int(y.size)})

        return {"test": summary(y_test, p_test), "val": summary(y_val, p_val), "threshold": None}

    def score(
        self, y: np.ndarray, proba: np.ndarray, *, threshold: float | None, prevalence: float | None
    ) -> dict[str, Any]:
        from medtl.metrics import multiclass_auroc_ci

        # per class DeLong, macro with a seeded class-stratified bootstrap CI (as the run reports)
        mc = multiclass_auroc_ci(y, proba, self.classes, seed=0)
        return {
            "auroc": mc.get("macro"),
            "auroc_low": mc.get("macro_low"),
            "auroc_high": mc.get("macro_high"),
        }

    def compare_paired(
        self,
        y: np.ndarray,
        pa: np.ndarray,
        pb: np.ndarray,
        *,
        threshold_a: float | None,
        threshold_b: float | None,
        seed: int,
        name_a: str,
        name_b: str,
    ) -> dict[str, Any]:
        from medtl.metrics import compare_paired_multiclass

        return compare_paired_multiclass(
            y, pa, pb, self.classes, seed=seed, name_a=name_a, name_b=name_b
        )

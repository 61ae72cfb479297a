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
    "MultiLabelTask",
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
    #: True when each label is its own yes/no question (several findings per image): its own
    #: threshold, clinical numbers, ROC curve and operating point, shown per finding
    per_finding: ClassVar[bool] = False
    #: what the validation AUROC of a training history (learning curves) is, in words
    curve_metric: ClassVar[str] = "AUROC"

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
        groups_val: Any = None,
        groups_test: Any = None,
    ) -> dict[str, Any]:  # pragma: no cover
        """``metrics.json`` content: test and validation metrics at the validation-chosen operating
        point (``{"test": ..., "val": ..., "threshold": ...}``). ``groups_*``: the patient of each
        image, the unit of a bootstrap over patients (used by the kinds that resample patients)."""
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
        groups: Any = None,
    ) -> dict[str, Any]:  # pragma: no cover
        """Paired comparison of two models' (N, K) probabilities on the same images. ``groups``:
        the patient of each image, the unit of a bootstrap over patients (used by the kinds that
        resample patients; the others bootstrap images as before)."""
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

    def label_columns(self) -> list[str]:
        """The label columns of ``predictions.csv`` (one ``label`` column of class indices)."""
        return ["label"]

    def label_cells(self, label: Any) -> list[Any]:
        """One image's label as :meth:`label_columns` cells."""
        return [int(label)]

    def call_cells(self, call: Any) -> dict[str, Any]:
        """One image's call (a row of :meth:`decide`) as ``medtl predict`` columns: ``call`` =
        the class name."""
        return {"call": self.classes[int(call)]}

    def check_train_labels(self, labels: np.ndarray) -> None:
        """Refuse training labels that cannot train this task (ConfigError saying why)."""
        present = np.unique(np.asarray(labels))
        if len(present) < 2:
            raise ConfigError(
                f"The 'train' split holds a single class ({self.classes[int(present[0])]!r}); "
                "training needs at least two classes."
            )

    def check_threshold(self, threshold: Any) -> Any:
        """An operating threshold as this task stores it (a number in [0, 1]); ConfigError if not."""
        try:
            t = float(threshold)
        except (TypeError, ValueError):
            t = float("nan")
        if not (0.0 <= t <= 1.0):
            raise ConfigError(
                f"The 'threshold' must be a number in [0, 1]. Got {threshold!r} instead."
            )
        return t


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
        groups_val: Any = None,
        groups_test: Any = None,
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
        groups: Any = None,
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
        groups_val: Any = None,
        groups_test: Any = None,
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
        groups: Any = None,
    ) -> dict[str, Any]:
        from medtl.metrics import compare_paired_multiclass

        return compare_paired_multiclass(
            y, pa, pb, self.classes, seed=seed, name_a=name_a, name_b=name_b
        )


@register_task
class MultiLabelTask(Task):
    """Several findings per image: K sigmoid outputs, one yes/no question per finding.

    Labels are a float array (N, K): 1 (present), 0 (absent), NaN (not labelled). A NaN entry
    contributes nothing to the loss, the metrics or the thresholds of its finding. The headline is
    the macro AUROC over the findings that can be scored (:mod:`medtl.metrics._multilabel`).
    """

    kind = "multilabel"
    title = "multi-label"
    metric_name = "macro AUROC (scorable findings)"
    ci_name = "95% bootstrap CI"
    thresholded = True
    label_noun = "finding"
    per_finding = True
    curve_metric = "macro AUROC"
    paired_tests = "DeLong per finding (Holm-adjusted), paired bootstrap of the macro AUROC"
    metrics_text = (
        "per-finding AUROC (DeLong 95% CI), AUPRC with prevalence, sensitivity/specificity/PPV/NPV "
        "(Wilson 95% CI) at a per-finding threshold chosen on validation, calibration; macro and "
        "micro AUROC over the scorable findings (bootstrap 95% CI)"
    )

    def describe(self) -> str:
        return f"multi-label classification of {len(self.classes)} findings ({', '.join(self.classes)})"

    # -- the head ---------------------------------------------------------------------------------
    def proba_from_logits(self, logits: Any) -> np.ndarray:
        """P(finding present) per finding: the sigmoid of each logit (float64)."""
        from scipy.special import expit

        return expit(_as_float64(logits))

    def log_proba(self, logits: Any) -> Any:
        import torch

        return torch.nn.functional.logsigmoid(logits)

    def class_weights(self, labels: np.ndarray) -> Any:
        """Per-finding positive weights (a float32 tensor (K,)): negatives / positives among the
        labelled training images (1 for a finding without positives)."""
        import torch

        y = np.asarray(labels, dtype=np.float64)
        pos = np.sum(y == 1, axis=0).astype(np.float64)
        neg = np.sum(y == 0, axis=0).astype(np.float64)
        w = np.where(pos > 0, neg / np.maximum(pos, 1.0), 1.0)
        return torch.tensor(w, dtype=torch.float32)

    def loss(
        self, class_weights: Any = None, *, label_smoothing: float = 0.0, reduction: str = "mean"
    ) -> Any:
        """Binary cross-entropy with logits over the labelled entries only (NaN labels are
        masked out), positives weighted per finding by ``class_weights`` when given."""
        return _masked_bce()(class_weights, label_smoothing=label_smoothing, reduction=reduction)

    def batch_weight(self, labels: Any, class_weights: Any = None) -> float:
        """The number of labelled (image, finding) entries: a summed loss divided by it is the
        mean over labelled entries, however the batch is split into passes."""
        try:
            import torch

            if isinstance(labels, torch.Tensor):
                return float((~torch.isnan(labels.float())).sum())
        except ImportError:  # pragma: no cover
            pass
        return float(np.sum(~np.isnan(np.asarray(labels, dtype=np.float64))))

    def mean_loss(self, logits: Any, labels: np.ndarray) -> float:
        import torch

        z = _as_float64(logits)
        loss = _masked_bce()(None, reduction="mean")
        return float(loss(torch.from_numpy(z), torch.from_numpy(np.asarray(labels, np.float64))))

    def check_train_labels(self, labels: np.ndarray) -> None:
        y = np.asarray(labels, dtype=np.float64)
        if y.ndim != 2 or y.shape[1] != len(self.classes):
            raise ConfigError(
                f"Multi-label training labels must be (N, {len(self.classes)}) (one column per "
                f"finding); got shape {y.shape}."
            )
        usable = [
            (np.sum(y[:, k] == 1) > 0) & (np.sum(y[:, k] == 0) > 0) for k in range(y.shape[1])
        ]
        if not any(usable):
            raise ConfigError(
                "No finding has both a positive and a negative labelled image in the 'train' "
                "split; training needs at least one."
            )

    def label_columns(self) -> list[str]:
        """``y_<finding>`` per finding: 1, 0 or blank (not labelled)."""
        return [f"y_{c}" for c in self.classes]

    def label_cells(self, label: Any) -> list[Any]:
        return ["" if np.isnan(v) else int(v) for v in np.asarray(label, dtype=np.float64)]

    def call_cells(self, call: Any) -> dict[str, Any]:
        """``call_<finding>``: 1 (present at its threshold) or 0, per finding."""
        return {f"call_{c}": int(v) for c, v in zip(self.classes, np.asarray(call).reshape(-1))}

    # -- metrics ----------------------------------------------------------------------------------
    def headline_auroc(self, y: np.ndarray, proba: np.ndarray) -> float:
        """Macro AUROC over the findings scorable on these images (at least ``MIN_SCORABLE``
        labelled positives and negatives: the rule the reported macro uses), so the number that
        ranks epochs is the one the report shows; when no finding is scorable (a tiny validation
        split), over the findings with both classes labelled. NaN if none."""
        from sklearn.metrics import roc_auc_score

        from medtl.metrics import MIN_SCORABLE

        y, p = np.asarray(y, dtype=np.float64), np.asarray(proba, dtype=np.float64)
        both, scorable = [], []
        for k in range(y.shape[1]):
            lab = ~np.isnan(y[:, k])
            pos = int((y[lab, k] == 1).sum())
            neg = int(lab.sum()) - pos
            if pos and neg:
                auc = float(roc_auc_score(y[lab, k], p[lab, k]))
                both.append(auc)
                if pos >= MIN_SCORABLE and neg >= MIN_SCORABLE:
                    scorable.append(auc)
        aucs = scorable or both
        return float(np.mean(aucs)) if aucs else float("nan")

    def evaluate(
        self,
        y_val: np.ndarray,
        p_val: np.ndarray,
        y_test: np.ndarray,
        p_test: np.ndarray,
        *,
        metrics: Any,
        seed: int,
        groups_val: Any = None,
        groups_test: Any = None,
    ) -> dict[str, Any]:
        """Per finding the binary clinical report on its labelled images (threshold chosen per
        finding on validation); macro / micro AUROC with bootstrap CIs over patients (``groups_*``;
        images when None). ``threshold`` is a dict finding -> threshold."""
        from medtl.formatting import json_safe
        from medtl.metrics import multilabel_auroc_ci

        yv, yt = np.asarray(y_val, np.float64), np.asarray(y_test, np.float64)
        reports_t, reports_v, thresholds = {}, {}, {}
        for k, name in enumerate(self.classes):
            rt, rv = _finding_reports(yv[:, k], p_val[:, k], yt[:, k], p_test[:, k], metrics, seed)
            reports_t[name], reports_v[name] = rt, rv
            thresholds[name] = rt.get("threshold")

        def part(y: np.ndarray, p: np.ndarray, reps: dict, groups: Any) -> dict[str, Any]:
            summ = multilabel_auroc_ci(y, p, self.classes, groups=groups, seed=seed)
            return {"multilabel": summ, "per_finding": reps, "n": len(y)}

        return json_safe(
            {
                "test": part(yt, p_test, reports_t, groups_test),
                "val": part(yv, p_val, reports_v, groups_val),
                "threshold": thresholds,
                "threshold_rule": metrics.threshold_rule,
                "threshold_target": metrics.target,
            }
        )

    def auroc_of(self, metrics: dict[str, Any], split: str) -> tuple[float, list[float] | None]:
        return metrics_auroc(metrics, split)

    def compare_paired(
        self,
        y: np.ndarray,
        pa: np.ndarray,
        pb: np.ndarray,
        *,
        threshold_a: Any,
        threshold_b: Any,
        seed: int,
        name_a: str,
        name_b: str,
        groups: Any = None,
    ) -> dict[str, Any]:
        from medtl.metrics import compare_paired_multilabel

        return compare_paired_multilabel(
            y, pa, pb, self.classes, groups=groups, seed=seed, name_a=name_a, name_b=name_b
        )

    def score(
        self, y: np.ndarray, proba: np.ndarray, *, threshold: Any, prevalence: float | None
    ) -> dict[str, Any]:
        """Macro / micro AUROC with bootstrap CIs and, per finding, AUROC and sensitivity /
        specificity at the model's per-finding thresholds (fixed, not re-chosen)."""
        from medtl.metrics import multilabel_auroc_ci, operating_point

        y = np.asarray(y, np.float64)
        summ = multilabel_auroc_ci(y, proba, self.classes, seed=0)
        t = self.thresholds(threshold)
        per = {}
        for k, name in enumerate(self.classes):
            lab = ~np.isnan(y[:, k])
            row = dict(summ["per_finding"][name])
            if np.any(y[lab, k] == 1) and np.any(y[lab, k] == 0):
                op = operating_point(y[lab, k].astype(np.int64), proba[lab, k], float(t[k]))
                row.update(
                    threshold=float(t[k]),
                    sensitivity=op.get("sensitivity"),
                    specificity=op.get("specificity"),
                )
            per[name] = row
        return {
            "auroc": summ["macro"],
            "auroc_low": summ["macro_low"],
            "auroc_high": summ["macro_high"],
            "micro_auroc": summ["micro"],
            "micro_low": summ["micro_low"],
            "micro_high": summ["micro_high"],
            "n_scorable": len(summ["scorable"]),
            "unscorable": summ["unscorable"],
            "per_finding": per,
        }

    # -- operating point --------------------------------------------------------------------------
    def thresholds(self, threshold: Any = None) -> np.ndarray:
        """Per-finding thresholds (K,) from None (0.5 each), one number (the same for all), a
        sequence (one per finding) or a dict finding -> threshold (0.5 for a finding not named)."""
        k = len(self.classes)
        if threshold is None:
            return np.full(k, 0.5)
        if isinstance(threshold, dict):
            return np.array(
                [0.5 if threshold.get(c) is None else float(threshold[c]) for c in self.classes]
            )
        t = np.asarray(threshold, dtype=np.float64).reshape(-1)
        if t.size == 1:
            return np.full(k, float(t[0]))
        if t.size != k:
            raise ConfigError(
                f"The 'threshold' needs one value per finding ({k}: {self.classes}); got {t.size}."
            )
        return t

    def check_threshold(self, threshold: Any) -> Any:
        """Per-finding thresholds as a dict finding -> threshold, each in [0, 1]."""
        t = self.thresholds(threshold)
        # a threshold chosen just above a top score of 1.0 is 1.0 plus one ulp: still "never"
        t = np.where((t > 1) & (t <= 1 + 1e-9), 1.0, t)
        if not np.all((t >= 0) & (t <= 1)):
            raise ConfigError(f"Every threshold must be in [0, 1]. Got {threshold!r} instead.")
        return {c: float(v) for c, v in zip(self.classes, t)}

    def decide(self, proba: np.ndarray, threshold: Any = None) -> np.ndarray:
        """Calls (N, K): 1 where P(finding) >= its threshold (see :meth:`thresholds`)."""
        return (np.asarray(proba) >= self.thresholds(threshold)[None, :]).astype(np.int64)

    def scores(self, proba: np.ndarray) -> np.ndarray:
        return np.asarray(proba)

    def questions(
        self, y: np.ndarray, proba: np.ndarray
    ) -> list[tuple[str, np.ndarray, np.ndarray]]:
        y = np.asarray(y, dtype=np.float64)
        proba = np.asarray(proba)
        return [(c, y[:, k], proba[:, k]) for k, c in enumerate(self.classes)]


def _finding_reports(
    yv: np.ndarray, pv: np.ndarray, yt: np.ndarray, pt: np.ndarray, m: Any, seed: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One finding's clinical reports on test and on validation (its labelled images only), both
    at the threshold chosen on validation; {"error": ...} where a split cannot be scored."""
    import warnings

    from medtl.metrics import MetricInputError, clinical_report

    lv, lt = ~np.isnan(yv), ~np.isnan(yt)
    yv_, pv_ = yv[lv].astype(np.int64), pv[lv]
    yt_, pt_ = yt[lt].astype(np.int64), pt[lt]
    val_ok = len(np.unique(yv_)) == 2
    rule, target = (m.threshold_rule, m.target) if val_ok else ("fixed", 0.5)

    def report(y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
        if len(y) == 0:
            return {"error": "no labelled image for this finding", "n": 0}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                rep = clinical_report(
                    y, p, y_val=yv_ if val_ok else None, p_val=pv_ if val_ok else None,
                    rule=rule, target=target, ci_method=m.ci_method, seed=seed,
                ).to_dict()  # fmt: skip
            except MetricInputError as exc:
                return {"error": str(exc), "n": len(y)}
        if not val_ok:
            rep["threshold_source"] = "0.5 (validation holds one class of this finding)"
        return rep

    return report(yt_, pt_), report(yv_, pv_)


_MASKED_BCE: Any = None


def _masked_bce() -> Any:
    """The masked BCE-with-logits module class (built on first use: torch loads lazily)."""
    global _MASKED_BCE
    if _MASKED_BCE is not None:
        return _MASKED_BCE
    import torch
    from torch import nn

    class MaskedBCEWithLogits(nn.Module):
        """Binary cross-entropy with logits over labelled entries only (NaN targets masked)."""

        def __init__(
            self, pos_weight: Any = None, *, label_smoothing: float = 0.0, reduction: str = "mean"
        ) -> None:
            super().__init__()
            self.register_buffer("pos_weight", None if pos_weight is None else pos_weight.float())
            self.label_smoothing = float(label_smoothing)
            self.reduction = reduction

        def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            target = target.to(logits.dtype)
            mask = ~torch.isnan(target)
            t = torch.where(mask, target, torch.zeros_like(target))
            if self.label_smoothing:
                t = t * (1 - self.label_smoothing) + 0.5 * self.label_smoothing
            pw = None if self.pos_weight is None else self.pos_weight.to(logits.dtype)
            per = nn.functional.binary_cross_entropy_with_logits(
                logits, t, pos_weight=pw, reduction="none"
            )
            total = torch.where(mask, per, torch.zeros_like(per)).sum()
            if self.reduction == "sum":
                return total
            return total / mask.sum().clamp(min=1)

    _MASKED_BCE = MaskedBCEWithLogits
    return _MASKED_BCE

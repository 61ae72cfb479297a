"""The run folder: its layout (file names), what a run writes, and the reader everyone else uses.

A run folder (``runs/<id>/``, written by ``medtl compare`` / ``train`` / ``demo``) holds::

    config.yaml        the resolved config (written once, by the run that created the folder)
    splits.json        which image is in which split (de-identified ids)
    data_card.md       what the dataset holds
    skipped.csv        files that were not used, and why
    subgroups.csv      subgroup attributes per image (uid, split, sex, age band...), when asked for
    summary.json       one row per strategy, each with a status; "complete" for the whole run
    report.html/json   the report (plots/ beside it)
    <strategy>/        history.json, predictions.csv, metrics.json, summary.json, model/

This module is the one owner of those names: the runner (``experiment``), ``evaluate``, the report,
the app and the CLI import them from here. The reader reads only the run folder's own files (never
DICOM headers), so a report can be re-rendered later; missing or unreadable files become notes.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import math
import os
import platform
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from medtl._fileio import csv_row, json_loads
from medtl.errors import DatasetError
from medtl.formatting import num
from medtl.tasks import Task, metrics_auroc, task_for

logger = logging.getLogger(__name__)

# -- layout ---------------------------------------------------------------------------------------
CONFIG_FILE = "config.yaml"
SPLITS_FILE = "splits.json"
DATA_CARD_FILE = "data_card.md"
SKIPPED_FILE = "skipped.csv"
SUBGROUPS_FILE = "subgroups.csv"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.html"
REPORT_JSON_FILE = "report.json"
PLOTS_DIR = "plots"
HISTORY_FILE = "history.json"
PREDICTIONS_FILE = "predictions.csv"
METRICS_FILE = "metrics.json"
STRATEGY_SUMMARY_FILE = "summary.json"  # inside <strategy>/: written last, so it means "done"
MODEL_DIR = "model"
_STRATEGY_FILES = (HISTORY_FILE, PREDICTIONS_FILE, METRICS_FILE)

#: strategy statuses in summary.json: finished; raised an error; stopped by the user; never finished
#: (the process ended first: killed, crashed, app tab closed); not started yet.
STATUS_DONE, STATUS_FAILED, STATUS_INTERRUPTED, STATUS_INCOMPLETE = (
    "done",
    "failed",
    "interrupted",
    "incomplete",
)
STATUS_PENDING, STATUS_RUNNING = "pending", "running"  # written while the run is in progress

#: Validation AUROC and test AUROC further apart than this, either way, is flagged: validation
#: overstates test (optimistic) or understates it (a small or unrepresentative validation split).
OVERSTATE_MARGIN = 0.03
GAP_OVERSTATES, GAP_UNDERSTATES = "overstates", "understates"


def gap_flag(val_minus_test: Any) -> str | None:
    """``"overstates"`` / ``"understates"`` when validation minus test AUROC is beyond
    +-OVERSTATE_MARGIN, None when they agree (or the gap is unknown)."""
    gap = num(val_minus_test)
    if not math.isfinite(gap) or abs(gap) <= OVERSTATE_MARGIN:
        return None
    return GAP_OVERSTATES if gap > 0 else GAP_UNDERSTATES


def gap_sentence(label: str, val_minus_test: Any) -> str | None:
    """The plain-words flag for a validation-test gap of strategy ``label`` (None if no flag)."""
    flag, gap = gap_flag(val_minus_test), num(val_minus_test)
    if flag == GAP_OVERSTATES:
        return (
            f"Validation overstates {label} by {gap:.2f} AUROC on the test data: validation "
            "numbers are optimistic here (the test set may be shifted from the training site)."
        )
    if flag == GAP_UNDERSTATES:
        return (
            f"The test AUROC of {label} is {-gap:.2f} higher than its validation AUROC: the "
            "validation split is probably too small or unlike the test set, so the best epoch and "
            "the operating threshold chosen on it are uncertain."
        )
    return None


def strategy_dir(run_dir: str | os.PathLike, name: str) -> Path:
    """``<run>/<strategy>/``."""
    return Path(run_dir) / name


def model_dir(run_dir: str | os.PathLike, name: str) -> Path:
    """``<run>/<strategy>/model/``, the strategy's saved model folder."""
    return Path(run_dir) / name / MODEL_DIR


def run_dir_of_model(model_folder: str | os.PathLike) -> Path | None:
    """The run folder a model folder belongs to (``<run>/<strategy>/model``), or None."""
    m = Path(model_folder)
    run = m.parent.parent
    if m.name == MODEL_DIR and (run / SPLITS_FILE).is_file():
        return run
    return None


@dataclasses.dataclass
class Predictions:
    """Per-image predictions of one strategy (``predictions.csv``).

    Attributes:
        uid: de-identified image ids.
        split: "val" or "test" per row.
        label: class index per row.
        proba: (n, K) class probabilities, column k = P(class k).
        class_names: the K class names (from the ``p_<class>`` column names).
    """

    uid: list[str]
    split: np.ndarray
    label: np.ndarray
    proba: np.ndarray
    class_names: list[str]
    task: Task | None = None

    def __post_init__(self) -> None:
        if self.task is None:
            self.task = task_for(self.class_names)

    def subset(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(labels, scores) of one split; scores as the task draws ROC curves from them
        (``Task.scores``: (n,) P(positive) for two classes, (n, K) otherwise)."""
        m = self.split == split
        assert self.task is not None
        return self.label[m], self.task.scores(self.proba[m])


@dataclasses.dataclass
class StrategyRun:
    """Everything stored for one strategy; any file may be missing (None)."""

    name: str
    info: dict[str, Any]
    history: list[dict[str, Any]] | None = None
    predictions: Predictions | None = None
    metrics: dict[str, Any] | None = None

    @property
    def status(self) -> str:
        """``done``, ``failed``, ``interrupted`` or ``incomplete`` (never finished: the process ended
        first, or it is still running)."""
        st = self.info.get("status")
        if st in (STATUS_PENDING, STATUS_RUNNING, None) and not self.info.get("test_auroc"):
            return (
                STATUS_INCOMPLETE if st or not (self.predictions or self.metrics) else STATUS_DONE
            )
        return str(st)

    @property
    def finished(self) -> bool:
        return self.status == STATUS_DONE

    @property
    def error(self) -> str | None:
        err = self.info.get("error")
        return None if err in (None, "") else str(err)


@dataclasses.dataclass
class RunData:
    """A run folder's contents (see :func:`load_run`)."""

    run_dir: Path
    summary: dict[str, Any]
    config: dict[str, Any] | None
    data_card: str | None
    skipped: list[tuple[str, str]] | None
    strategies: dict[str, StrategyRun]
    classes: list[str]
    notes: list[str]

    @property
    def task(self) -> Task:
        """The run's task kind (recorded in ``summary.json``; older runs: from their classes)."""
        return task_for(self.classes, (self.summary.get("dataset") or {}).get("task"))

    @property
    def complete(self) -> bool:
        """True when the run finished every strategy it was asked for (each done or failed)."""
        if self.summary.get("complete") is False:
            return False
        return all(st.status in (STATUS_DONE, STATUS_FAILED) for st in self.strategies.values())

    @property
    def unfinished(self) -> list[str]:
        """Strategies that did not finish (interrupted or incomplete)."""
        return [
            n for n, st in self.strategies.items() if st.status not in (STATUS_DONE, STATUS_FAILED)
        ]

    @property
    def split_unit(self) -> str:
        """``"patient"`` when splits were made per patient, ``"image"`` otherwise (or unknown)."""
        return str((self.summary.get("dataset") or {}).get("split_unit") or "unknown")


def _read_json(path: Path, notes: list[str], rel: str) -> Any:
    if not path.is_file():
        notes.append(f"{rel} is missing; the sections that need it are skipped.")
        return None
    try:
        return json_loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        notes.append(f"{rel} could not be read ({type(exc).__name__}: {exc}); skipped.")
        return None


def read_predictions(path: str | os.PathLike) -> Predictions:
    """Read ``predictions.csv`` (columns uid, split, label, p_<class0>, p_<class1>, ...; for
    several findings per image uid, split, y_<finding>..., p_<finding>..., see
    :func:`_read_multilabel_predictions`).

    Raises:
        DatasetError: when a column is missing or a value is not a number, naming the file and row.
    """
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise DatasetError(
                f"{path}: empty file; expected a header uid,split,label,p_<class>..."
            )
        cols = [h.strip() for h in header]
        if "label" not in cols and any(c.startswith("y_") for c in cols):
            return _read_multilabel_predictions(path, cols, reader)
        missing = [c for c in ("uid", "split", "label") if c not in cols]
        pcols = [i for i, c in enumerate(cols) if c.startswith("p_")]
        if missing or len(pcols) < 2:
            raise DatasetError(
                f"{path}: columns {cols} lack {missing or 'p_<class> columns (two or more)'}; "
                "expected uid,split,label,p_<class0>,p_<class1>,..."
            )
        il = cols.index("label")
        uid, split, label, proba = _prediction_rows(
            path, reader, cols, pcols, lambda row: int(float(row[il])),
            "an integer class index and one probability per p_<class> column",
        )  # fmt: skip
    return Predictions(
        uid=uid,
        split=np.asarray(split, dtype=str),
        label=np.asarray(label, dtype=np.int64),
        proba=np.asarray(proba, dtype=np.float64).reshape(len(proba), len(pcols)),
        class_names=[cols[i][2:] for i in pcols],
    )


def _read_multilabel_predictions(path: Path, cols: list[str], reader: Any) -> Predictions:
    """The multi-label form of ``predictions.csv``: ``y_<finding>`` (1, 0 or blank = not
    labelled) and ``p_<finding>`` per finding; ``Predictions.label`` is (n, K) float with NaN."""
    ycols = [i for i, c in enumerate(cols) if c.startswith("y_")]
    pcols = [i for i, c in enumerate(cols) if c.startswith("p_")]
    names = [cols[i][2:] for i in ycols]
    if "uid" not in cols or "split" not in cols or names != [cols[i][2:] for i in pcols]:
        raise DatasetError(
            f"{path}: columns {cols[:12]} are not uid,split,y_<finding>...,p_<finding>... with the "
            "same findings in the same order."
        )
    uid, split, label, proba = _prediction_rows(
        path, reader, cols, pcols,
        lambda row: [float(row[i]) if row[i].strip() else float("nan") for i in ycols],
        "1/0/blank per y_<finding> and a probability per p_<finding>",
    )  # fmt: skip
    k = len(names)
    return Predictions(
        uid=uid,
        split=np.asarray(split, dtype=str),
        label=np.asarray(label, dtype=np.float64).reshape(len(label), k),
        proba=np.asarray(proba, dtype=np.float64).reshape(len(proba), k),
        class_names=names,
        task=task_for(names, "multilabel"),
    )


def _prediction_rows(
    path: Path,
    reader: Any,
    cols: list[str],
    pcols: list[int],
    label_of: Any,
    needs: str,
) -> tuple[list[str], list[str], list[Any], list[list[float]]]:
    """(uids, splits, labels, probabilities) of ``predictions.csv``'s rows, the label read by
    ``label_of(row)``; a row that does not parse names the file and line and what it ``needs``."""
    iu, isp = cols.index("uid"), cols.index("split")
    uid: list[str] = []
    split: list[str] = []
    label: list[Any] = []
    proba: list[list[float]] = []
    for rown, row in enumerate(reader, start=2):
        if not row:
            continue
        try:
            uid.append(row[iu])
            split.append(row[isp].strip())
            label.append(label_of(row))
            proba.append([float(row[i]) for i in pcols])
        except (IndexError, ValueError) as exc:
            raise DatasetError(
                f"{path}, line {rown}: cannot parse the row ({exc}); each row needs a uid, a "
                f"split, {needs}."
            ) from exc
    return uid, split, label, proba


def _read_skipped(path: Path) -> list[tuple[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    if rows and [c.strip().lower() for c in rows[0][:2]] in (["path", "reason"], ["id", "reason"]):
        rows = rows[1:]
    return [(r[0], r[1] if len(r) > 1 else "") for r in rows if r]


def _strategy_names(
    run_dir: Path, summary: dict[str, Any], config: dict[str, Any] | None = None
) -> list[str]:
    names = list((summary.get("strategies") or {}).keys())
    # a strategy the config asked for but the summary never reached is shown (as incomplete)
    names += [n for n in (config or {}).get("strategies") or [] if n not in names]
    if names:
        return names
    # No summary: any sub-folder holding a strategy file is a strategy (sorted for determinism).
    return sorted(
        d.name
        for d in run_dir.iterdir()
        if d.is_dir() and any((d / f).is_file() for f in _STRATEGY_FILES)
    )


def load_run(run_dir: str | os.PathLike) -> RunData:
    """Read every report input of a run folder; missing files become ``notes``.

    Args:
        run_dir: the run folder (``runs/<id>``).

    Raises:
        DatasetError: when ``run_dir`` is not a folder.

    Example:
        >>> run = load_run("runs/latest")
        >>> list(run.strategies)
        ['feature_extraction', 'fine_tuning']
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DatasetError(
            f"run_dir {str(run_dir)!r} is not a folder; pass the folder written by `medtl compare` "
            "or `medtl train` (e.g. runs/latest)."
        )
    notes: list[str] = []
    summary = _read_json(run_dir / SUMMARY_FILE, notes, SUMMARY_FILE) or {}
    if not isinstance(summary, dict):
        notes.append("summary.json is not a JSON object; ignored.")
        summary = {}
    config = None
    cfg_path = run_dir / CONFIG_FILE
    if cfg_path.is_file():
        try:
            loaded = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
            config = loaded if isinstance(loaded, dict) else None
        except (OSError, yaml.YAMLError) as exc:
            notes.append(f"config.yaml could not be read ({type(exc).__name__}); skipped.")
    else:
        notes.append("config.yaml is missing; training details are not reported.")
    card_path = run_dir / DATA_CARD_FILE
    data_card = (
        card_path.read_text(encoding="utf-8", errors="replace") if card_path.is_file() else None
    )
    skipped = None
    sk_path = run_dir / SKIPPED_FILE
    if sk_path.is_file():
        try:
            skipped = _read_skipped(sk_path)
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            notes.append(f"skipped.csv could not be read ({type(exc).__name__}); skipped.")
    else:
        notes.append("skipped.csv is missing; the list of unused files is not shown.")

    strategies: dict[str, StrategyRun] = {}
    infos = summary.get("strategies") or {}
    for name in _strategy_names(run_dir, summary, config):
        info = infos.get(name) if isinstance(infos.get(name), dict) else {}
        st = StrategyRun(name=name, info=dict(info))
        sdir = run_dir / name
        # a failed or never-finished strategy's missing files are expected, not news
        failed = st.info.get("status") in (STATUS_FAILED, STATUS_PENDING, STATUS_RUNNING)
        sub: list[str] = []
        hist = _read_json(sdir / HISTORY_FILE, sub, f"{name}/{HISTORY_FILE}")
        st.history = hist if isinstance(hist, list) else None
        st.metrics = _read_json(sdir / METRICS_FILE, sub, f"{name}/{METRICS_FILE}")
        pred_path = sdir / PREDICTIONS_FILE
        if pred_path.is_file():
            try:
                st.predictions = read_predictions(pred_path)
            except (OSError, UnicodeDecodeError, DatasetError) as exc:
                sub.append(f"{name}/predictions.csv could not be read: {exc}")
        else:
            sub.append(f"{name}/predictions.csv is missing; the sections that need it are skipped.")
        if not failed:  # a failed strategy's missing files are expected, not news
            notes.extend(sub)
        strategies[name] = st

    classes = list((summary.get("dataset") or {}).get("classes") or [])
    if not classes:
        for st in strategies.values():
            if st.predictions is not None:
                classes = list(st.predictions.class_names)
                break
    logger.debug("loaded run %s: %d strategies, classes %s", run_dir, len(strategies), classes)
    return RunData(
        run_dir=run_dir,
        summary=summary,
        config=config,
        data_card=data_card,
        skipped=skipped,
        strategies=strategies,
        classes=classes,
        notes=notes,
    )


def read_model_meta(run_dir: str | os.PathLike, name: str) -> dict[str, Any] | None:
    """``<run>/<name>/model/model.json`` as the model folder's reader returns it (weights not
    re-hashed), or None when the strategy saved no readable model."""
    import warnings

    from medtl.errors import MedtlError
    from medtl.strategies import read_meta

    folder = model_dir(run_dir, name)
    if not folder.is_dir():
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return read_meta(folder, verify_weights=False)
    except (MedtlError, OSError, ValueError) as exc:
        logger.debug("model.json of %s unreadable: %s", name, exc)
        return None


def read_split_assignment(run_dir: str | os.PathLike) -> dict[str, str]:
    """``{uid: split}`` from a run's ``splits.json`` (de-identified ids only).

    Raises:
        DatasetError: the file is missing or is not a splits file.
    """
    path = Path(run_dir) / SPLITS_FILE
    try:
        obj = json_loads(path.read_text(encoding="utf-8"))
        return {str(r["uid"]): str(r["split"]) for r in obj["samples"] if r.get("split")}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(
            f"{path}: cannot read the run's split assignment ({type(exc).__name__}: {exc})."
        ) from None


def read_patient_groups(run_dir: str | os.PathLike) -> dict[str, str]:
    """``{uid: patient}`` from a run's ``splits.json``: the keyed hash of each image's patient
    (never an identifier), the unit of a bootstrap over patients. Empty when the run has no
    readable splits file or its dataset knows no patients (callers then resample images)."""
    path = Path(run_dir) / SPLITS_FILE
    try:
        obj = json_loads(path.read_text(encoding="utf-8"))
        return {str(r["uid"]): str(r["patient_id"]) for r in obj["samples"] if r.get("patient_id")}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("%s: no patient groups (%s); bootstrapping images", path.name, exc)
        return {}


def read_summary(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """``summary.json`` of a run, or None when absent/unreadable."""
    notes: list[str] = []
    obj = _read_json(Path(run_dir) / SUMMARY_FILE, notes, SUMMARY_FILE)
    return obj if isinstance(obj, dict) else None


# -- writing ----------------------------------------------------------------------------------------
def predictions_csv(
    parts: list[tuple[str, Any, np.ndarray]], classes: list[str], task: Task | None = None
) -> str:
    """``predictions.csv`` text: uid, split, the task's label columns (``label``; ``y_<finding>``
    per finding for several findings per image), p_<class>... for (split, PreparedImages, proba)."""
    task = task or task_for(classes)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(csv_row(["uid", "split", *task.label_columns(), *[f"p_{c}" for c in classes]]))
    for split, images, proba in parts:
        for uid, lab, row in zip(images.uids, images.labels, proba):
            # shortest exact float text, not 6 decimals: p = 0.9999999 and 0.99999999 must not tie
            w.writerow(
                csv_row([uid, split, *task.label_cells(lab), *[repr(float(x)) for x in row]])
            )
    return buf.getvalue()


def skipped_csv(skipped: list[Any], salt: bytes | None = None) -> str:
    """``skipped.csv`` text: a de-identified id and the reason per unused file (no paths: file and
    folder names in hospital exports carry names and record numbers)."""
    from medtl.data import keyed_uid

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["id", "reason"])
    for s in skipped:
        w.writerow(csv_row([s.uid or keyed_uid(os.fsencode(s.path), salt), s.reason]))
    return buf.getvalue()


def evaluate_probabilities(
    y_val: np.ndarray,
    p_val: np.ndarray,
    y_test: np.ndarray,
    p_test: np.ndarray,
    cfg: Any,
    *,
    class_names: list[str] | None = None,
    task: Task | None = None,
    groups: tuple[Any, Any] | None = None,
) -> dict[str, Any]:
    """``metrics.json``: clinical metrics on test and on validation, both at the operating point
    chosen on validation, as the task defines them (:meth:`medtl.tasks.Task.evaluate`).

    ``task`` defaults to the single-label task of ``class_names`` (default "0", "1", ...).
    ``groups``: (validation, test) patient of each image, for a bootstrap over patients.
    """
    if task is None:
        names = list(class_names) if class_names else [str(k) for k in range(p_test.shape[1])]
        task = task_for(names)
    gv, gt = groups if groups is not None else (None, None)
    return task.evaluate(
        y_val, p_val, y_test, p_test, metrics=cfg.metrics, seed=cfg.train.seed,
        groups_val=gv, groups_test=gt,
    )  # fmt: skip


def operating_point_record(metrics: dict[str, Any], n_val: int) -> dict[str, Any] | None:
    """What a model folder records about its operating point, from a run's ``metrics.json``."""
    t = metrics.get("threshold")
    if t is None:
        return None
    val = metrics.get("val") or {}
    if isinstance(t, dict):  # several findings per image: one threshold per finding
        per = val.get("per_finding") or {}
        return {
            "threshold": {f: float(v) for f, v in t.items() if v is not None},
            "rule": metrics.get("threshold_rule"),
            "target": metrics.get("threshold_target"),
            "chosen_on": "val",
            "n": int(n_val),
            "on_val": {
                f: {
                    "sensitivity": (r.get("operating_point") or {}).get("sensitivity"),
                    "specificity": (r.get("operating_point") or {}).get("specificity"),
                }
                for f, r in per.items()
                if isinstance(r, dict)
            },
        }
    op = val.get("operating_point") or {}
    return {
        "threshold": float(t),
        "rule": val.get("threshold_rule"),
        "target": val.get("threshold_target"),
        "chosen_on": "val",
        "n": int(n_val),
        "sensitivity_on_val": op.get("sensitivity"),
        "specificity_on_val": op.get("specificity"),
    }


def auroc_of(metrics: dict[str, Any], split: str) -> tuple[float, list[float] | None]:
    """(AUROC, [low, high] or None) of one split of a ``metrics.json``; the macro AUROC for the
    kinds with several classes or findings (:func:`medtl.tasks.metrics_auroc`)."""
    return metrics_auroc(metrics, split)


def dataset_summary(s: dict[str, Any]) -> dict[str, Any]:
    """The part of ``summarise_dataset`` a run's summary keeps (no root path: it may name people)."""
    keep = (
        "source", "task", "classes", "counts", "n_skipped", "patient_ids", "imbalance_ratio",
        "findings",
    )  # fmt: skip
    out = {k: s[k] for k in keep if k in s}
    out.setdefault("n_skipped", len(s.get("skipped", [])))
    return out


def environment() -> dict[str, str]:
    """Versions and machine facts for the record."""
    import torch

    import medtl

    return {
        "medtl": medtl.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": str(torch.get_num_threads()),
    }


def paired_comparisons(
    run_dir: Path, summary: dict[str, Any], *, seed: int
) -> list[dict[str, Any]]:
    """Paired tests on the shared test images: every pair of finished strategies.

    The tests are the task's (:meth:`medtl.tasks.Task.compare_paired`: DeLong, paired bootstrap
    and McNemar for two classes; paired bootstrap of the macro AUROC and DeLong per class for
    more). ``groups``: each test image's hashed patient from ``splits.json``, for the kinds that
    bootstrap over patients (as their ``metrics.json`` does). Computed once, when the run
    finishes, and
    stored in ``summary.json["paired"]``; the report, the app and the CLI read them from there.
    """
    from medtl.formatting import json_safe
    from medtl.strategies import strategy_label

    preds: dict[str, Predictions] = {}
    for n in finished_strategies(summary):
        try:
            preds[n] = read_predictions(run_dir / n / PREDICTIONS_FILE)
        except (OSError, DatasetError) as exc:
            logger.warning("paired tests: %s", exc)
    patients = read_patient_groups(run_dir)
    out = []
    for pair in comparable_pairs(preds):
        a, b, pa = pair.a, pair.b, pair.pa
        assert pa.task is not None
        res = pa.task.compare_paired(
            pa.label[pair.mask_a],
            pa.proba[pair.mask_a],
            pair.pb.proba[pair.mask_b],
            threshold_a=summary["strategies"][a].get("threshold"),
            threshold_b=summary["strategies"][b].get("threshold"),
            seed=seed,
            name_a=strategy_label(a),
            name_b=strategy_label(b),
            groups=[patients.get(u) or u for u in pair.uids] if patients else None,
        )
        out.append(json_safe({"a": a, "b": b, **res}))
    return out


def finished_strategies(summary: dict[str, Any]) -> list[str]:
    """The strategies of a run's summary that finished (status ``done``), in run order."""
    return [n for n, r in summary["strategies"].items() if r.get("status") == STATUS_DONE]


@dataclasses.dataclass
class ComparablePair:
    """Two strategies' predictions on the same test images (see :func:`comparable_pairs`)."""

    a: str
    b: str
    pa: Predictions
    pb: Predictions
    mask_a: np.ndarray  # rows of ``pa`` on the test split
    mask_b: np.ndarray
    uids: list[str]  # the shared test images, in order


def comparable_pairs(preds: dict[str, Predictions]) -> Iterator[ComparablePair]:
    """Every pair of strategies (in the order of ``preds``) whose predictions cover the same test
    images in the same order with the same columns: what a paired comparison may compare."""
    names = list(preds)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            pa, pb = preds[a], preds[b]
            ma, mb = pa.split == "test", pb.split == "test"
            ua = [u for u, k in zip(pa.uid, ma) if k]
            if ua != [u for u, k in zip(pb.uid, mb) if k] or pa.proba.shape[1] != pb.proba.shape[1]:
                continue
            yield ComparablePair(a, b, pa, pb, ma, mb, ua)


#: kinds of run note (``summary.json["note_records"]``): a validation-test gap of one strategy
#: (shown once, beside that strategy's numbers), and any other note
NOTE_GAP, NOTE_GENERAL = "validation_gap", "note"


def add_note(
    summary: dict[str, Any], text: str, *, kind: str = NOTE_GENERAL, strategy: str | None = None
) -> None:
    """Record a run note: its text in ``notes`` (read by older medtl) and a record (kind, strategy,
    text) in ``note_records``, which the report and the app select by kind, never by wording."""
    summary.setdefault("notes", []).append(text)
    summary.setdefault("note_records", []).append(
        {"kind": kind, "strategy": strategy, "text": text}
    )


#: how the gap notes of runs written before note records began (read only for those runs)
_LEGACY_GAP_OPENING = "Validation overstates"


def note_records(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """A run's notes as records (kind, strategy, text). A run written before notes had records:
    its notes are general, except those equal to the gap sentence its numbers give (regenerated
    here from ``val_minus_test``) or written in that older wording."""
    from medtl.strategies import strategy_label

    recs = summary.get("note_records")
    texts = [str(n) for n in summary.get("notes") or []]
    if isinstance(recs, list):
        known = {str(r.get("text")) for r in recs if isinstance(r, dict)}
        extra = [
            {"kind": NOTE_GENERAL, "strategy": None, "text": t} for t in texts if t not in known
        ]
        return [r for r in recs if isinstance(r, dict)] + extra
    gaps = {
        gap_sentence(strategy_label(n), (r or {}).get("val_minus_test")): n
        for n, r in (summary.get("strategies") or {}).items()
    }
    return [
        {"kind": NOTE_GAP, "strategy": gaps.get(t), "text": t}
        if t in gaps or t.startswith(_LEGACY_GAP_OPENING)
        else {"kind": NOTE_GENERAL, "strategy": None, "text": t}
        for t in texts
    ]


def flag_gaps(summary: dict[str, Any]) -> None:
    """Add a note for each strategy whose validation and test AUROC differ by > OVERSTATE_MARGIN
    (either way: see :func:`gap_flag`)."""
    from medtl.strategies import strategy_label

    for name, r in summary["strategies"].items():
        text = gap_sentence(strategy_label(name), r.get("val_minus_test"))
        if text:
            add_note(summary, text, kind=NOTE_GAP, strategy=name)

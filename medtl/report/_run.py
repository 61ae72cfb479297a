"""Read a run folder (written by ``medtl train`` / ``medtl compare``) into plain Python objects.

Only the run folder's own files are read (never DICOM headers), so a report can be re-rendered
later and carries no patient identifiers beyond what the run already stored (de-identified uids).
Missing or unreadable files are not errors: they become notes and the report skips that section.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from medtl.errors import DatasetError

logger = logging.getLogger(__name__)

_RUN_FILES = ("summary.json", "config.yaml", "data_card.md", "skipped.csv")
_STRATEGY_FILES = ("history.json", "predictions.csv", "metrics.json")


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

    def subset(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(labels, probabilities) of one split; probabilities are (n,) P(class 1) if binary."""
        m = self.split == split
        p = self.proba[m]
        return self.label[m], (p[:, 1] if p.shape[1] == 2 else p)


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
        return str(
            self.info.get("status") or ("done" if self.predictions or self.metrics else "unknown")
        )

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
    def binary(self) -> bool:
        return len(self.classes) == 2


def _read_json(path: Path, notes: list[str], rel: str) -> Any:
    if not path.is_file():
        notes.append(f"{rel} is missing; the sections that need it are skipped.")
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        notes.append(f"{rel} could not be read ({type(exc).__name__}: {exc}); skipped.")
        return None


def read_predictions(path: str | os.PathLike) -> Predictions:
    """Read ``predictions.csv`` (columns uid, split, label, p_<class0>, p_<class1>, ...).

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
        missing = [c for c in ("uid", "split", "label") if c not in cols]
        pcols = [i for i, c in enumerate(cols) if c.startswith("p_")]
        if missing or len(pcols) < 2:
            raise DatasetError(
                f"{path}: columns {cols} lack {missing or 'p_<class> columns (two or more)'}; "
                "expected uid,split,label,p_<class0>,p_<class1>,..."
            )
        iu, isp, il = cols.index("uid"), cols.index("split"), cols.index("label")
        uid, split, label, proba = [], [], [], []
        for rown, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                uid.append(row[iu])
                split.append(row[isp].strip())
                label.append(int(float(row[il])))
                proba.append([float(row[i]) for i in pcols])
            except (IndexError, ValueError) as exc:
                raise DatasetError(
                    f"{path}, line {rown}: cannot parse the row ({exc}); each row needs a uid, a "
                    "split, an integer class index and one probability per p_<class> column."
                ) from exc
    return Predictions(
        uid=uid,
        split=np.asarray(split, dtype=str),
        label=np.asarray(label, dtype=np.int64),
        proba=np.asarray(proba, dtype=np.float64).reshape(len(proba), len(pcols)),
        class_names=[cols[i][2:] for i in pcols],
    )


def _read_skipped(path: Path) -> list[tuple[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["path", "reason"]:
        rows = rows[1:]
    return [(r[0], r[1] if len(r) > 1 else "") for r in rows if r]


def _strategy_names(run_dir: Path, summary: dict[str, Any]) -> list[str]:
    names = list((summary.get("strategies") or {}).keys())
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
    summary = _read_json(run_dir / "summary.json", notes, "summary.json") or {}
    if not isinstance(summary, dict):
        notes.append("summary.json is not a JSON object; ignored.")
        summary = {}
    config = None
    cfg_path = run_dir / "config.yaml"
    if cfg_path.is_file():
        try:
            loaded = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
            config = loaded if isinstance(loaded, dict) else None
        except (OSError, yaml.YAMLError) as exc:
            notes.append(f"config.yaml could not be read ({type(exc).__name__}); skipped.")
    else:
        notes.append("config.yaml is missing; training details are not reported.")
    card_path = run_dir / "data_card.md"
    data_card = (
        card_path.read_text(encoding="utf-8", errors="replace") if card_path.is_file() else None
    )
    skipped = None
    sk_path = run_dir / "skipped.csv"
    if sk_path.is_file():
        try:
            skipped = _read_skipped(sk_path)
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            notes.append(f"skipped.csv could not be read ({type(exc).__name__}); skipped.")
    else:
        notes.append("skipped.csv is missing; the list of unused files is not shown.")

    strategies: dict[str, StrategyRun] = {}
    infos = summary.get("strategies") or {}
    for name in _strategy_names(run_dir, summary):
        info = infos.get(name) if isinstance(infos.get(name), dict) else {}
        st = StrategyRun(name=name, info=dict(info))
        sdir = run_dir / name
        failed = st.status == "failed"
        sub: list[str] = []
        hist = _read_json(sdir / "history.json", sub, f"{name}/history.json")
        st.history = hist if isinstance(hist, list) else None
        st.metrics = _read_json(sdir / "metrics.json", sub, f"{name}/metrics.json")
        pred_path = sdir / "predictions.csv"
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

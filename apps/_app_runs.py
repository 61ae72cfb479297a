"""Runs in the clinician app: listing and naming run folders, progress with a time estimate, and
running a comparison that can be stopped (the run is then kept, marked interrupted).

No Streamlit import here: the page passes its progress callbacks in, so this is tested without a
browser. The run folder itself is read through ``medtl.runs`` (its owner).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medtl.formatting import format_duration


def in_epochs(name: str) -> bool:
    """True for a strategy trained in epochs (its tags say so)."""
    from medtl.strategies import strategy_tags

    return strategy_tags(name).trains_in_epochs


def _label(name: str) -> str:
    from medtl.strategies import strategy_label

    return strategy_label(name)


def _per_finding(dataset: dict[str, Any]) -> bool:
    """True when a run's dataset summary is of several findings per image (its task says so)."""
    from medtl.errors import MedtlError
    from medtl.tasks import task_for

    classes = list(dataset.get("classes") or [])
    try:
        return bool(classes) and task_for(classes, dataset.get("task")).per_finding
    except MedtlError:  # a kind this medtl does not know: its counts are read as they are
        return False


# -- the runs of the work folder -------------------------------------------------------------------


def list_runs(work: Path) -> list[Path]:
    """Run folders under ``work/runs`` that have a summary, newest first."""
    from medtl.runs import SUMMARY_FILE

    runs = [p.parent for p in (work / "runs").glob(f"*/{SUMMARY_FILE}")]
    return sorted(runs, key=lambda p: (p.stat().st_mtime, p.name), reverse=True)


def _data_name(run_dir: Path) -> str:
    """The data's name from the run's config (``data.name``; ``Synthetic demo`` for the app's
    phantom); a run that records no data path: its dataset label; an older run: the folder name."""
    import yaml

    from medtl.records import NOT_RECORDED
    from medtl.runs import CONFIG_FILE, read_summary

    try:
        cfg = yaml.safe_load((run_dir / CONFIG_FILE).read_text(encoding="utf-8")) or {}
        data = cfg.get("data") or {}
        path = Path(str(data.get("path") or ""))
    except (OSError, ValueError, AttributeError):
        return "unknown data"
    if data.get("name"):
        return str(data["name"])
    if str(path) == NOT_RECORDED:
        label = ((read_summary(run_dir) or {}).get("dataset") or {}).get("label")
        return str(label or "unknown data")
    from medtl.data import PHANTOM_MANIFEST_FILE

    if path.name == PHANTOM_MANIFEST_FILE:
        path = path.parent
    if path.name.startswith("phantom_") or str(path) == "synthetic":
        return "Synthetic demo"
    return path.name or "unknown data"


def run_state(summary: dict[str, Any]) -> tuple[bool, str]:
    """(complete, words): whether every strategy finished, and what is missing when not.

    A run whose process ended early (stopped, tab closed, crash) still says ``running`` or
    ``pending`` in its summary; those strategies are called incomplete here, never finished.
    """
    strategies = summary.get("strategies") or {}
    unfinished = [
        n
        for n, r in strategies.items()
        if (r or {}).get("status") not in ("done", "failed") or not isinstance(r, dict)
    ]
    failed = [n for n, r in strategies.items() if (r or {}).get("status") == "failed"]
    complete = bool(summary.get("complete")) and not unfinished
    if complete:
        words = "complete" if not failed else f"complete, {', '.join(map(_label, failed))} failed"
        return True, words
    if not unfinished:
        return False, "incomplete (stopped before the comparison was written)"
    return False, "INCOMPLETE: " + ", ".join(f"{_label(n)} not finished" for n in unfinished)


def run_label(run_dir: Path) -> str:
    """One line for the run selector: date, data, backbone, images and whether it is complete."""
    from medtl.runs import read_summary

    s = read_summary(run_dir) or {}
    created = str(s.get("created") or "")
    when = created.replace("T", " ")[:16] if created else Path(run_dir).name
    ds = s.get("dataset") or {}
    n = sum(int(v) for sp in (ds.get("counts") or {}).values() for v in sp.values())
    if _per_finding(ds):  # counts are positives per finding there: count the images
        n = sum(int(ds.get(f"n_{sp}") or 0) for sp in ("train", "val", "test"))
    size = f"{n} images" if n else "? images"
    _complete, words = run_state(s)
    return f"{when} · {_data_name(Path(run_dir))} ({size}) · {s.get('backbone', '?')} · {words}"


# -- progress and time left -------------------------------------------------------------------------


@dataclass
class Progress:
    """Where a comparison is, and a time-left estimate from the epochs measured so far.

    Network strategies cost about the same per epoch (same backbone, same images), so once one epoch
    has been timed every remaining epoch is priced at that rate; feature extraction (one pass, no
    epochs) is priced from the advisor's estimate when there is one, else left out (it is short).
    """

    strategies: list[str]
    epochs: int
    advised_minutes: dict[str, float] = field(default_factory=dict)
    clock: Callable[[], float] = time.monotonic
    current: str | None = None
    epoch: int = 0
    val_auroc: float | None = None
    started: float = 0.0
    epoch_seconds: list[float] = field(default_factory=list)
    _epoch_t0: float = 0.0

    def __post_init__(self) -> None:
        self.started = self._epoch_t0 = self.clock()

    @property
    def index(self) -> int:
        return self.strategies.index(self.current) if self.current in self.strategies else -1

    def start(self, name: str) -> None:
        self.current, self.epoch, self.val_auroc = name, 0, None
        self._epoch_t0 = self.clock()

    def end_epoch(self, name: str, row: dict[str, Any]) -> None:
        now = self.clock()
        self.current = name
        self.epoch = int(row.get("epoch", self.epoch + 1))
        auc = row.get("val_auroc")
        self.val_auroc = (
            float(auc) if isinstance(auc, (int, float)) and math.isfinite(auc) else None
        )
        self.epoch_seconds.append(now - self._epoch_t0)
        self._epoch_t0 = now

    def fraction(self) -> float:
        """Share of the work done, counting each strategy as one unit."""
        if self.index < 0:
            return 0.0
        part = self.epoch / max(1, self.epochs) if in_epochs(self.current) else 0.0
        return min(1.0, (self.index + part) / max(1, len(self.strategies)))

    def seconds_left(self) -> float | None:
        """Estimated seconds until the last strategy ends, or None while nothing has been timed."""
        left = self.strategies[self.index + 1 :] if self.index >= 0 else list(self.strategies)
        if self.epoch_seconds:
            per_epoch = sum(self.epoch_seconds) / len(self.epoch_seconds)
            total = 0.0
            if in_epochs(self.current):
                total += (self.epochs - self.epoch) * per_epoch
            for n in left:
                if in_epochs(n):
                    total += self.epochs * per_epoch
                else:
                    total += 60.0 * float(self.advised_minutes.get(n, 0.0) or 0.0)
            return total
        todo = ([self.current] if self.current else []) + left
        known = [self.advised_minutes.get(n) for n in todo]
        if todo and all(isinstance(m, (int, float)) and math.isfinite(m) for m in known):
            spent = self.clock() - self._epoch_t0
            return max(0.0, 60.0 * sum(float(m) for m in known) - spent)  # type: ignore[arg-type]
        return None

    def step_text(self) -> str:
        """The current step in words, e.g. 'Step 2 of 3 — Fine-tuning: epoch 1 of 3 finished'."""
        if self.current is None:
            return "Reading and preparing the images…"
        head = f"Step {self.index + 1} of {len(self.strategies)} — {_label(self.current)}"
        if not in_epochs(self.current):
            return (
                f"{head}: one pass of the images through the frozen network, then fitting the "
                "classifier (no epochs)."
            )
        if self.epoch == 0:
            return f"{head}: training epoch 1 of {self.epochs}…"
        auc = f", validation AUROC {self.val_auroc:.3f}" if self.val_auroc is not None else ""
        return f"{head}: epoch {self.epoch} of {self.epochs} finished{auc}."

    def eta_text(self) -> str:
        """'About 40 s left' (or why there is no estimate yet)."""
        left = self.seconds_left()
        if left is None:
            return "Time left: estimated after the first epoch."
        source = "" if self.epoch_seconds else " (advisor's estimate)"
        return f"About {format_duration(left, 'left')} left{source}, then the report is written."


# -- running a comparison that can be stopped -------------------------------------------------------


class ComparisonStopped(Exception):
    """The comparison was stopped; ``run_dir`` holds the run, marked interrupted/incomplete."""

    def __init__(self, run_dir: Path, cause: BaseException | None = None) -> None:
        super().__init__(f"stopped: {run_dir}")
        self.run_dir, self.cause = run_dir, cause


def run_comparison(
    cfg: Any,
    *,
    on_start: Callable[[str], None],
    on_epoch: Callable[[str, dict[str, Any]], None],
) -> dict[str, Any]:
    """``medtl.compare`` with a stop: any exception other than ``Exception`` raised by a callback
    (Streamlit's rerun/stop when the user presses Stop, leaves the page or closes the tab) becomes a
    KeyboardInterrupt inside ``compare``, which records the strategy as interrupted and the run as
    incomplete; it is then raised again as :class:`ComparisonStopped` carrying that exception.
    """
    from medtl.experiment import compare

    caught: list[BaseException] = []

    def guard(fn: Callable[..., None]) -> Callable[..., None]:
        def call(*args: Any) -> None:
            try:
                fn(*args)
            except Exception:
                raise
            except BaseException as exc:  # stop/rerun control flow, or KeyboardInterrupt
                caught.append(exc)
                raise KeyboardInterrupt from exc

        return call

    try:
        return compare(
            cfg,
            progress=False,
            on_strategy_start=guard(on_start),
            on_epoch_end=guard(on_epoch),
            write_html=True,
        )
    except KeyboardInterrupt as exc:
        raise ComparisonStopped(Path(cfg.output.out), caught[0] if caught else exc) from None

"""The run-folder reader, re-exported for the report (``medtl.runs`` owns the run folder)."""

from medtl.runs import (
    OVERSTATE_MARGIN,
    Predictions,
    RunData,
    StrategyRun,
    load_run,
    read_predictions,
)

__all__ = [
    "OVERSTATE_MARGIN",
    "Predictions",
    "RunData",
    "StrategyRun",
    "load_run",
    "read_predictions",
]

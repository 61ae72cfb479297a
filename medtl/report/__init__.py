"""Reports: a run folder -> figures, one self-contained HTML page and the same numbers as JSON.

The plot functions return :class:`matplotlib.figure.Figure` objects (no ``pyplot`` state), so the
Streamlit app can draw the same figures as the report.

Example:
    >>> from medtl.report import write_report
    >>> write_report("runs/latest")          # writes plots/*.png, report.html, report.json
    PosixPath('runs/latest/report.html')
"""

from __future__ import annotations

from medtl.report._content import display_name
from medtl.report._findings import (
    finding_curves,
    finding_predictions,
    finding_run,
    findings_numbers,
    findings_roc_figure,
    plot_roc_findings,
    unscorable_text,
)
from medtl.report._findings_html import FINDING_COLUMNS, finding_cells
from medtl.report._html import fci, fnum, fpct, fseconds
from medtl.report._plots import (
    figure_to_png,
    history_summary,
    plot_calibration,
    plot_confusion,
    plot_decision_curve,
    plot_learning_curves,
    plot_roc,
    save_figure,
)
from medtl.report._render import SECTION_TITLES
from medtl.report._subgroups import plot_subgroup_forest, subgroup_rows
from medtl.report._write import build_report, write_report
from medtl.runs import (
    OVERSTATE_MARGIN,
    Predictions,
    RunData,
    StrategyRun,
    load_run,
    read_predictions,
)

__all__ = [
    "FINDING_COLUMNS",
    "OVERSTATE_MARGIN",
    "SECTION_TITLES",
    "Predictions",
    "RunData",
    "StrategyRun",
    "build_report",
    "display_name",
    "fci",
    "figure_to_png",
    "finding_cells",
    "finding_curves",
    "finding_predictions",
    "finding_run",
    "findings_numbers",
    "findings_roc_figure",
    "fnum",
    "fpct",
    "fseconds",
    "history_summary",
    "load_run",
    "plot_calibration",
    "plot_confusion",
    "plot_decision_curve",
    "plot_learning_curves",
    "plot_roc",
    "plot_roc_findings",
    "plot_subgroup_forest",
    "read_predictions",
    "save_figure",
    "subgroup_rows",
    "unscorable_text",
    "write_report",
]

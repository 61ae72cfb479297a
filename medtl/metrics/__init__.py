"""Clinical metrics: AUROC with confidence intervals, operating points, calibration, paired tests.

Pure functions over labels ``y`` (0/1, positive class = 1) and scores ``p`` (P(positive) in [0, 1]),
plus :func:`clinical_report`, which gathers them for one model on one test set. One-class input
warns and yields NaN rather than raising; malformed input raises :class:`MetricInputError`.

Example:
    >>> from medtl.metrics import auroc_ci
    >>> auroc_ci([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])["auroc"]
    0.75
"""

from __future__ import annotations

from medtl.formatting import format_p_value, json_safe
from medtl.metrics._auroc import (
    auprc,
    auroc,
    auroc_ci,
    delong_placements,
    delong_test,
    multiclass_auroc,
)
from medtl.metrics._calibration import (
    apply_temperature,
    brier,
    calibration_slope_intercept,
    decision_curve,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
    reliability_curve,
)
from medtl.metrics._learning import learning_curve_summary
from medtl.metrics._multiclass import compare_paired_multiclass, multiclass_auroc_ci
from medtl.metrics._multilabel import (
    MIN_SCORABLE,
    compare_paired_multilabel,
    multilabel_auroc_ci,
    weighted_auc,
)
from medtl.metrics._paired import compare_paired, holm, mcnemar_test
from medtl.metrics._report import ClinicalReport, clinical_report
from medtl.metrics._subgroups import (
    gap_sentences,
    subgroup_paired,
    subgroup_report,
    subgroup_report_multiclass,
    subgroup_report_multilabel,
    subgroup_table,
)
from medtl.metrics._threshold import (
    choose_threshold,
    operating_point,
    ppv_npv_at_prevalence,
    wilson_ci,
)
from medtl.metrics._validate import MetricInputError, check_pair

__all__ = [
    "MIN_SCORABLE",
    "ClinicalReport",
    "MetricInputError",
    "apply_temperature",
    "auprc",
    "auroc",
    "auroc_ci",
    "brier",
    "calibration_slope_intercept",
    "check_pair",
    "choose_threshold",
    "clinical_report",
    "compare_paired",
    "compare_paired_multiclass",
    "compare_paired_multilabel",
    "decision_curve",
    "delong_placements",
    "delong_test",
    "expected_calibration_error",
    "fit_temperature",
    "format_p_value",
    "gap_sentences",
    "holm",
    "json_safe",
    "learning_curve_summary",
    "mcnemar_test",
    "multiclass_auroc",
    "multiclass_auroc_ci",
    "multilabel_auroc_ci",
    "operating_point",
    "ppv_npv_at_prevalence",
    "reliability_bins",
    "reliability_curve",
    "subgroup_paired",
    "subgroup_report",
    "subgroup_report_multiclass",
    "subgroup_report_multilabel",
    "subgroup_table",
    "weighted_auc",
    "wilson_ci",
]

"""The clinician app's logic, without Streamlit: data input, safety checks, tables and predictions.

Everything the page file (``medtl_app.py``) shows is computed here by small functions over medtl's
public API, so it can be tested without a browser. All files the app writes go under one work folder
(``work_dir()``; default ``./medtl_app_work``, or the ``MEDTL_APP_WORK`` environment variable, which is
read only here, in the app layer).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from _app_findings import example_samples, summary_per_finding
from _app_inputs import (  # noqa: F401  (re-exported for the page)
    ENV_WORK,
    MAX_IMAGE_MB,
    MAX_ZIP_MB,
    AppInputError,
    check_size,
    demo_dataset,
    extract_zip,
    prepare_upload,
    read_single,
    safe_meta,
    save_single_upload,
    server_folder,
    work_dir,
)
from _app_runs import (  # noqa: F401  (re-exported for the page)
    ComparisonStopped,
    Progress,
    list_runs,
    run_comparison,
    run_label,
    run_state,
)
from _app_text import (  # noqa: F401  (re-exported for the page)
    JARGON,
    METRIC_HELP,
    advice_dict,
    advice_view,
    humanise,
    plain_error,
    threshold_source,
)

from medtl.backbones import DEFAULT_BACKBONE
from medtl.errors import MedtlError
from medtl.report import fnum, fpct, fseconds

logger = logging.getLogger(__name__)


def candidate_strategies() -> list[str]:
    """The strategies the app compares by default: the registry's default comparison without its
    controls (from scratch is offered as an extra)."""
    from medtl.strategies import list_strategies, strategy_tags

    return [n for n in list_strategies(default=True) if not strategy_tags(n).control]


def extra_strategies() -> list[tuple[str, str]]:
    """(name, checkbox text) of every other registered strategy, described by its tags."""
    from medtl.strategies import list_strategies, strategy_tags

    core = set(candidate_strategies())
    return [
        (n, f"Also {strategy_label(n).lower()} ({strategy_tags(n).summary})")
        for n in list_strategies()
        if n not in core
    ]


def strategy_label(name: str, *, long: bool = False) -> str:
    """Human name of a strategy (owned by medtl.strategies); ``long`` adds what it trains."""
    from medtl.strategies import strategy_description
    from medtl.strategies import strategy_label as label

    return f"{label(name)} ({strategy_description(name)})" if long else label(name)


# -- data card ------------------------------------------------------------------------------------


@dataclass
class DataView:
    """What the Data section shows."""

    path: Path
    summary: dict[str, Any]
    examples: list[tuple[str, np.ndarray]] = field(default_factory=list)  # (class, image in [0, 1])
    skipped: list[dict[str, str]] = field(default_factory=list)
    split_unit: str = "image"  # "patient", "image" or "given" (medtl.experiment.split_unit)
    n_patients: int = 0


def describe_dataset(path: str | Path, *, examples_per_class: int = 2) -> DataView:
    """Load a dataset, summarise it (data card facts) and read a few example images correctly."""
    from medtl.data import load_dataset, source_info, summarise_dataset
    from medtl.errors import ImageReadError
    from medtl.experiment import split_unit
    from medtl.io import read_image

    try:
        # private, but it is how compare() reads the phantom (through its manifest, per patient)
        from medtl.data import phantom_manifest

        ds = load_dataset(phantom_manifest(str(path)), min_per_class=2, progress=False)
    except MedtlError as exc:
        raise AppInputError(f"This dataset cannot be used: {exc}") from exc
    summary = summarise_dataset(ds, max_files=16)
    examples: list[tuple[str, np.ndarray]] = []
    if not source_info(ds.source).images_in_file:
        if summary_per_finding(summary):  # several findings per image: captioned by findings
            picks = example_samples(ds, 3 * examples_per_class)
        else:
            picks = [
                (cname, s)
                for ci, cname in enumerate(ds.classes)
                for s in [s for s in ds.samples if s.label == ci][:examples_per_class]
            ]
        for cname, s in picks:
            try:
                img, _meta = read_image(s.path)  # windowed, MONOCHROME1 inverted
            except ImageReadError:
                continue
            examples.append((cname, img))
    return DataView(
        Path(path),
        summary,
        examples,
        list(summary.get("skipped", [])),
        split_unit=split_unit(ds),
        n_patients=len({s.patient_id for s in ds.samples if s.patient_id}),
    )


def split_sentence(unit: str, n_patients: int = 0) -> str:
    """Whether training, validation and test images are separated per patient or per image."""
    if unit == "patient":
        return (
            f"**Split per patient**: the {n_patients} patients are each put in one split "
            "(training, validation or test), so no patient's images are both learned from and "
            "tested on."
        )
    if unit == "given":
        return (
            "**Split as given by the dataset's own folders** (train/ and test/); medtl cannot check "
            "whether a patient appears in both."
        )
    return (
        "**Split per image**: no patient identifiers are known, so two images of the same patient "
        "may land in training and in test, which can make the results look better than they are. "
        "Provide a CSV manifest with a patient column to split per patient."
    )


def counts_table(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows 'Class, Training, Validation, Test, Total' for the data card (only 'Images' per class
    when the dataset has no splits of its own yet: they are made when a comparison runs)."""
    counts = summary.get("counts", {})
    names = {
        "train": "Training",
        "val": "Validation",
        "test": "Test",
        "unassigned": "Not yet split",
    }
    only_unassigned = set(counts) <= {"unassigned"}
    rows = []
    for cname in summary.get("classes", []):
        row: dict[str, Any] = {"Class": cname}
        if not only_unassigned:
            for sp in ("train", "val", "test", "unassigned"):
                if sp in counts:
                    row[names[sp]] = counts[sp].get(cname, 0)
        row["Images" if only_unassigned else "Total"] = summary.get("class_totals", {}).get(
            cname, 0
        )
        rows.append(row)
    return rows


# -- advice --------------------------------------------------------------------------------------


def get_advice(data_path: str | Path, work: Path, *, backbone: str, image_size: int | None) -> Any:
    """The advisor's recommendation, or raise AppInputError when the advisor is not available."""
    try:
        from medtl.advisor import advise
    except ImportError as exc:
        raise AppInputError(
            "The advisor is not available in this installation of medtl yet; you can still run "
            "the comparison below to see which strategy works best on your data."
        ) from exc
    return advise(
        data_path,
        backbone=backbone,
        image_size=image_size,
        budget_minutes=30,
        cache_dir=work / "cache",
        progress=False,
    )


# -- comparison -----------------------------------------------------------------------------------


def build_config(
    data_path: str | Path,
    work: Path,
    *,
    backbone: str = DEFAULT_BACKBONE,
    epochs: int = 3,
    image_size: int = 128,
    strategies: list[str] | None = None,
    batch_size: int = 32,
    run_name: str | None = None,
    positive_class: str | None = None,
) -> Any:
    """An ExperimentConfig whose run folder and caches are inside the work folder."""
    from medtl.config import config_from_dict

    name = run_name or time.strftime("run_%Y%m%d_%H%M%S")
    return config_from_dict(
        {
            "name": name,
            "data": {
                "path": str(data_path),
                # run folders keep no data path; the app's own phantom keeps its name
                "name": "Synthetic demo" if Path(data_path).name.startswith("phantom_") else None,
                "min_per_class": 2,
                "positive_class": positive_class,
            },
            "model": {"backbone": backbone, "image_size": int(image_size)},
            "strategies": list(strategies or candidate_strategies()),
            "train": {"epochs": int(epochs), "batch_size": int(batch_size), "seed": 0},
            "output": {"out": str(work / "runs" / name), "cache_dir": str(work / "cache")},
        }
    )


def _status_words(r: dict[str, Any]) -> str:
    st = r.get("status")
    if st == "done":
        return "finished"
    if st == "failed":
        return "failed: " + str(r.get("error") or "unknown error")[:160]
    if st == "interrupted":
        return "INCOMPLETE: stopped"
    return "INCOMPLETE: not finished"


def strategy_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per strategy: status, test AUROC with CI, validation gap (flagged), time, curve shape.

    Short column names, so a table never clips them; their meanings are in ``METRIC_HELP``.
    """
    from medtl.runs import OVERSTATE_MARGIN

    rows = []
    for name, r in (summary.get("strategies") or {}).items():
        r = r if isinstance(r, dict) else {}
        row: dict[str, Any] = {"Strategy": strategy_label(name, long=True)}
        row["Status"] = _status_words(r)
        if r.get("status") != "done":
            rows.append(row)
            continue
        gap = r.get("val_minus_test")
        ok = gap is not None and math.isfinite(float(gap))
        lo, hi = r.get("test_auroc_ci") or (None, None)
        row.update(
            {
                "Test AUROC": fnum(r.get("test_auroc")),
                "95% CI": f"{fnum(lo)}–{fnum(hi)}" if lo is not None else "n/a",
                "Validation AUROC": fnum(r.get("val_auroc")),
                "Validation − test": (
                    f"{float(gap):+.3f}" + (" ⚠" if float(gap) > OVERSTATE_MARGIN else "")
                    if ok
                    else "n/a"
                ),
                "Training time": fseconds(r.get("train_seconds")),
                "Start": fnum(r.get("start")),
                "Slope / epoch": _slope(r, name),
                "Best": fnum(r.get("asymptote")),
            }
        )
        rows.append(row)
    return rows


def _slope(r: dict[str, Any], name: str) -> str:
    from _app_runs import in_epochs

    if not in_epochs(name):
        return "— (no epochs)"
    return fnum(r.get("slope"))


def gap_warnings(summary: dict[str, Any]) -> list[str]:
    """Plain sentences for strategies whose validation and test AUROC disagree, either way
    (:func:`medtl.runs.gap_flag`; said once)."""
    from medtl.runs import GAP_OVERSTATES, GAP_UNDERSTATES, gap_flag

    out = []
    for name, r in (summary.get("strategies") or {}).items():
        gap = (r or {}).get("val_minus_test")
        flag = gap_flag(gap) if (r or {}).get("status") == "done" else None
        if flag == GAP_OVERSTATES:
            out.append(
                f"{strategy_label(name)}: the validation AUROC is {float(gap):.2f} higher than on "
                "the test images (⚠ in the table), so its validation numbers are optimistic; the "
                "test images may differ from the training images."
            )
        elif flag == GAP_UNDERSTATES:
            out.append(
                f"{strategy_label(name)}: the validation AUROC is {-float(gap):.2f} lower than on "
                "the test images, so the validation split is small or unlike the test images; "
                "trust the test numbers and their intervals."
            )
    return out


def run_notes(summary: dict[str, Any]) -> list[str]:
    """The run's notes in human words, without the gap notes (``gap_warnings`` says those once)."""
    from medtl.runs import NOTE_GAP, note_records

    return [humanise(str(r["text"])) for r in note_records(summary) if r["kind"] != NOTE_GAP]


def paired_sentences(summary: dict[str, Any]) -> list[str]:
    """The paired test of each pair of strategies, in words with human names."""
    return [humanise(str(pr["summary"])) for pr in summary.get("paired") or [] if pr.get("summary")]


def _one_question(task: Any) -> bool:
    """True for a task with one yes/no question and its threshold (two classes); several findings
    per image are shown one finding at a time (``_app_findings``, ``medtl.report.finding_run``)."""
    return bool(task.thresholded and not task.per_finding)


def curves(run: Any, split: str = "test") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """strategy label -> (labels, P(positive)) of one split, for finished binary strategies."""
    out = {}
    for name, st in run.strategies.items():
        if not st.finished or st.predictions is None or not _one_question(st.predictions.task):
            continue
        y, p = st.predictions.subset(split)
        if len(y):
            out[strategy_label(name)] = (y, p)
    return out


def learning_histories(run: Any) -> dict[str, list[dict[str, Any]]]:
    """Label -> history rows for the learning-curve plot: human names, C to one significant digit
    (the plot prints it with ``:g``; ``C = 0.03`` reads better than ``C = 0.0316228``)."""
    out = {}
    for name, st in run.strategies.items():
        if not st.finished or not st.history:
            continue
        rows = []
        for r in st.history:
            r = dict(r)
            c = r.get("C")
            if isinstance(c, (int, float)) and math.isfinite(c) and c > 0:
                r["C"] = float(f"{c:.1g}")
            rows.append(r)
        out[strategy_label(name)] = rows
    return out


def integer_epoch_axis(fig: Any, histories: dict[str, list[dict[str, Any]]]) -> Any:
    """Give the learning-curve figure whole-epoch limits (a one-epoch run otherwise gets an axis
    from 0.945 to 1.05) and an AUROC axis at least 0.1 tall, so that a difference of 0.02 does
    not fill the plot."""
    epochs = [int(r.get("epoch", 0)) for rows in histories.values() for r in rows if "C" not in r]
    top = max(epochs, default=1)
    for ax in fig.axes[:1]:
        ax.set_xlim(0.5, top + 0.5)
        ax.set_xticks(range(1, top + 1, max(1, top // 10)))
        lo, hi = ax.get_ylim()
        if hi - lo < 0.1:
            mid = (lo + hi) / 2
            ax.set_ylim(max(0.0, mid - 0.05), min(1.0, max(0.0, mid - 0.05) + 0.1))
    return fig


# -- operating point ------------------------------------------------------------------------------

OP_SAVED, OP_TARGET, OP_THRESHOLD = "saved", "target", "threshold"


def thresholds_for(run: Any, mode: str, value: float | None = None) -> dict[str, tuple[float, str]]:
    """strategy -> (threshold, how it was chosen) for every finished binary strategy.

    ``saved``: each model's own operating point (chosen on the validation images when the run was
    made); ``target``: the threshold reaching sensitivity ``value`` on the validation images;
    ``threshold``: the same ``value`` for every model, chosen by the user.
    """
    from medtl.metrics import choose_threshold

    out = {}
    for name, st in run.strategies.items():
        if not st.finished or st.predictions is None or not _one_question(st.predictions.task):
            continue
        if mode == OP_THRESHOLD:
            out[name] = (float(value), "your threshold")  # type: ignore[arg-type]
            continue
        yv, pv = st.predictions.subset("val")
        if mode == OP_TARGET:
            t = choose_threshold(yv, pv, rule="sensitivity", target=float(value))  # type: ignore[arg-type]
            out[name] = (float(t), f"sensitivity ≥ {float(value):.0%} on validation images")  # type: ignore[arg-type]
            continue
        saved = (run.summary.get("strategies") or {}).get(name, {}).get("threshold")
        rule = run.summary.get("threshold_rule") or "youden"
        if saved is None:
            saved = choose_threshold(yv, pv, rule="youden")
        out[name] = (float(saved), f"the model's own ({rule}, chosen on validation images)")
    return out


def operating_points(
    run: Any,
    thresholds: dict[str, tuple[float, str]],
    *,
    split: str = "test",
    prevalence: float | None = None,
) -> dict[str, dict[str, Any]]:
    """Operating point of every strategy in ``thresholds`` on one split's stored predictions.

    PPV/NPV at ``prevalence`` get an approximate interval by plugging the Wilson bounds of
    sensitivity and specificity into Bayes' rule (hand-written: no library offers it; PPV and NPV
    both increase with sensitivity and specificity, so the bounds are monotone).
    """
    from medtl.metrics import operating_point, ppv_npv_at_prevalence

    out = {}
    for name, (thr, how) in thresholds.items():
        y, p = run.strategies[name].predictions.subset(split)
        if not len(y):
            continue
        op = operating_point(y, p, float(thr), prevalence=prevalence)
        op["how"] = how
        if prevalence is not None:
            lo = ppv_npv_at_prevalence(op["sensitivity_low"], op["specificity_low"], prevalence)
            hi = ppv_npv_at_prevalence(op["sensitivity_high"], op["specificity_high"], prevalence)
            op["ppv_at_prevalence_low"], op["ppv_at_prevalence_high"] = lo[0], hi[0]
            op["npv_at_prevalence_low"], op["npv_at_prevalence_high"] = lo[1], hi[1]
        out[name] = op
    return out


NA_REASONS = {
    "sens": "n/a: no images with the finding",
    "spec": "n/a: no normal images",
    "ppv": "n/a: no image called positive",
    "npv": "n/a: no image called negative",
}


def _pct(o: dict[str, Any], key: str, reason: str, lo: str | None = None, hi: str | None = None):
    v = o.get(key)
    if v is None or not math.isfinite(float(v)):
        return NA_REASONS[reason]
    return fpct(v, o.get(lo or f"{key}_low"), o.get(hi or f"{key}_high"))


def operating_rows(ops: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """A table (rows = measures, one column per model) with 95% CIs, in percent; every "n/a" says
    why (e.g. NPV when no image was called negative)."""
    measures = [
        ("Threshold (probability)", lambda o: f"{o['threshold']:.3f}"),
        ("Sensitivity (cases caught)", lambda o: _pct(o, "sensitivity", "sens")),
        ("Specificity (normals cleared)", lambda o: _pct(o, "specificity", "spec")),
    ]
    if any(o.get("deployment_prevalence") for o in ops.values()):
        measures += [
            ("PPV at your prevalence", lambda o: _pct(o, "ppv_at_prevalence", "ppv")),
            ("NPV at your prevalence", lambda o: _pct(o, "npv_at_prevalence", "npv")),
        ]
    measures += [
        ("PPV on these images", lambda o: _pct(o, "ppv", "ppv")),
        ("NPV on these images", lambda o: _pct(o, "npv", "npv")),
        ("Missed cases (false negatives)", lambda o: str(o["fn"])),
        ("False alarms (false positives)", lambda o: str(o["fp"])),
    ]  # fmt: skip
    rows = []
    for label, fn in measures:
        row = {"Measure": label}
        for name, op in ops.items():
            row[strategy_label(name)] = fn(op)
        rows.append(row)
    return rows


# -- single image ---------------------------------------------------------------------------------


def model_dirs(run_dir: Path) -> dict[str, Path]:
    """strategy -> saved model folder, for the finished strategies of a run (``medtl.runs`` layout)."""
    from medtl.runs import load_run, model_dir

    run = load_run(run_dir)
    return {
        name: model_dir(run_dir, name)
        for name, st in run.strategies.items()
        if st.finished and (model_dir(run_dir, name) / "model.json").is_file()
    }


@dataclass
class SinglePrediction:
    """One model's answer for one image: probabilities, the call at its operating point, heatmap."""

    proba: np.ndarray
    call: str
    positive: str | None
    threshold: float | None
    threshold_source: str
    heat: np.ndarray


def predict_single(estimator: Any, path: Path) -> SinglePrediction:
    """Prepare one image exactly as the model's training images were (``estimator.prepare``), and
    give its probabilities, the call at the model's operating point and a Grad-CAM heatmap."""
    from medtl.explain import grad_cam

    prep = prepare_upload(estimator, path)
    proba = np.asarray(estimator.predict_proba(prep))
    thr, source = estimator.threshold_for(None)
    k = int(estimator.decide(proba, None)[0])
    classes = list(estimator.classes_)
    pos = estimator.positive_class_
    heat = grad_cam(estimator, prep.pixels[0], class_index=classes.index(pos) if pos else k)
    return SinglePrediction(proba[0], classes[k], pos, thr, source, heat)


def meta_rows(meta: dict[str, Any]) -> list[dict[str, str]]:
    """The (already PHI-free) image metadata as 'Property, Value' rows with readable names."""
    names = {
        "format": "File format",
        "modality": "Modality",
        "photometric_interpretation": "Photometric interpretation",
        "inverted": "Inverted (MONOCHROME1 → bright = dense)",
        "bits_stored": "Bits stored",
        "rows": "Rows (pixels)",
        "columns": "Columns (pixels)",
        "n_frames": "Frames in the file",
        "frame_used": "Frame used",
        "window_used": "Intensity window used",
        "transfer_syntax": "Transfer syntax (compression)",
        "pixel_spacing": "Pixel spacing (mm)",
        "original_dtype": "Stored pixel type",
    }
    rows = []
    for k, v in safe_meta(meta).items():
        if isinstance(v, bool):
            v = "yes" if v else "no"
        elif isinstance(v, (list, tuple)):
            v = " × ".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v)
        rows.append({"Property": names.get(k, k.replace("_", " ")), "Value": str(v)})
    return rows


def heatmap_figure(image: np.ndarray, heat: np.ndarray, title: str) -> Any:
    """The image with its Grad-CAM heatmap overlaid (``medtl.explain.overlay``) and a colour bar
    that says what the colours mean."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    from medtl.explain import overlay

    gray = image if image.ndim == 2 else image.mean(-1)
    fig = Figure(figsize=(4.2, 3.6), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(overlay(gray, heat))  # overlay's default colour map is "jet"
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    bar = fig.colorbar(ScalarMappable(Normalize(0, 1), colormaps["jet"]), ax=ax, shrink=0.85)
    bar.set_ticks([0, 0.5, 1], labels=["none", "some", "strongest"])
    bar.set_label("influence on the call", fontsize=8)
    return fig

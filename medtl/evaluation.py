"""Batch evaluation of saved models on datasets, and plain prediction on files.

``evaluate`` writes one table (CSV + Markdown), one row per model x dataset, with every clinical metric and
its CI. Each finished row is stored as it completes, so an interrupted batch resumes without recomputing.
Under ``torchrun`` the rows are spread over the processes (each row computed and written by one of them)
and rank 0 writes the tables.

Both read everything about the model from its folder (``model.json``): how images are prepared, the
classes, and the operating point; an explicit argument may override the threshold, and the output
says so. (The module is ``medtl.evaluation``, not ``medtl.evaluate``, so that importing it never
replaces the function ``medtl.evaluate``.)
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from medtl._fileio import atomic_write_json, atomic_write_text, check_output_file, csv_record
from medtl.data import Sample, SkippedFile
from medtl.errors import ConfigError, DatasetError
from medtl.strategies import META_FILE, MODEL_FILE, ModelFileError

log = logging.getLogger(__name__)

COLUMNS = [
    "model",
    "strategy",
    "dataset",
    "split",
    "n",
    "n_pos",
    "prevalence",
    "auroc",
    "auroc_low",
    "auroc_high",
    "auprc",
    "threshold",
    "threshold_source",
    "sensitivity",
    "sens_low",
    "sens_high",
    "specificity",
    "spec_low",
    "spec_high",
    "ppv",
    "npv",
    "ppv_deploy",
    "npv_deploy",
    "lr_pos",
    "lr_neg",
    "f1",
    "brier",
    "ece",
    "n_skipped",
    # with --by: one extra row per subgroup ("all" on the dataset's own row)
    "subgroup",
    "too_small",
    "fnr",
    "fnr_low",
    "fnr_high",
    "auroc_gap",
    "auroc_gap_low",
    "auroc_gap_high",
    "auroc_gap_p_holm",
    "fnr_gap",
    "fnr_gap_p_holm",
]


def find_models(paths: list[str]) -> list[Path]:
    """Expand model folders and run folders (every ``*/model`` inside) into model folders."""
    out: list[Path] = []
    for p in map(Path, paths):
        if (p / META_FILE).exists():
            out.append(p)
        elif p.is_dir():
            found = sorted(m.parent for m in p.glob("*/model/model.json"))
            if not found:
                raise ConfigError(
                    f"{p} holds no saved model (no model.json, no */model/model.json)."
                )
            out.extend(found)
        else:
            raise ConfigError(f"Model path {str(p)!r} does not exist.")
    return out


def _row_key(
    model_dir: Path,
    dataset: tuple[str, str | None],
    split: str,
    threshold: Any,
    prevalence: Any,
    salt: bytes,
    by: Any = None,
) -> str:
    """One row's identity: the model's files (both, so a changed operating point is a new row), the
    dataset (its path keyed with ``salt``, so the row's file name cannot be tested against a guessed
    path) and name, split, threshold and prevalence."""
    from medtl.data import keyed_uid

    parts = [str(model_dir.resolve())]
    for f in (MODEL_FILE, META_FILE):
        st = (model_dir / f).stat()
        parts.append(f"{st.st_size}:{st.st_mtime_ns}")
    path, name = dataset
    parts += [keyed_uid(str(Path(path).resolve()), salt), str(name), split]
    parts += [str(threshold), str(prevalence)]
    if by:
        parts.append(",".join(by))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


def dataset_entries(datasets: list[Any]) -> list[tuple[str, str | None]]:
    """``(path, name)`` per dataset: a path, or a mapping ``{path: ..., name: ...}`` (batch file).

    The name is how the table calls the dataset (default: ``dataset-`` and the start of its
    fingerprint); the path is never written to a table, a row file or the printed output.
    """
    out: list[tuple[str, str | None]] = []
    for i, d in enumerate(datasets):
        if isinstance(d, dict):
            unknown = set(d) - {"path", "name"}
            if unknown or not isinstance(d.get("path"), str):
                raise ConfigError(
                    f"datasets[{i}] must be a path or a mapping {{path: ..., name: ...}}. Got "
                    f"keys {sorted(map(str, d))}."
                )
            out.append((d["path"], None if d.get("name") is None else str(d["name"])))
        elif isinstance(d, str | Path):
            out.append((str(d), None))
        else:
            raise ConfigError(
                f"datasets[{i}] must be a path or a mapping {{path: ..., name: ...}}. Got "
                f"{type(d).__name__}."
            )
    return out


def evaluate(
    models: list[str] | None = None,
    datasets: list[str | dict[str, Any]] | None = None,
    *,
    batch_file: str | None = None,
    out: str = "evaluation",
    split: str = "all",
    threshold: float | None = None,
    prevalence: float | None = None,
    progress: bool = True,
    device: str = "cpu",
    by: str | list[str] | None = None,
) -> dict[str, Any]:
    """Evaluate every model on every dataset; returns {"rows", "csv", "markdown"}.

    Args:
        models: model folders or run folders.
        datasets: labelled datasets (any source ``load_dataset`` reads), e.g. an external test site:
            paths, or mappings ``{path: ..., name: ...}``. Records name a dataset by its ``name``
            or, without one, ``dataset-`` and the start of its fingerprint: never by its path.
        batch_file: YAML with keys ``models``, ``datasets`` and optional ``out``, ``split``, ``threshold``,
            ``prevalence`` (arguments given here take precedence over the file).
        split: ``all`` (every image of the dataset), or ``train``/``val``/``test`` of the run the
            model comes from, as recorded in that run's ``splits.json`` (the dataset must be the
            run's own; any other dataset allows only ``all``).
        threshold: operating threshold (two classes); default: the model's own operating point
            (chosen on validation when it was trained), recorded in its ``model.json``.
        prevalence: deployment prevalence for PPV/NPV.
        device: where the models predict (``cpu``, ``cuda``, ``auto``); in a ``torchrun`` job each
            process takes a strided share of the rows (and its own GPU).
        by: subgroup attributes (``"sex,view"``; manifest columns or DICOM headers, see
            :mod:`medtl.subgroups`): after each model x dataset row, one row per group with its
            numbers and its gap to the rest (``subgroup`` column; ``all`` on the main row).

    Example:
        >>> medtl.evaluate(["runs/a"], ["site_b/"], out="eval")["csv"]
    """
    from medtl._options import look_up_option

    if batch_file:
        models, datasets, out, split, threshold, prevalence, by = _with_batch_file(
            batch_file, models, datasets, out, split, threshold, prevalence, by
        )
    look_up_option("split", split, ["all", "train", "val", "test"])
    from medtl.subgroups import parse_subgroups

    by = parse_subgroups(by, "by") or None
    if not models or not datasets:
        raise ConfigError(
            "evaluate needs at least one model and one dataset (--data or a --batch file)."
        )
    from medtl import distributed

    model_dirs = find_models(list(models))
    out_dir = Path(out)
    (out_dir / "rows").mkdir(parents=True, exist_ok=True)
    jobs = [(m, d) for d in dataset_entries(list(datasets)) for m in model_dirs]
    # one id key for the batch (it also keys the row files), made before the rows start
    key_salt = distributed.on_main(lambda: _salt(out_dir / ".cache"))
    done = _evaluate_share(
        jobs, out_dir, split, threshold, prevalence, key_salt, progress, device, by
    )
    gathered = sorted(
        (p for part in distributed.all_gather_object(done) for p in part), key=lambda p: p[0]
    )
    for _, r in gathered:
        if isinstance(r, BaseException):
            raise r if isinstance(r, ConfigError) else ConfigError(str(r))
    rows = [x for _, r in gathered for x in (r, *r.get("subgroup_rows", []))]
    result = {"rows": rows, "csv": str(out_dir / "evaluation.csv"), "markdown": _markdown(rows)}
    if distributed.is_main():
        _write_tables(out_dir, rows)
    distributed.barrier()  # the tables exist when any process returns
    return result


def _with_batch_file(
    batch_file: str,
    models: list[str] | None,
    datasets: list[str | dict[str, Any]] | None,
    out: str,
    split: str,
    threshold: float | None,
    prevalence: float | None,
    by: str | list[str] | None,
) -> tuple[list[Any], list[Any], str, str, float | None, float | None, Any]:
    """The arguments of :func:`evaluate` with the batch file's fields added (arguments win)."""
    from medtl.config import load_yaml_text

    spec = load_yaml_text(Path(batch_file).read_text(), f"Batch file {batch_file}") or {}
    known = {"models", "datasets", "out", "split", "threshold", "prevalence", "by"}
    unknown = set(spec) - known
    if unknown:
        raise ConfigError(f"Unknown field(s) {sorted(unknown)} in batch file {batch_file}.")
    models = (models or []) + list(spec.get("models", []))
    datasets = (datasets or []) + list(spec.get("datasets", []))
    out = spec.get("out", out) if out == "evaluation" else out
    split = spec.get("split", split)
    threshold = threshold if threshold is not None else spec.get("threshold")
    prevalence = prevalence if prevalence is not None else spec.get("prevalence")
    by = by if by is not None else spec.get("by")
    return models, datasets, out, split, threshold, prevalence, by


def _evaluate_share(
    jobs: list[tuple[Path, tuple[str, str | None]]],
    out_dir: Path,
    split: str,
    threshold: float | None,
    prevalence: float | None,
    key_salt: bytes,
    progress: bool,
    device: str,
    by: list[str] | None,
) -> list[tuple[int, dict[str, Any] | BaseException]]:
    """This process's share of the rows (job index, row or error), each read back when saved."""
    from tqdm.auto import tqdm

    from medtl import distributed

    mine = distributed.shard(list(enumerate(jobs)), strided=True)  # every row once, one process
    done: list[tuple[int, dict[str, Any] | BaseException]] = []
    show = progress and distributed.is_main()
    for i, (m, d) in tqdm(mine, desc="evaluate", disable=not show):
        key = _row_key(m, d, split, threshold, prevalence, key_salt, by)
        row_file = out_dir / "rows" / f"{key}.json"
        if row_file.exists():
            done.append((i, json.loads(row_file.read_text())))
            continue
        try:
            row = _evaluate_one(
                m, d, split, threshold, prevalence, out_dir / ".cache", show, device, by
            )
        except Exception as exc:
            if distributed.world_size() == 1:
                raise
            # the other processes must still meet at the gather below; raised after it
            done.append((i, RuntimeError(f"{m} on dataset {i}: {type(exc).__name__}: {exc}")))
            continue
        atomic_write_json(row_file, row)
        done.append((i, row))
    return done


def _write_tables(out_dir: Path, rows: list[dict[str, Any]]) -> None:
    """``evaluation.csv`` and ``evaluation.md`` in ``out_dir``."""
    csv_path = out_dir / "evaluation.csv"
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow(
            csv_record(
                {
                    k: (
                        ""
                        if r.get(k) is None
                        else "per finding"
                        if isinstance(r.get(k), dict)
                        else r.get(k)
                    )
                    for k in COLUMNS
                }
            )
        )
    atomic_write_text(csv_path, buf.getvalue())
    per = [(r, n, v) for r in rows for n, v in (r.get("per_finding") or {}).items()]
    if per:  # several findings per image: one row per model x dataset x finding
        cols = ["model", "dataset", "split", "subgroup", "finding", "n_pos", "n_neg",
                "n_missing", "auroc", "low", "high", "scorable", "threshold", "sensitivity",
                "specificity"]  # fmt: skip
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r, name, v in per:
            cells = {"model": r["model"], "dataset": r["dataset"], "split": r["split"],
                     "subgroup": r.get("subgroup"), **v}  # fmt: skip
            w.writerow(
                {k: ("" if cells.get(k) is None else cells.get(k)) for k in cols}
                | {"finding": name}
            )
        atomic_write_text(out_dir / "evaluation_findings.csv", buf.getvalue())
    atomic_write_text(out_dir / "evaluation.md", _markdown(rows))


def _evaluate_one(
    model_dir: Path,
    entry: tuple[str, str | None],
    split: str,
    threshold: float | None,
    prevalence: float | None,
    cache: Path,
    progress: bool,
    device: str = "cpu",
    by: list[str] | None = None,
) -> dict[str, Any]:
    from medtl.data import (
        dataset_fingerprint,
        image_cache_dir,
        load_dataset,
        phantom_manifest,
        project_salt,
    )
    from medtl.records import dataset_label
    from medtl.strategies import load_model

    dataset, name = entry

    est = load_model(model_dir, device=device, cache_dir=cache)
    if split == "val" and est.trains_on_validation():
        raise ConfigError(
            f"--split val: the head of model {model_dir} was refit on train + validation after its "
            "settings were chosen, so the validation images are training data for it. Score "
            "--split test (held out), or retrain with refit: false to keep a clean validation split."
        )
    labelling = getattr(est, "labelling_", None) or {}
    multilabel = est.task_.kind == "multilabel"
    ds = load_dataset(
        phantom_manifest(str(dataset)),
        val_fraction=0.0,
        test_fraction=0.0,
        min_per_class=1,
        progress=progress,
        salt=project_salt(cache) if split == "all" else _run_salt(model_dir, split),
        subgroups=by,
        # several findings: the model's findings, read with its uncertain-label policy
        findings=list(est.classes_) if multilabel else None,
        uncertain=labelling.get("uncertain", "ignore"),
    )
    fingerprint = dataset_fingerprint(ds)
    label = dataset_label(name, fingerprint)
    if set(ds.classes) != set(est.classes_):
        raise ConfigError(
            f"Dataset {label} has classes {ds.classes} but model {model_dir} was trained on "
            f"{est.classes_}. Name the class folders like the training data."
        )
    remap = {i: est.classes_.index(c) for i, c in enumerate(ds.classes)}  # match classes by name
    order = [ds.classes.index(c) for c in est.classes_]  # finding columns in the model's order
    samples = ds.samples if split == "all" else _run_split(model_dir, ds, split, label)
    samples = [
        dataclasses.replace(s, label=remap[s.label])
        if s.targets is None
        else dataclasses.replace(s, targets=tuple(s.targets[k] for k in order))
        for s in samples
    ]
    images = est.prepare(samples, cache_dir=image_cache_dir(cache), progress=progress)
    if len(images) == 0:
        raise DatasetError(
            f"No image of {label} ({split}) could be read; see `medtl data check` on it."
        )
    proba = est.predict_proba(images, progress=progress)
    check_finite(proba, model_dir)
    common = {
        "model": str(model_dir),
        "strategy": est.name,
        "dataset": label,
        "dataset_fingerprint": fingerprint,
        "split": split,
        "n": len(images),
        "n_skipped": len(ds.skipped) + len(images.skipped),
    }
    if by:
        from medtl.subgroup_results import evaluation_rows

        t_by = est.threshold_for(threshold)[0]
        common["subgroup_rows"] = evaluation_rows(
            images, proba, t_by, est.classes_, {**common, "subgroup": None}, ds.samples,
            task=est.task_,
        )  # fmt: skip
        common["subgroup"] = "all"
    t, source = est.threshold_for(threshold)
    return {
        **common,
        **est.task_.score(images.labels, proba, threshold=t, prevalence=prevalence),
        "threshold_source": source,
    }


def _run_salt(model_dir: Path, split: str) -> bytes:
    """The id key of the run a model comes from (kept in the run's cache folder), so the dataset's
    ids match the run's ``splits.json``."""
    from medtl import runs
    from medtl.config import load_config
    from medtl.data import project_salt
    from medtl.experiment import default_cache_dir

    run = runs.run_dir_of_model(model_dir)
    if run is None or not (run / runs.CONFIG_FILE).is_file():
        raise ConfigError(
            f"The 'split' is {split!r}, but model {model_dir} has no run folder with a "
            f"{runs.SPLITS_FILE} and {runs.CONFIG_FILE} beside it (runs/<id>/<strategy>/model), so "
            f"its {split} images are unknown. Use --split all on a dataset the model has not seen."
        )
    return project_salt(default_cache_dir(load_config(run / runs.CONFIG_FILE)))


def _run_split(model_dir: Path, ds: Any, split: str, dataset: str) -> list[Sample]:
    """The images of ``split`` as the model's own run assigned them (its ``splits.json``)."""
    from medtl import runs

    run = runs.run_dir_of_model(model_dir)
    if run is None:
        raise ConfigError(
            f"The 'split' is {split!r}, but model {model_dir} has no run folder with a "
            f"{runs.SPLITS_FILE} beside it (runs/<id>/<strategy>/model), so its {split} images are "
            "unknown. Use --split all on a dataset the model has not seen."
        )
    from medtl.records import check_splits

    check_splits(run, runs.read_summary(run))  # an edited splits.json is refused
    assignment = runs.read_split_assignment(run)
    wanted = {u for u, sp in assignment.items() if sp == split}
    prefix = split[0] + "-"  # external val/test sets are stored with a split prefix
    chosen = [s for s in ds.samples if s.uid in wanted or prefix + s.uid in wanted]
    found = {s.uid if s.uid in wanted else prefix + s.uid for s in chosen}
    if not wanted or len(found) < len(wanted):
        raise ConfigError(
            f"The 'split' is {split!r}, but {dataset} is not the dataset of the run {run} "
            f"({len(wanted) - len(found)} of its {len(wanted)} {split} images are not in it). "
            "Pass the run's own dataset, or use --split all for another dataset."
        )
    return chosen


def check_finite(proba: np.ndarray, model_dir: str | Path) -> None:
    """Refuse to report NaN/inf probabilities (a broken or tampered model), naming the model."""
    bad = ~np.isfinite(proba).all(axis=1)
    if bad.any():
        raise ModelFileError(
            f"Model {model_dir} produced invalid probabilities (NaN or inf) for {int(bad.sum())} of "
            f"{len(proba)} images; its weights are damaged. Retrain or use another model folder."
        )


def _sub(r: dict[str, Any]) -> str:
    """`` [sex=F]`` after the dataset name on a subgroup row of ``--by``."""
    g = r.get("subgroup")
    if g in (None, "all"):
        return ""
    return f" [{g}]" + (" (too small to judge)" if r.get("too_small") else "")


def _markdown(rows: list[dict[str, Any]]) -> str:
    def f(x: Any) -> str:
        return "n/a" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))

    lines = [
        "| model | dataset | n | AUROC (95% CI) | sensitivity (95% CI) | specificity (95% CI) | PPV | NPV | threshold |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        r = {k: r.get(k) for k in (*COLUMNS, "per_finding")}
        lines.append(
            f"| {r.get('model')} | {r.get('dataset')}{_sub(r)} | {r.get('n')} | {f(r.get('auroc'))} ({f(r.get('auroc_low'))}–{f(r.get('auroc_high'))}) "
            f"| {f(r.get('sensitivity'))} ({f(r.get('sens_low'))}–{f(r.get('sens_high'))}) "
            f"| {f(r.get('specificity'))} ({f(r.get('spec_low'))}–{f(r.get('spec_high'))}) | {f(r.get('ppv'))} | {f(r.get('npv'))} "
            f"| {f(r.get('threshold')) if not isinstance(r.get('threshold'), dict) else 'per finding'} |"
        )
    findings = [r for r in rows if isinstance(r.get("per_finding"), dict)]
    if findings:  # several findings per image: the macro AUROC above, each finding here
        lines += [
            "",
            "Per finding (AUROC with DeLong 95% CI on its labelled images; calls at the model's "
            "per-finding thresholds):",
            "",
            "| model | dataset | finding | positives / negatives | AUROC (95% CI) | sensitivity "
            "| specificity | threshold |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in findings:
            for name, v in r["per_finding"].items():
                lines.append(
                    f"| {r['model']} | {r['dataset']}{_sub(r)} | {name} | {v.get('n_pos')} / "
                    f"{v.get('n_neg')} | {f(v.get('auroc'))} ({f(v.get('low'))}–{f(v.get('high'))}) "
                    f"| {f(v.get('sensitivity'))} | {f(v.get('specificity'))} "
                    f"| {f(v.get('threshold'))} |"
                )
    return "\n".join(lines) + "\n"


def predict(
    model_dir: str | Path,
    paths: list[str] | str,
    *,
    out: str | Path | None = "predictions.csv",
    threshold: float | None = None,
    id_map: str | Path | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    device: str = "cpu",
) -> dict[str, Any]:
    """Predict with a saved model on image files and folders (recursively); writes a CSV.

    ``device`` (``cpu``, ``cuda``, ``auto``) is where the model predicts. ``cache_dir`` is the project's
    cache folder: its salt keys the ids, and decoded images (and a feature-extraction model's
    embeddings) are cached there; None: the default folder's salt and no cache.

    Images are prepared as the model records (size, channels, window...). Each row holds a
    de-identified ``id``, the class probabilities and the ``call``: for two classes, the positive class
    when P(positive) >= the model's operating threshold (``threshold`` overrides it), else the most
    probable class. Paths never appear in the CSV (file names often carry names and record numbers);
    ``id_map`` writes a separate file mapping ids back to paths, marked as containing identifiers.

    Returns:
        {"n", "out", "rows", "skipped", "threshold", "threshold_source", "unusable_named"}: every input
        that was not used is in ``skipped`` with its reason; ``unusable_named`` lists the inputs named
        explicitly (not found inside a folder) that could not be used.

    Example:
        >>> medtl.predict("runs/a/fine_tuning/model", ["scan1.dcm", "new_scans/"], out="preds.csv")
    """
    from medtl.strategies import load_model

    for name, value in (("out", out), ("id_map", id_map)):
        check_output_file(name, value)  # before any work, naming the path the user gave
    est = load_model(model_dir, device=device, cache_dir=cache_dir)
    t, source = est.threshold_for(threshold)
    from medtl.data import DEFAULT_CACHE_DIR, image_cache_dir

    salt = _salt(cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR)  # as data check
    samples, skipped, named = collect_inputs(
        [paths] if isinstance(paths, str | Path) else list(paths), salt
    )
    images = est.prepare(samples, cache_dir=image_cache_dir(cache_dir), progress=progress)
    skipped += list(images.skipped)
    proba = est.predict_proba(images) if len(images) else np.zeros((0, len(est.classes_)))
    check_finite(proba, model_dir)
    calls = est.decide(proba, threshold) if len(images) else np.zeros(0, dtype=np.int64)
    pcols = [f"p_{c}" for c in est.classes_]
    task = est.task_
    # the call columns are the task's: "call" (a class name), or call_<finding> (1/0) per finding
    call_cols = list(task.call_cells(task.decide(np.full((1, len(est.classes_)), 0.5), t)[0]))
    rows = [
        {"id": uid, **{c: float(v) for c, v in zip(pcols, pr)}, **task.call_cells(k)}
        for uid, pr, k in zip(images.uids, proba, calls)
    ]
    from medtl import distributed

    if out and distributed.is_main():  # under torchrun, one process writes
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=["id", *pcols, *call_cols])
        w.writeheader()
        w.writerows(csv_record(r) for r in rows)
        atomic_write_text(out, buf.getvalue())
    if id_map and distributed.is_main():
        from medtl.data import Dataset, write_id_map

        write_id_map(Dataset("", "files", list(est.classes_), samples, skipped), id_map)
    bad_paths = {str(Path(s.path).absolute()) for s in skipped}
    unusable = [p for p in named if p in bad_paths]
    return {
        "n": len(rows),
        "out": None if not out else str(out),
        "rows": rows,
        "skipped": skipped,
        "threshold": t,
        "threshold_source": source,
        "unusable_named": unusable,
    }


def collect_inputs(
    paths: list[str | Path], salt: bytes | None = None
) -> tuple[list[Sample], list[SkippedFile], list[str]]:
    """Samples for the files named and the files inside the folders named, plus what was not used
    (see ``medtl.data.unlabelled_files``), and the paths of the files named explicitly."""
    import os

    from medtl.data import unlabelled_files

    samples, skipped = unlabelled_files(paths, salt=salt)
    named = [str(Path(p).absolute()) for p in paths if not os.path.isdir(p)]
    return samples, skipped, named


def _salt(cache_dir: str | Path) -> bytes:
    from medtl.data import default_salt

    return default_salt(cache_dir)

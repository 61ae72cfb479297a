"""medtl clinician app: ``streamlit run apps/medtl_app.py``.

Presentation only; the logic lives in ``_app_logic.py`` and medtl's public API. Everything written goes
under one work folder (``MEDTL_APP_WORK``, default ``./medtl_app_work``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _app_findings as F
import _app_logic as L
from _app_subgroups import page_subgroups

from medtl.tasks import task_for

TITLE = "medtl — transfer learning for medical images"
SECTIONS = ["Data", "Advice", "Compare", "Operating point", "Subgroups", "Single image"]

st.set_page_config(page_title="medtl", layout="wide")


@st.cache_data(show_spinner=False)
def _describe(path: str, _stamp: float) -> L.DataView:
    return L.describe_dataset(path)


@st.cache_resource(show_spinner=False)
def _load_run(run_dir: str, _stamp: float):
    from medtl.report import load_run

    return load_run(run_dir)


@st.cache_resource(show_spinner=False)
def _load_model(model_dir: str, _stamp: float):
    from medtl.strategies import load_model

    return load_model(model_dir)


def _stamp(path: Path) -> float:
    """Cache key part that changes when a run/model folder is rewritten."""
    from medtl.data import PHANTOM_INFO_FILE
    from medtl.runs import SUMMARY_FILE
    from medtl.strategies import META_FILE

    for f in (SUMMARY_FILE, META_FILE, PHANTOM_INFO_FILE):
        if (path / f).exists():
            return (path / f).stat().st_mtime
    return path.stat().st_mtime if path.exists() else 0.0


def _show_error(exc: Exception) -> None:
    st.error(str(exc))


def page_data(work: Path) -> None:
    st.header("Data")
    st.write(
        "Choose the images to learn from: a built-in synthetic demo set, a folder on this server, "
        "or a zip you upload (DICOM/PNG/JPEG, one folder per class)."
    )
    source = st.radio(
        "Data source",
        ["Synthetic demo", "Folder on the server", "Upload a zip"],
        key="data_source",
        horizontal=True,
    )
    try:
        if source == "Synthetic demo":
            st.caption("Synthetic chest-radiograph-like DICOM images with and without a lesion.")
            if st.button("Use the demo data", key="use_demo"):
                with st.spinner("Generating the demo images (first time only)…"):
                    n = int(st.session_state.get("demo_n_per_class", 40))
                    size = int(st.session_state.get("demo_size", 128))
                    st.session_state["data_path"] = str(
                        L.demo_dataset(work, n_per_class=n, size=size)
                    )
        elif source == "Folder on the server":
            text = st.text_input("Dataset folder on the server", key="folder_text")
            if st.button("Load folder", key="load_folder"):
                st.session_state["data_path"] = str(L.server_folder(text))
        else:
            up = st.file_uploader(
                f"Zip of class folders (max {L.MAX_ZIP_MB} MB)", type=["zip"], key="zip_upload"
            )
            if up is not None:
                with st.spinner("Checking and unpacking the zip…"):
                    st.session_state["data_path"] = str(L.extract_zip(up.getvalue(), up.name, work))
    except L.AppInputError as exc:
        _show_error(exc)

    path = st.session_state.get("data_path")
    if not path:
        st.info("No dataset chosen yet.")
        return
    try:
        view = _describe(path, _stamp(Path(path)))
    except L.AppInputError as exc:
        _show_error(exc)
        return
    s = view.summary
    st.subheader("Data card")
    if F.summary_per_finding(s):  # several findings per image: counts per finding and split
        F.show_data(s)
    else:
        st.write(
            f"**{s['n_images']} images** in **{s['n_classes']} classes**; "
            f"largest/smallest class ratio {s['imbalance_ratio']:.1f}. "
            f"{s['n_skipped']} file(s) could not be used."
        )
        st.table(L.counts_table(s), hide_index=True, width="content")
    st.markdown(L.split_sentence(view.split_unit, view.n_patients))
    classes = list(s.get("classes", []))
    if len(classes) >= 2 and task_for(classes, s.get("task")).positive_class is not None:
        st.selectbox(
            "Which class is the finding?",
            classes,
            index=1,
            key=f"positive_class::{path}",  # per dataset: another dataset has other classes
            persist_state="session",
            help="Sensitivity, PPV and the heatmaps are about this class (e.g. pneumonia, malignant).",
        )
    if view.examples:
        st.caption(
            "Example images, displayed as the model sees them (windowed; MONOCHROME1 inverted)."
        )
        cols = st.columns(min(6, len(view.examples)))
        for i, (cname, img) in enumerate(view.examples[:6]):
            cols[i].image(img, caption=cname, clamp=True, width="stretch")
    if view.skipped:
        st.subheader("Skipped files")
        st.dataframe(view.skipped, hide_index=True)


def page_advice(work: Path) -> None:
    st.header("Advice")
    st.write(
        "The advisor looks at your data (how many images, how different they are from everyday "
        "photographs, how well a frozen network already separates the classes) and suggests "
        "whether to fine-tune the network or only train a classifier on its frozen features."
    )
    path = st.session_state.get("data_path")
    if not path:
        st.info("Choose a dataset in the Data section first.")
        return
    backbone = st.session_state.get("backbone", L.DEFAULT_BACKBONE)
    st.caption(f"Backbone profiled: {backbone} (change it in the Compare section).")
    if st.button("Get advice", key="get_advice"):
        try:
            with st.spinner("Profiling the dataset…"):
                st.session_state["advice"] = L.get_advice(
                    path,
                    work,
                    backbone=backbone,
                    image_size=int(st.session_state.get("image_size", 128)),
                )
                st.session_state["advice_for"] = path
        except L.AppInputError as exc:
            st.warning(str(exc))
            return
        except Exception as exc:  # the advisor is another module; keep the app alive
            st.error(f"The advisor failed: {type(exc).__name__}: {L.plain_error(str(exc))}")
            return
    adv = st.session_state.get("advice")
    if adv is None or st.session_state.get("advice_for") != path:
        return
    try:
        n_data = int(_describe(path, _stamp(Path(path))).summary["n_images"])
    except (L.AppInputError, KeyError, TypeError, ValueError):
        n_data = None
    view = L.advice_view(adv, data_images=n_data)
    st.success(view["headline"])
    st.markdown("\n".join(f"- {line}" for line in view["lines"]))
    if view["more_data"]:
        st.markdown(f"**What more data would buy:** {view['more_data']}")
    st.caption(
        "Expected AUROC: how well the model would rank a diseased image above a normal one "
        "(0.5 = guessing, 1.0 = perfect); estimates, not measurements. Times are for this computer."
    )
    if view["why"]:
        st.subheader("Why")
        st.markdown("\n".join(f"- {s}" for s in view["why"]))
    if view["profiled"]:
        st.caption(view["profiled"])
    for note in view["notes"]:
        st.caption(note)
    with st.expander("Technical terms and the measurements behind the advice"):
        shown = {m["measure"] for m in view["measurements"]}
        if view["measurements"]:
            st.table(view["measurements"], hide_index=True)
        rest = [f"- **{k}**: {v}" for k, v in L.JARGON.items() if k not in shown]
        st.markdown("\n".join(rest))
        details = getattr(adv, "details", None)  # the advisor's pilot, curves and signals
        if details:
            st.markdown("**The advisor's measurements**")
            st.markdown("\n".join(f"- {d}" for d in details))


def _settings() -> tuple[str, int, int, list[str]]:
    from medtl.backbones import list_backbones

    rows = list_backbones()
    names = [r["name"] for r in rows if r.get("weights_available", True)]
    missing = [r for r in rows if not r.get("weights_available", True)]
    default = names.index(L.DEFAULT_BACKBONE) if L.DEFAULT_BACKBONE in names else 0
    c1, c2, c3 = st.columns(3)
    backbone = c1.selectbox(
        "Backbone (pretrained network)",
        names,
        index=default,
        key="backbone",
        persist_state="session",
        help="tiny_test is a very small untrained network for a quick look at the workflow only.",
    )
    epochs = c2.number_input(
        "Epochs (passes over the data)", 1, 50, 3, key="epochs", persist_state="session"
    )
    size = c3.number_input(
        "Image size (pixels)", 32, 512, 128, step=16, key="image_size", persist_state="session"
    )
    extra = [
        name
        for name, text in L.extra_strategies()
        if st.checkbox(text, key=f"also::{name}", persist_state="session")
    ]
    if missing:
        with st.expander(
            f"{len(missing)} backbone(s) not offered: their weights are not installed"
        ):
            for r in missing:
                st.markdown(f"- **{r['name']}**: {r.get('weights_source', '')}")
    return backbone, int(epochs), int(size), extra


def _run_new_comparison(path: str, work: Path, backbone: str, epochs: int, size: int,
                        extra: list[str]) -> None:  # fmt: skip
    """Run a comparison with a progress bar, the current step, time left and a Stop button."""
    strategies = [*L.candidate_strategies(), *extra]
    cfg = L.build_config(
        path,
        work,
        backbone=backbone,
        epochs=epochs,
        image_size=size,
        strategies=strategies,
        batch_size=int(st.session_state.get("batch_size", 32)),
        positive_class=st.session_state.get(f"positive_class::{path}"),
    )
    adv = st.session_state.get("advice")
    advised = (L.advice_dict(adv).get("estimated_minutes") or {}) if adv is not None else {}
    prog = L.Progress(strategies, epochs, advised_minutes=dict(advised))
    bar = st.progress(0.0, text="Starting…")
    st.session_state["running_run"] = cfg.output.out
    with st.status("Running the comparison…", expanded=True) as status:
        step = st.empty()
        eta = st.empty()
        st.button("Stop", key="stop_compare", help="Stops after the current step; the run is kept "
                  "and marked incomplete.")  # fmt: skip
        st.caption(
            "Stay on this page while it runs: pressing Stop, leaving the page or closing the tab "
            "stops the comparison (at the end of the current epoch), and the run is then kept, "
            "marked incomplete."
        )

        def show() -> None:
            bar.progress(prog.fraction(), text=f"{prog.fraction():.0%} done")
            step.markdown(prog.step_text())
            eta.markdown(f"**{prog.eta_text()}**")

        def on_start(name: str) -> None:
            prog.start(name)
            show()

        def on_epoch(name: str, row: dict) -> None:
            prog.end_epoch(name, row)
            show()

        show()
        try:
            L.run_comparison(cfg, on_start=on_start, on_epoch=on_epoch)
        except L.ComparisonStopped as stop:
            st.session_state["run_dir"] = str(stop.run_dir)
            if stop.cause is not None and not isinstance(stop.cause, KeyboardInterrupt):
                raise stop.cause from None  # let Streamlit rerun/stop as the user asked
            status.update(label="Stopped: the run is kept, marked incomplete", state="error")
            return
        except Exception as exc:
            st.session_state.pop("running_run", None)
            status.update(label="The comparison failed", state="error")
            st.error(f"The comparison could not run: {L.plain_error(str(exc))}")
            return
        bar.progress(1.0, text="Done")
        step.markdown("All strategies finished; the report is written.")
        eta.empty()
        status.update(label="Comparison finished", state="complete", expanded=False)
    st.session_state.pop("running_run", None)
    st.session_state["run_dir"] = cfg.output.out


def page_compare(work: Path) -> None:
    st.header("Compare")
    st.write(
        "**Feature extraction** keeps the pretrained network frozen and trains only a final "
        "classifier (fast). **Fine-tuning** adjusts every layer (slower, often better with more data)."
    )
    backbone, epochs, size, extra = _settings()
    path = st.session_state.get("data_path")
    stopped = st.session_state.pop("running_run", None)
    if (
        stopped
    ):  # a comparison of this session ended without finishing (Stop, page left, tab closed)
        st.session_state["run_dir"] = stopped
        st.warning(
            "The last comparison was stopped before it finished. It is kept and marked "
            "incomplete; only the strategies that finished have results."
        )
    if st.button("Run the comparison", key="run_compare", disabled=not path, type="primary"):
        _run_new_comparison(path, work, backbone, epochs, size, extra)
    elif not path:
        st.caption("Choose a dataset in the Data section to run a new comparison.")

    runs = [str(p) for p in L.list_runs(work)]
    if runs:
        current = st.session_state.get("run_dir")
        if current not in runs:
            current = runs[0]
        # the selector always names the run shown: set it before the widget is drawn
        st.session_state["run_pick"] = current
        st.session_state["run_dir"] = current

        def picked() -> None:
            st.session_state["run_dir"] = st.session_state["run_pick"]

        labels = {r: L.run_label(Path(r)) for r in runs}
        st.selectbox(
            "Run shown (newest first)", runs, key="run_pick", format_func=labels.__getitem__,
            on_change=picked,
        )  # fmt: skip
    show_run()


def _run():
    rd = st.session_state.get("run_dir")
    if not rd or not Path(rd).is_dir():
        return None
    return _load_run(rd, _stamp(Path(rd)))


def _incomplete_banner(run) -> bool:
    """Say loudly that a run is incomplete; True when it is."""
    complete, words = L.run_state(run.summary)
    if not complete:
        st.error(
            f"This run is {words.replace('INCOMPLETE', 'incomplete')}. It is not a finished "
            "comparison: results are shown only for the strategies that finished."
        )
    return not complete


def show_run() -> None:
    from medtl.report import plot_calibration, plot_decision_curve, plot_learning_curves, plot_roc

    run = _run()
    if run is None:
        st.info("No comparison yet: run one above or open an earlier run.")
        return
    st.subheader("Results on the held-out test images")
    _incomplete_banner(run)
    st.table(L.strategy_rows(run.summary), hide_index=True)
    help_ = L.METRIC_HELP
    st.caption("\n\n".join(help_[k] for k in ("AUROC", "CI", "gap", "curve")))
    for w in L.gap_warnings(run.summary):
        st.warning(w)
    for sentence in L.paired_sentences(run.summary):
        st.info(f"Paired test on the same test images: {sentence}")
    for note in L.run_notes(run.summary):
        st.caption(note)
    if run.task.per_finding:
        F.show_compare(run, _learning_figure)
        return
    cur = L.curves(run)
    if not cur:
        return
    hist = L.learning_histories(run)
    if hist:
        c1, c2 = st.columns([3, 1])
        c1.pyplot(L.integer_epoch_axis(plot_learning_curves(hist), hist))
        c2.caption(
            "Learning curves: validation AUROC after each epoch (the star marks the best epoch). "
            "Feature extraction has no epochs: its dotted line is the best classifier it found "
            "(C is that classifier's regularisation strength)."
        )
    c1, c2 = st.columns(2)
    c1.pyplot(plot_roc(cur))
    c1.caption(help_["roc"])
    c2.pyplot(plot_calibration(cur))
    c2.caption(help_["calibration"])
    c3, _ = st.columns(2)
    c3.pyplot(plot_decision_curve(cur))
    c3.caption(help_["decision"])


def _learning_figure(run):
    """The learning curves of a run (validation headline AUROC per epoch), or None."""
    from medtl.report import plot_learning_curves

    hist = L.learning_histories(run)
    if not hist:
        return None
    fig = plot_learning_curves(hist, metric_label=run.task.curve_metric)
    return L.integer_epoch_axis(fig, hist)


MODES = {
    L.OP_SAVED: "The model's own operating point",
    L.OP_TARGET: "A target sensitivity",
    L.OP_THRESHOLD: "A threshold I choose",
}


def page_operating(work: Path) -> None:
    from medtl.report import plot_confusion

    st.header("Operating point")
    st.write(
        "A model gives a probability; a **threshold** turns it into a yes/no call. Lower thresholds "
        "catch more cases (sensitivity) but raise more false alarms (lower specificity)."
    )
    run = _run()
    if run is not None and run.task.per_finding:  # one finding at a time, as a two-class run
        run = F.finding_run_for(run, F.pick_finding(run))
    if run is None or not L.curves(run):
        st.info("Run or open a comparison (two-class data) in the Compare section first.")
        return
    _incomplete_banner(run)
    mode = st.radio(
        "Choose the operating point by", list(MODES), format_func=MODES.__getitem__,
        key="op_mode", horizontal=True, persist_state="session",
    )  # fmt: skip
    c1, c2 = st.columns(2)
    value = None
    split = "test"
    if mode == L.OP_THRESHOLD:
        value = c1.slider(
            "Threshold (probability of the finding)", 0.01, 0.99, 0.5, 0.01, key="thr"
        )
        split = c1.radio(
            "Numbers on", ["val", "test"], key="op_split", horizontal=True,
            format_func={"val": "Validation images (to choose)",
                         "test": "Test images (final check)"}.__getitem__,
        )  # fmt: skip
    elif mode == L.OP_TARGET:
        value = c1.slider(
            "Target sensitivity (reached on the validation images)", 0.5, 1.0, 0.9, 0.01,
            key="tgt",
        )  # fmt: skip
    prev = c2.number_input(
        "Prevalence where the model will be used (%)", 0.1, 99.9, 10.0, 0.5, key="prev",
        help="PPV/NPV depend on how common the condition is in your patients.",
    )  # fmt: skip
    thresholds = L.thresholds_for(run, mode, value)
    ops = L.operating_points(run, thresholds, split=split, prevalence=float(prev) / 100.0)
    positive = run.classes[1] if len(run.classes) > 1 else "positive"
    n = next(iter(ops.values()))["confusion"] if ops else [[0, 0], [0, 0]]
    n_img = int(sum(map(sum, n)))
    where = "validation" if split == "val" else "held-out test"
    st.markdown(f"Finding (positive class): **{positive}**. Numbers on the **{n_img} {where} "
                "images**; values in brackets are 95% confidence intervals.")  # fmt: skip
    if mode == L.OP_THRESHOLD and split == "test":
        st.warning(
            "These are the TEST images. Choose the threshold on the validation images: moving it "
            "while watching the test numbers makes them optimistic."
        )
    elif mode != L.OP_THRESHOLD:
        st.caption(
            "The threshold was chosen on the validation images only, so these test numbers are "
            "an honest estimate."
        )
    st.table(L.operating_rows(ops), hide_index=True)
    st.caption(
        "\n\n".join(L.METRIC_HELP[k] for k in ("sensitivity", "specificity", "ppv_npv"))
        + "\n\nn/a: the measure cannot be computed here, e.g. NPV when no image is called "
        "negative at this threshold (there is nothing to be right or wrong about)."
    )
    st.pyplot(
        plot_confusion(
            {L.strategy_label(n): o["confusion"] for n, o in ops.items()},
            class_names=run.classes[:2],
        ),
        width="content",
    )


def page_single(work: Path) -> None:
    st.header("Single image")
    st.write(
        "Upload one DICOM, PNG or JPEG image to see each model's call at its operating point, its "
        "probability, and a heatmap of the regions that drove it."
    )
    run = _run()
    if run is None:
        st.info("Run or open a comparison in the Compare section first.")
        return
    rd = Path(run.run_dir)
    st.caption(f"Models from the run: **{L.run_label(rd)}** (change it in the Compare section).")
    _incomplete_banner(run)
    up = st.file_uploader(f"One image (max {L.MAX_IMAGE_MB} MB)", type=None, key="single_upload")
    if up is None:
        return
    try:
        path = L.save_single_upload(up.getvalue(), up.name, work)
        img, meta = L.read_single(path)
    except L.AppInputError as exc:
        _show_error(L.AppInputError(L.plain_error(str(exc))))
        return
    models = L.model_dirs(rd)
    if not models:
        st.warning("This run has no finished models to apply.")
        return
    finding = None
    if run.task.per_finding:  # every finding is listed; the heatmap explains the one picked
        finding = st.selectbox(
            "Heatmap for the finding", F.finding_choices(run), key="single_finding"
        )
    cols = st.columns(1 + len(models))
    cols[0].image(img, caption="Uploaded image (as the models see it)", clamp=True, width="stretch")
    for col, (name, mdir) in zip(cols[1:], models.items()):
        label = L.strategy_label(name)
        try:
            est = _load_model(str(mdir), _stamp(mdir))
            if est.task_.per_finding:
                res_f = F.predict_findings(est, path, finding)
                F.show_single(col, res_f, label, L.heatmap_figure, img)
                continue
            res = L.predict_single(est, path)
        except Exception as exc:  # one model failing must not hide the others
            col.error(f"{label}: {L.plain_error(str(exc))}")
            continue
        classes = list(est.classes_)
        k = classes.index(res.positive) if res.positive in classes else int(res.proba.argmax())
        col.metric(f"{label}: call", res.call, border=True)
        col.markdown(f"P({classes[k]}) = **{100 * res.proba[k]:.1f}%**")
        if res.threshold is not None:
            col.caption(
                f"Called {classes[k]} at ≥ {100 * res.threshold:.1f}%: the "
                f"{L.threshold_source(res.threshold_source)}."
            )
        col.pyplot(L.heatmap_figure(img, res.heat, f"{label}: regions pointing to {classes[k]}"))
    st.caption(
        "Heatmap (Grad-CAM): the colour scale runs from blue (no influence) to red (the regions "
        "that pushed the model most towards the finding). It is a coarse hint, not a lesion "
        "outline. Only technical image metadata is shown, never patient details."
    )
    with st.expander("Image metadata (technical, no patient details)"):
        st.table(L.meta_rows(meta), hide_index=True)


def main() -> None:
    st.title(TITLE)
    work = L.work_dir()
    section = st.sidebar.radio("Section", SECTIONS, key="section")
    st.sidebar.caption(f"Work folder: {work}")
    pages = {
        "Data": page_data,
        "Advice": page_advice,
        "Compare": page_compare,
        "Operating point": page_operating,
        "Subgroups": lambda work: page_subgroups(_run(), L.strategy_label, L.thresholds_for),
        "Single image": page_single,
    }
    try:
        pages[section](work)
    except L.AppInputError as exc:
        _show_error(exc)
    rd = st.session_state.get("run_dir")  # after the page: a new run may just have been made
    if rd and Path(rd).is_dir():
        st.sidebar.caption(f"Run shown: {L.run_label(Path(rd))}")


main()

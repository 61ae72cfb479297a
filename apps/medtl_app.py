"""medtl clinician app: ``streamlit run apps/medtl_app.py``.

Presentation only; the logic lives in ``_app_logic.py`` and medtl's public API. Everything written goes
under one work folder (``MEDTL_APP_WORK``, default ``./medtl_app_work``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _app_logic as L

TITLE = "medtl — transfer learning for medical images"
SECTIONS = ["Data", "Advice", "Compare", "Operating point", "Single image"]

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
    for f in ("summary.json", "model.json", "phantom.json"):
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
    st.write(
        f"**{s['n_images']} images** in **{s['n_classes']} classes**; "
        f"largest/smallest class ratio {s['imbalance_ratio']:.1f}. "
        f"{s['n_skipped']} file(s) could not be used."
    )
    st.dataframe(L.counts_table(s), hide_index=True)
    classes = list(s.get("classes", []))
    if len(classes) == 2:
        # widget state is dropped when the Data page is not shown: keep the choice under its own key
        kept = st.session_state.get(f"finding::{path}")
        st.session_state[f"finding::{path}"] = st.selectbox(
            "Which class is the finding?",
            classes,
            index=classes.index(kept) if kept in classes else 1,
            key=f"positive_class::{path}",  # per dataset: another dataset has other classes
            help="Sensitivity, PPV and the heatmaps are about this class (e.g. pneumonia, malignant).",
        )
    if view.examples:
        st.caption(
            "Example images, displayed as the model sees them (windowed; MONOCHROME1 inverted)."
        )
        cols = st.columns(min(6, len(view.examples)))
        for i, (cname, img) in enumerate(view.examples[:6]):
            cols[i].image(img, caption=cname, clamp=True, use_container_width=True)
    if view.skipped:
        st.subheader("Skipped files")
        st.dataframe(view.skipped, hide_index=True)


def page_advice(work: Path) -> None:
    st.header("Advice")
    st.write(
        "The advisor looks at your data (how many images, how different they are from everyday "
        "photographs) and suggests whether to fine-tune or only train a classifier on frozen features."
    )
    path = st.session_state.get("data_path")
    if not path:
        st.info("Choose a dataset in the Data section first.")
        return
    if st.button("Get advice", key="get_advice"):
        try:
            with st.spinner("Profiling the dataset…"):
                st.session_state["advice"] = L.get_advice(
                    path,
                    work,
                    backbone=st.session_state.get("backbone", L.DEFAULT_BACKBONE),
                    image_size=int(st.session_state.get("image_size", 128)),
                )
        except L.AppInputError as exc:
            st.warning(str(exc))
            return
        except Exception as exc:  # the advisor is another module; keep the app alive
            st.error(f"The advisor failed: {type(exc).__name__}: {exc}")
            return
    adv = st.session_state.get("advice")
    if adv is None:
        return
    label = L.strategy_label(adv.strategy, long=True)
    st.success(f"Recommended: **{label}** (confidence: {adv.confidence}).")
    for sentence in adv.rationale or []:
        st.markdown(f"- {sentence}")
    st.caption("AUROC (area under the ROC curve): 0.5 = guessing, 1.0 = perfect separation.")
    st.dataframe(L.advice_rows(adv), hide_index=True)
    details = getattr(adv, "details", None)
    if details:
        with st.expander("Technical details"):
            for d in details:
                st.markdown(f"- {d}")


def _settings() -> tuple[str, int, int, bool]:
    from medtl.backbones import list_backbones

    names = [r["name"] for r in list_backbones()]
    default = names.index(L.DEFAULT_BACKBONE) if L.DEFAULT_BACKBONE in names else 0
    c1, c2, c3, c4 = st.columns(4)
    backbone = c1.selectbox(
        "Backbone (pretrained network)",
        names,
        index=default,
        key="backbone",
        help="tiny_test is a very small untrained network for a quick look at the workflow only.",
    )
    epochs = c2.number_input("Epochs (passes over the data)", 1, 50, 3, key="epochs")
    size = c3.number_input("Image size (pixels)", 32, 512, 128, step=16, key="image_size")
    scratch = c4.checkbox("Also train from scratch (slow control)", key="scratch")
    return backbone, int(epochs), int(size), scratch


def page_compare(work: Path) -> None:
    st.header("Compare")
    st.write(
        "**Feature extraction** keeps the pretrained network frozen and trains only a final "
        "classifier (fast). **Fine-tuning** adjusts every layer (slower, often better with more data)."
    )
    backbone, epochs, size, scratch = _settings()
    path = st.session_state.get("data_path")
    if st.button("Run the comparison", key="run_compare", disabled=not path):
        strategies = ["feature_extraction", "fine_tuning"] + (["from_scratch"] if scratch else [])
        cfg = L.build_config(
            path,
            work,
            backbone=backbone,
            epochs=epochs,
            image_size=size,
            strategies=strategies,
            batch_size=int(st.session_state.get("batch_size", 32)),
            positive_class=st.session_state.get(f"finding::{path}"),
        )
        bar = st.progress(0.0, text="Starting…")
        done = {"n": 0}
        total = len(strategies)

        def on_start(name: str) -> None:
            bar.progress(done["n"] / total, text=f"Training: {L.strategy_label(name)}")
            done["n"] += 1

        def on_epoch(name: str, row: dict) -> None:
            ep = int(row.get("epoch", 0))
            frac = min(1.0, (done["n"] - 1 + ep / max(1, epochs)) / total)
            auc = row.get("val_auroc")
            extra = f", validation AUROC {auc:.3f}" if isinstance(auc, float) else ""
            bar.progress(frac, text=f"{L.strategy_label(name)}: epoch {ep}/{epochs}{extra}")

        from medtl.experiment import compare

        with st.status("Running the comparison…", expanded=True) as status:
            try:
                compare(
                    cfg, progress=False, on_strategy_start=on_start, on_epoch_end=on_epoch,
                    write_html=True,
                )  # fmt: skip
            except Exception as exc:
                status.update(label="The comparison failed", state="error")
                st.error(f"The comparison could not run: {exc}")
                return
            bar.progress(1.0, text="Done")
            status.update(label="Comparison finished", state="complete")
        st.session_state["run_dir"] = cfg.output.out
    elif not path:
        st.caption("Choose a dataset in the Data section to run a new comparison.")

    runs = [str(p) for p in L.list_runs(work)]
    if runs:
        current = st.session_state.get("run_dir")
        idx = runs.index(current) if current in runs else 0
        chosen = st.selectbox("Or open an earlier run", runs, index=idx, key="run_pick")
        if chosen != current and st.session_state.get("_last_pick") != chosen:
            st.session_state["run_dir"] = chosen
        st.session_state["_last_pick"] = chosen
    show_run()


def _run():
    rd = st.session_state.get("run_dir")
    if not rd or not Path(rd).is_dir():
        return None
    return _load_run(rd, _stamp(Path(rd)))


def show_run() -> None:
    from medtl.report import plot_calibration, plot_decision_curve, plot_learning_curves, plot_roc

    run = _run()
    if run is None:
        st.info("No comparison yet: run one above or open an earlier run.")
        return
    st.subheader("Results on the held-out test images")
    st.dataframe(L.strategy_rows(run.summary), hide_index=True)
    st.caption(
        "AUROC: probability that a random positive image scores above a random negative one "
        "(0.5 = guessing). 95% CI: the range the true value plausibly lies in. Start/slope/asymptote "
        "describe the learning curve: validation AUROC after the first epoch, gain per epoch, best level."
    )
    for w in L.gap_warnings(run.summary):
        st.warning(w)
    for sentence in L.paired_sentences(run.summary):
        st.info(f"Paired test on the same test images: {sentence}")
    for note in run.summary.get("notes", []):
        st.caption(note)
    cur = L.curves(run)
    if cur:
        c1, c2 = st.columns(2)
        c1.pyplot(plot_roc(cur))
        hist = {n: st_.history for n, st_ in run.strategies.items() if st_.history}
        if hist:
            c2.pyplot(plot_learning_curves(hist))
        c3, c4 = st.columns(2)
        c3.pyplot(plot_calibration(cur))
        c4.pyplot(plot_decision_curve(cur))


def page_operating(work: Path) -> None:
    from medtl.report import plot_confusion

    st.header("Operating point")
    st.write(
        "A model gives a probability; a **threshold** turns it into a yes/no call. Lower thresholds "
        "catch more cases (sensitivity) but raise more false alarms (lower specificity)."
    )
    run = _run()
    if run is None or not L.curves(run):
        st.info("Run or open a comparison (two-class data) in the Compare section first.")
        return
    mode = st.radio(
        "Choose the operating point by", ["Threshold", "Target sensitivity"], key="op_mode",
        horizontal=True,
    )  # fmt: skip
    c1, c2 = st.columns(2)
    if mode == "Threshold":
        thr = c1.slider(
            "Threshold (probability of the positive class)", 0.01, 0.99, 0.5, 0.01, key="thr"
        )
        kwargs = {"threshold": float(thr)}
    else:
        tgt = c1.slider(
            "Target sensitivity (chosen on validation images)", 0.5, 1.0, 0.9, 0.01, key="tgt"
        )
        kwargs = {"target_sensitivity": float(tgt)}
    prev = c2.number_input(
        "Prevalence where the model will be used (%)", 0.1, 99.9, 10.0, 0.5, key="prev",
        help="PPV/NPV depend on how common the condition is in your patients.",
    )  # fmt: skip
    ops = L.operating_points(run, prevalence=float(prev) / 100.0, **kwargs)
    positive = run.classes[1] if len(run.classes) > 1 else "positive"
    st.caption(f"Positive class: **{positive}**. Values in brackets are 95% confidence intervals.")
    st.dataframe(L.operating_rows(ops), hide_index=True, key="op_table")
    st.pyplot(
        plot_confusion(
            {L.strategy_label(n): o["confusion"] for n, o in ops.items()},
            class_names=run.classes[:2],
        )
    )


def page_single(work: Path) -> None:
    st.header("Single image")
    st.write("Upload one DICOM, PNG or JPEG image to see each model's probability and heatmap.")
    rd = st.session_state.get("run_dir")
    if not rd or not Path(rd).is_dir():
        st.info("Run or open a comparison in the Compare section first.")
        return
    up = st.file_uploader(f"One image (max {L.MAX_IMAGE_MB} MB)", type=None, key="single_upload")
    if up is None:
        return
    try:
        path = L.save_single_upload(up.getvalue(), up.name, work)
        img, meta = L.read_single(path)
    except L.AppInputError as exc:
        _show_error(exc)
        return
    models = L.model_dirs(Path(rd))
    cols = st.columns(1 + len(models))
    cols[0].image(img, caption="Uploaded image", clamp=True, use_container_width=True)
    cols[0].json(meta, expanded=False)
    from medtl.explain import overlay

    for col, (name, mdir) in zip(cols[1:], models.items()):
        label = L.strategy_label(name)
        try:
            est = _load_model(str(mdir), _stamp(mdir))
            proba, heat = L.predict_single(est, path)
        except Exception as exc:  # one model failing must not hide the others
            col.error(f"{label}: {exc}")
            continue
        k = min(1, len(proba) - 1)
        col.metric(f"{label}: P({est.classes_[k]})", f"{100 * proba[k]:.1f}%")
        col.image(overlay(img if img.ndim == 2 else img.mean(-1), heat), caption=f"{label}: heatmap",
                  use_container_width=True)  # fmt: skip
    st.caption(
        "Heatmap (Grad-CAM): red areas pushed the model towards the positive class. It is a coarse "
        "hint, not a lesion outline. Only technical image metadata is shown, never patient details."
    )


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
        "Single image": page_single,
    }
    try:
        pages[section](work)
    except L.AppInputError as exc:
        _show_error(exc)


main()

"""Hostile input, round two (issue 25): labels and links taken as data, images that are no images, and
configs that eat the machine or say nothing.

Every input is generated here, small, in ``tmp_path``; each test asserts the outcome a user sees: the
refusal (naming the field, value, limit or DICOM element and the fix), the skip reason, or the note.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import struct
import sys
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medtl._fileio import csv_cell, json_loads
from medtl.config import MAX_EPOCHS_UNBOUNDED, config_from_dict, load_config, load_yaml_text
from medtl.data import data_card, load_dataset
from medtl.data._files import unlabelled_files
from medtl.data._sources import scan_source
from medtl.errors import ConfigError, DatasetError, ImageReadError
from medtl.io import read_image, write_test_dicom
from tests._helpers import blob_images

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX links")

RNG = np.random.default_rng(25)


def noise(h: int = 24, w: int = 24) -> np.ndarray:
    return RNG.integers(1, 255, (h, w), dtype=np.uint8)


def png(path: Path, arr: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(noise() if arr is None else arr).save(path)
    return path


def chunk(ctype: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", zlib.crc32(ctype + data))


def png_with_rows(path: Path, width: int, height: int, rows: int) -> Path:
    """A valid PNG (CRCs, IEND) whose image data covers only the first ``rows`` of ``height``."""
    raw = b"".join(b"\x00" + noise(1, width).tobytes() for _ in range(rows))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def skipped_reasons(ds, root: Path) -> dict[str, str]:
    return {Path(os.path.relpath(k.path, root)).as_posix(): k.reason for k in ds.skipped}


# -- labels ---------------------------------------------------------------------------------------


def test_class_folders_differing_in_case_or_spaces_are_refused_with_the_variants(tmp_path) -> None:
    for name in ("normal", "normal ", "Normal", "opacity"):
        for i in range(3):
            png(tmp_path / "ds" / name / f"{i}.png")
    with pytest.raises(DatasetError) as err:
        load_dataset(tmp_path / "ds", progress=False, min_per_class=1)
    msg = str(err.value)
    assert "'Normal' vs 'normal' vs 'normal '" in msg and "one spelling" in msg
    assert "opacity" not in msg.split("format:")[1].split(".")[0]  # only the clashing names


def test_split_folders_disagreeing_on_case_are_refused(tmp_path) -> None:
    for sp, names in (("train", ("NORMAL", "PNEUMONIA")), ("test", ("normal", "PNEUMONIA"))):
        for name in names:
            png(tmp_path / sp / name / "a.png")
    with pytest.raises(DatasetError, match="'NORMAL' vs 'normal'"):
        scan_source(tmp_path)


@pytest.mark.parametrize(
    ("labels", "variants"),
    [
        (("Normal", "normal", "opacity"), "'Normal' vs 'normal'"),
        (("0", "0.0", "1"), "'0' vs '0.0'"),
    ],
)
def test_manifest_labels_differing_in_case_or_number_format_are_refused(
    tmp_path, labels, variants
) -> None:
    rows = ["path,label"]
    for i, lab in enumerate(labels * 2):
        png(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{lab}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DatasetError, match=variants):
        scan_source(tmp_path / "m.csv")


def test_a_manifest_file_listed_with_two_labels_is_used_under_neither(tmp_path) -> None:
    for i in range(3):
        png(tmp_path / "img" / f"{i}.png")
    (tmp_path / "m.csv").write_text(
        "path,label\nimg/0.png,a\n./img/0.png,b\nimg/1.png,a\nimg/2.png,b\nimg/../img/1.png,a\n"
    )
    scan = scan_source(tmp_path / "m.csv")
    assert sorted(Path(s.path).name for s in scan.samples) == ["1.png", "2.png"]
    reasons = [k.reason for k in scan.skipped]
    assert sum("listed with two labels" in r for r in reasons) == 2  # both rows of 0.png
    assert any("listed twice" in r and "first on line 4" in r for r in reasons)


# -- links ----------------------------------------------------------------------------------------


@pytest.fixture
def linked(tmp_path):
    root = tmp_path / "ds"
    for i in range(4):
        png(root / "normal" / f"n{i}.png")
        png(root / "opacity" / f"o{i}.png")
        png(root / "opacity" / "batch2" / f"b{i}.png")
    outside = tmp_path / "elsewhere"
    png(outside / "x.png")
    os.symlink(root / "opacity" / "batch2", root / "normal" / "to_batch2")
    os.symlink(root, root / "normal" / "to_root")
    os.symlink(outside, root / "normal" / "to_outside")
    os.symlink("/etc", root / "normal" / "to_etc")
    os.link(root / "opacity" / "o0.png", root / "normal" / "hard_o0.png")
    os.symlink(root / "normal" / "n1.png", root / "normal" / "again_n1.png")
    return root


def test_links_never_put_a_file_under_another_label_or_leave_the_dataset(linked) -> None:
    ds = load_dataset(linked, progress=False, min_per_class=1)
    by_class: dict[str, set[str]] = {c: set() for c in ds.classes}
    for s in ds.samples:
        by_class[ds.classes[s.label]].add(Path(os.path.relpath(s.path, linked)).as_posix())
    assert by_class["normal"] == {
        "normal/n0.png",
        "normal/n1.png",
        "normal/n2.png",
        "normal/n3.png",
    }
    assert {f"opacity/batch2/b{i}.png" for i in range(4)} <= by_class["opacity"]
    assert "opacity/o0.png" not in by_class["opacity"]  # hard-linked into normal/: neither label
    assert all(os.path.realpath(s.path).startswith(str(linked)) for s in ds.samples)
    reasons = skipped_reasons(ds, linked)
    assert "out of its class folder" in reasons["normal/to_batch2"]
    assert "out of its class folder" in reasons["normal/to_root"]
    assert "outside the dataset folder; not followed" in reasons["normal/to_outside"]
    assert "outside the dataset folder; not followed" in reasons["normal/to_etc"]
    assert not any(k.startswith("normal/to_etc/") for k in reasons)  # /etc never listed or opened
    assert "2 class folders (normal, opacity)" in reasons["normal/hard_o0.png"]
    assert "2 class folders" in reasons["opacity/o0.png"]
    assert "used once" in reasons["normal/again_n1.png"]  # the link, not the file itself


def test_a_class_folder_linked_to_another_reads_neither_under_the_wrong_label(tmp_path) -> None:
    root = tmp_path / "ds"
    for i in range(3):
        png(root / "normal" / f"n{i}.png")
        png(root / "opacity" / f"o{i}.png")
    os.symlink(root / "opacity", root / "zz_copy")
    os.symlink(tmp_path, root / "zz_out")  # a class folder that is a link out of the root
    scan = scan_source(root)
    labels = {Path(s.path).name: scan.classes[s.label] for s in scan.samples}
    assert labels == {f"n{i}.png": "normal" for i in range(3)}
    reasons = [k.reason for k in scan.skipped]
    assert sum("2 class folders (opacity, zz_copy)" in r for r in reasons) == 6
    assert any("outside the dataset folder" in r for r in reasons)


def test_predict_inputs_do_not_follow_links_out_of_the_folder_given(tmp_path) -> None:
    png(tmp_path / "in" / "a.png")
    png(tmp_path / "other" / "b.png")
    os.symlink(tmp_path / "other", tmp_path / "in" / "link")
    samples, skipped = unlabelled_files(tmp_path / "in")
    assert [Path(s.path).name for s in samples] == ["a.png"]
    assert any("outside the folder given" in k.reason for k in skipped)


# -- CSV cells ------------------------------------------------------------------------------------


def test_csv_cells_are_escaped_against_formula_injection() -> None:
    for bad in ('=HYPERLINK("http://x")', "+1+1", "-cmd", "@SUM(A1)", "\tx", "\rx"):
        assert csv_cell(bad) == "'" + bad
    for fine in ("normal", "-0.5", "+3", "1e-3", 0.25, -1, None, ""):
        assert csv_cell(fine) == fine


def test_predict_csv_escapes_a_formula_class_name(tmp_path) -> None:
    from medtl.evaluation import predict
    from medtl.strategies import get_strategy

    evil = '=HYPERLINK("http://x")'
    train = replace(blob_images(24, seed=1), classes=[evil, "lesion"])
    val = replace(blob_images(12, seed=2, offset=100), classes=[evil, "lesion"])
    est = get_strategy("feature_extraction", backbone="tiny_test", progress=False, Cs=[1.0])
    model = est.fit(train, val).save(tmp_path / "model")
    for i in range(3):
        png(tmp_path / "new" / f"{i}.png")
    out = tmp_path / "p.csv"
    predict(model, [str(tmp_path / "new")], out=out, threshold=1.0, progress=False)
    text = out.read_text()
    rows = list(csv.reader(io.StringIO(text)))
    calls = [r[-1] for r in rows[1:]]
    assert calls and all(c == "'" + evil for c in calls)
    assert not any(cell.startswith(("=", "+", "@")) for row in rows for cell in row)


def test_id_map_and_skipped_csv_escape_cells_and_write_where_asked(tmp_path) -> None:
    from medtl.data import Dataset, Sample, SkippedFile, write_id_map
    from medtl.runs import skipped_csv

    image = png(tmp_path / "=cmd|calc.png")
    before = image.read_bytes()
    ds = Dataset("", "files", ["a", "b"], [Sample(str(image), 0, "u1")], [])
    ds.skipped.append(SkippedFile("@x", "-reason", "u2"))
    out = write_id_map(ds, tmp_path / "ids.csv")
    assert out == tmp_path / "ids.csv" and image.read_bytes() == before
    assert "u2,skipped,'@x" in out.read_text()
    assert "'-reason" in skipped_csv(ds.skipped)


def test_predict_out_on_an_existing_folder_names_that_folder(tmp_path) -> None:
    from medtl.evaluation import predict

    folder = tmp_path / "results"
    folder.mkdir()
    with pytest.raises(ConfigError, match=r"'out' path .*results' is an existing folder") as err:
        predict(tmp_path / "no_model_needed", [str(tmp_path)], out=folder, progress=False)
    assert ".tmp" not in str(err.value)


# -- images ---------------------------------------------------------------------------------------


def test_png_whose_data_covers_10_of_64_rows_is_refused(tmp_path) -> None:
    p = png_with_rows(tmp_path / "cut.png", 64, 64, 10)
    with Image.open(p) as im:  # Pillow alone fills the 54 missing rows with black
        im.load()
    with pytest.raises(ImageReadError, match="covers only 10 of its 64 rows"):
        read_image(p)
    read_image(png_with_rows(tmp_path / "whole.png", 64, 64, 64))  # complete data: read


def test_degenerate_sizes_and_padding_are_skipped_with_a_reason(tmp_path) -> None:
    root = tmp_path / "ds"
    for c in ("a", "b"):
        for i in range(3):
            png(root / c / f"ok{i}.png")
    png(root / "a" / "tiny.png", noise(4, 4))
    png(root / "a" / "strip.png", noise(1, 600))
    png(root / "a" / "wide.png", noise(10, 120))
    padded = np.zeros((64, 64), np.uint16)
    padded[0, :6] = np.arange(1, 7) * 500  # all padding but 6 pixels
    write_test_dicom(root / "b" / "padding.dcm", padded)
    border = np.zeros((64, 64), np.uint16)
    border[20:34, 20:34] = RNG.integers(100, 4000, (14, 14))  # 95% padding, a usable centre
    write_test_dicom(root / "b" / "border.dcm", border)
    ds = load_dataset(root, progress=False, min_per_class=1)
    reasons = skipped_reasons(ds, root)
    assert "a side under 8 px" in reasons["a/tiny.png"]
    assert "a side under 8 px" in reasons["a/strip.png"]
    assert "extreme aspect ratio" in reasons["a/wide.png"] and "120x10" in reasons["a/wide.png"]
    assert (
        "nearly constant" in reasons["b/padding.dcm"]
        and "only 6 differ" in reasons["b/padding.dcm"]
    )
    assert "b/border.dcm" not in reasons
    _, meta = read_image(root / "b" / "border.dcm")
    assert any(n.startswith("mostly padding: 95%") for n in meta["notes"])
    image, meta = read_image(root / "a" / "tiny.png")  # the reader still shows it, flagged
    assert image.shape == (4, 4) and "under 8 px" in meta["unusable_reason"]


def test_npz_of_1x1_images_is_refused_naming_the_key(tmp_path) -> None:
    path = tmp_path / "one.npz"
    np.savez(path, train_images=noise(10, 1)[:, :, None], train_labels=np.arange(10) % 2)
    with pytest.raises(DatasetError, match="'train_images' holds images of degenerate size: 1x1"):
        load_dataset(path, progress=False)


def test_constant_npz_images_are_skipped_when_prepared(tmp_path) -> None:
    from medtl.data import prepare_images

    imgs = RNG.integers(0, 255, (6, 28, 28), dtype=np.uint8)
    imgs[2] = 0
    path = tmp_path / "m.npz"
    np.savez(path, train_images=imgs, train_labels=np.arange(6) % 2)
    ds = load_dataset(path, progress=False, min_per_class=1, val_fraction=0, test_fraction=0)
    prep = prepare_images(ds.samples, ds.classes, size=28, progress=False)
    assert len(prep) == 5 and ["constant image" in k.reason for k in prep.skipped] == [True]


def test_multi_frame_dicom_and_animated_png_say_which_frame_was_used(tmp_path) -> None:
    path = write_test_dicom(tmp_path / "mf.dcm", np.stack([noise() for _ in range(3)]) * 16)
    _, meta = read_image(path)
    assert "multi-frame DICOM: frame 1 of 3 (0-based) used" in " ".join(meta["notes"])
    _, meta = read_image(path, frame=0)
    assert "frame 0 of 3" in " ".join(meta["notes"])
    frames = [Image.fromarray(noise()) for _ in range(4)]
    frames[0].save(tmp_path / "anim.png", save_all=True, append_images=frames[1:])
    _, meta = read_image(tmp_path / "anim.png")
    assert "animated PNG: frame 2 of 4 (0-based) used" in " ".join(meta["notes"])
    _, meta = read_image(write_test_dicom(tmp_path / "one.dcm", noise() * 16))
    assert not any("frame" in n for n in meta["notes"])  # a single frame says nothing


def test_the_data_card_counts_what_was_flagged_while_reading(tmp_path) -> None:
    for c in ("a", "b"):
        for i in range(3):
            write_test_dicom(tmp_path / c / f"{i}.dcm", np.stack([noise(), noise()]) * 16)
    ds = load_dataset(tmp_path, progress=False, min_per_class=1)
    card = data_card(ds)
    assert "flagged while reading" in card and "multi-frame DICOM (6)" in card


def _corrupt_rle_dicom(path: Path) -> Path:
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import RLELossless

    write_test_dicom(path, noise())
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = RLELossless
    header = struct.pack("<16I", 1, 64, *([0] * 14))  # one segment, then garbage runs
    ds.PixelData = encapsulate([header + b"\x05garbage"])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_corrupt_compressed_dicom_gives_one_reason_and_no_decoder_traceback(
    tmp_path, caplog, capfd
) -> None:
    path = _corrupt_rle_dicom(tmp_path / "rle.dcm")
    logging.basicConfig()  # as the command line does: library records would reach stderr
    with caplog.at_level(logging.DEBUG), pytest.raises(ImageReadError) as err:
        read_image(path)
    assert "is corrupt: every installed decoder failed" in err.value.reason
    assert "install a decoder plugin" not in err.value.reason  # the decoders are installed
    libs = ("pydicom", "pylibjpeg", "openjpeg", "libjpeg", "rle")
    assert not [r for r in caplog.records if r.name.split(".")[0] in libs]
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err and "Traceback" not in captured.out


def _lut_dicom(path: Path, keyword: str, descriptor: list[int] | None, data: list[int] | None):
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    write_test_dicom(path, noise().astype(np.uint16) * 16)
    ds = pydicom.dcmread(path)
    item = Dataset()
    if descriptor is not None:
        item.add_new(0x00283002, "US", descriptor)
    if data is not None:
        item.add_new(0x00283006, "US", data)
    setattr(ds, keyword, Sequence([item]))
    for k in ("RescaleSlope", "RescaleIntercept"):
        if keyword == "ModalityLUTSequence" and k in ds:
            delattr(ds, k)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize(
    ("descriptor", "data", "problem"),
    [
        (
            [4096, 0],
            list(range(4096)),
            r"LUT Descriptor \(0028,3002\) has 2 value\(s\), expected 3",
        ),
        ([4096, 0, 16], None, r"the item has no LUT Data \(0028,3006\)"),
        ([4096, 0, 16], [1, 2, 3], r"LUT Data \(0028,3006\) holds 3 entries .* declares 4096"),
    ],
)
def test_dicom_lut_faults_name_the_element_and_the_fix(tmp_path, descriptor, data, problem):
    path = _lut_dicom(tmp_path / "m.dcm", "ModalityLUTSequence", descriptor, data)
    with pytest.raises(ImageReadError, match=r"\(0028,3000\) Modality LUT Sequence: " + problem):
        read_image(path)
    with pytest.raises(ImageReadError, match="fix or remove the element"):
        read_image(path, window="full")
    path = _lut_dicom(tmp_path / "v.dcm", "VOILUTSequence", descriptor, data)
    with pytest.warns(UserWarning, match=r"\(0028,3010\) VOI LUT Sequence: " + problem):
        _, meta = read_image(path)
    assert meta["window_used"] == "full" and any("malformed VOI LUT" in n for n in meta["notes"])


# -- configs --------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "# only a comment\n", "{}\n"])
def test_an_empty_config_file_is_an_error(tmp_path, text) -> None:
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ConfigError, match=r"is empty .* would silently run every default"):
        load_config(tmp_path / "c.yaml")


def test_a_duplicate_yaml_key_is_an_error_naming_both_lines(tmp_path) -> None:
    (tmp_path / "c.yaml").write_text("train:\n  epochs: 5\n  batch_size: 8\n  epochs: 50\n")
    with pytest.raises(ConfigError, match=r"key 'epochs' appears twice .*lines 2 and 4"):
        load_config(tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match="'a' appears twice"):
        load_yaml_text("{a: 1, a: 2}")
    merged = load_yaml_text("base: &b {x: 1, y: 2}\nd:\n  <<: *b\n  x: 3\n")
    assert merged["d"] == {"x": 3, "y": 2}  # overriding a merged key is not a duplicate


def test_an_evaluate_batch_file_with_a_duplicate_key_is_refused(tmp_path) -> None:
    from medtl.evaluation import evaluate

    (tmp_path / "b.yaml").write_text("models: [a]\ndatasets: [b]\nmodels: [c]\n")
    with pytest.raises(ConfigError, match="'models' appears twice"):
        evaluate(batch_file=tmp_path / "b.yaml")


def test_unbounded_epochs_without_a_stopping_rule_are_refused() -> None:
    no_stop = {"params": {"fine_tuning": {"patience": None}}, "strategies": ["fine_tuning"]}
    with pytest.raises(ConfigError) as err:
        config_from_dict({**no_stop, "train": {"epochs": 10**9}})
    msg = str(err.value)
    assert "'train.epochs'" in msg and "1000000000" in msg and str(MAX_EPOCHS_UNBOUNDED) in msg
    assert "patience" in msg and "max_minutes" in msg
    config_from_dict({**no_stop, "train": {"epochs": 10**9, "max_minutes": 5}})  # a time box
    config_from_dict({"strategies": ["fine_tuning"], "train": {"epochs": 10**9}})  # early stopping
    with pytest.raises(ConfigError, match=r"'params\.fine_tuning\.epochs'"):
        config_from_dict({"params": {"fine_tuning": {"patience": None, "epochs": 5000}}})
    from medtl.training import LoopSettings

    with pytest.raises(ConfigError, match="above 1000 epochs"):
        LoopSettings(epochs=10**9, patience=None)


def test_synthetic_dataset_sizes_are_bounded() -> None:
    from medtl.data.synth import make_phantom

    with pytest.raises(ConfigError, match=r"'data.synthetic_per_class' setting is 1000000000"):
        config_from_dict({"data": {"synthetic_per_class": 10**9}})
    with pytest.raises(ConfigError, match="above the limit of 10000"):
        make_phantom("never_written", n_per_class=10**9)
    with pytest.raises(ConfigError, match="GiB of DICOM files"):
        make_phantom("never_written", n_per_class=5000, size=1024)
    assert not Path("never_written").exists()


def test_a_batch_larger_than_the_training_split_is_refused_before_decoding(
    tmp_path, monkeypatch
) -> None:
    import medtl.data
    from medtl.config import check_batch_sizes
    from medtl.experiment import load_data

    for c in ("a", "b"):
        for i in range(8):
            png(tmp_path / "ds" / c / f"{i}.png")

    def never(*a, **k):
        raise AssertionError("images decoded before the batch size was checked")

    monkeypatch.setattr(medtl.data, "prepare_images", never)
    cfg = config_from_dict(
        {
            "data": {"path": str(tmp_path / "ds"), "min_per_class": 1},
            "strategies": ["fine_tuning"],
            "train": {"batch_size": 100_000},
            "output": {"cache_dir": str(tmp_path / "cache")},
        }
    )
    with pytest.raises(ConfigError, match=r"'train\.batch_size' field is 100000, larger than the "):
        load_data(cfg, progress=False)
    own = config_from_dict({"params": {"from_scratch": {"batch_size": 64}}})
    with pytest.raises(ConfigError, match=r"'params\.from_scratch\.batch_size' field is 64"):
        check_batch_sizes(own, 40, {"from_scratch"})
    check_batch_sizes(own, 40, set())  # a strategy not trained in batches is not checked


def test_the_training_loop_refuses_a_batch_that_would_eat_memory() -> None:
    from medtl.strategies import get_strategy

    train, val = blob_images(20, seed=1), blob_images(10, seed=2, offset=100)
    est = get_strategy(
        "fine_tuning", backbone="tiny_test", epochs=1, batch_size=10**6, progress=False
    )
    with pytest.raises(ConfigError, match=r"'batch_size' is 1000000, larger than the 20 training"):
        est.fit(train, val)
    get_strategy(  # 32 on 20 images repeats a few of them (the advisor's pilots do): allowed
        "fine_tuning", backbone="tiny_test", epochs=1, batch_size=32, progress=False
    ).fit(train, val)


def test_diverging_training_stops_naming_the_epoch_and_the_fix() -> None:
    from medtl.strategies import get_strategy

    train, val = blob_images(24, seed=1), blob_images(12, seed=2, offset=100)
    est = get_strategy(
        "fine_tuning", backbone="tiny_test", epochs=3, batch_size=8, lr=1e10, progress=False
    )
    with pytest.raises(ConfigError, match=r"became nan at epoch 1 .*lower the learning rate"):
        est.fit(train, val)


def test_json_depth_is_bounded_for_model_and_run_files(tmp_path) -> None:
    from medtl.runs import read_summary
    from medtl.strategies._modelfile import ModelFileError, read_meta

    deep = '{"a": ' + "[" * 200_000 + "]" * 200_000 + "}"
    with pytest.raises(ValueError, match="nested deeper than 100"):
        json_loads(deep)
    assert json_loads('{"a": "[[[[", "b": [[1]]}') == {"a": "[[[[", "b": [[1]]}
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.json").write_text(deep)
    (model / "model.safetensors").write_bytes(b"x")
    with pytest.raises(ModelFileError, match="nested deeper than 100"):
        read_meta(model)
    (tmp_path / "summary.json").write_text(deep)
    assert read_summary(tmp_path) is None  # a note, not a RecursionError

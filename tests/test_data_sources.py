"""load_dataset on every source kind, splits, skipped files, class checks, save/load of splits."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medtl.data import load_dataset, load_splits, save_splits
from medtl.errors import ConfigError, DatasetError
from medtl.io import write_test_dicom

RNG_SEED = 1234


def _grey(rng: np.random.Generator, size: int = 16) -> np.ndarray:
    return rng.integers(0, 255, (size, size), dtype=np.uint8)


def write_image(path: Path, rng: np.random.Generator, kind: str) -> Path:
    """Write one tiny image as PNG, JPEG or DICOM."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "png":
        Image.fromarray(_grey(rng)).save(path, format="PNG")
    elif kind == "jpeg":
        Image.fromarray(_grey(rng)).convert("RGB").save(path, format="JPEG")
    else:
        write_test_dicom(path, (_grey(rng).astype(np.uint16) * 16), bits_stored=12)
    return path


def make_class_folders(root: Path, counts: dict[str, int], seed: int = RNG_SEED) -> Path:
    """root/<class>/ with a mix of PNG, JPEG and DICOM (DICOM named .dcm or without suffix)."""
    rng = np.random.default_rng(seed)
    kinds = ["png", "jpeg", "dicom"]
    for cls, n in counts.items():
        for i in range(n):
            kind = kinds[i % 3]
            suffix = {"png": ".png", "jpeg": ".jpg", "dicom": ".dcm" if i % 2 else ""}[kind]
            write_image(root / cls / f"im{i:03d}{suffix}", rng, kind)
    return root


def test_folder_classes_mixed_formats_and_splits(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "ds", {"normal": 20, "abnormal": 14})
    (root / "normal" / ".DS_Store").write_bytes(b"\0\1junk")  # hidden: ignored silently
    (root / "README.md").write_text("top-level files are not samples")
    ds = load_dataset(root, progress=False)
    assert ds.source == "folder_classes"
    assert ds.classes == ["abnormal", "normal"]
    assert len(ds.samples) == 34
    assert ds.skipped == []
    counts = ds.counts()
    assert set(counts) == {"train", "val", "test"}
    for sp in ("train", "val", "test"):
        assert all(counts[sp][c] >= 1 for c in ds.classes), counts  # stratified
    assert sum(counts["test"].values()) == pytest.approx(34 * 0.15, abs=1.01)
    uids = [s.uid for s in ds.samples]
    assert len(set(uids)) == len(uids) and all(len(u) == 16 for u in uids)


@pytest.mark.parametrize("val_name", ["val", "valid"])
def test_folder_splits_keeps_official_splits(tmp_path: Path, val_name: str) -> None:
    root = tmp_path / "ds"
    make_class_folders(root / "train", {"A": 10, "B": 10}, seed=1)
    make_class_folders(root / val_name, {"A": 3, "B": 3}, seed=2)
    make_class_folders(root / "test", {"A": 4, "B": 5}, seed=3)
    ds = load_dataset(root, progress=False)
    assert ds.source == "folder_splits"
    c = ds.counts()
    assert c == {"train": {"A": 10, "B": 10}, "val": {"A": 3, "B": 3}, "test": {"A": 4, "B": 5}}
    assert all(f"/{val_name}/" in s.path for s in ds.split("val"))


def test_folder_splits_carves_val_from_train_only(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    make_class_folders(root / "train", {"A": 20, "B": 20}, seed=1)
    make_class_folders(root / "test", {"A": 4, "B": 4}, seed=3)
    ds = load_dataset(root, val_fraction=0.2, progress=False)
    c = ds.counts()
    assert c["test"] == {"A": 4, "B": 4}  # official test untouched
    assert all("/test/" in s.path for s in ds.split("test"))
    assert all("/train/" in s.path for s in ds.split("val"))
    assert sum(c["val"].values()) == 8 and c["val"]["A"] >= 1 and c["val"]["B"] >= 1
    assert sum(c["train"].values()) == 32


def write_manifest(tmp_path: Path, n_patients: int = 24, per_patient: int = 3) -> Path:
    """A CSV with relative paths, patient ids and 2 classes (label fixed per patient)."""
    rng = np.random.default_rng(RNG_SEED)
    rows = ["path,label,patient_id"]
    for p in range(n_patients):
        label = "pos" if p % 3 == 0 else "neg"
        for k in range(per_patient):
            rel = f"imgs/p{p:02d}_{k}.png"
            write_image(tmp_path / rel, rng, "png")
            rows.append(f"{rel},{label},P{p:04d}")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "manifest.csv"


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_csv_patient_level_splits(tmp_path: Path, seed: int) -> None:
    csv_path = write_manifest(tmp_path)
    ds = load_dataset(csv_path, seed=seed, progress=False)
    assert ds.source == "csv"
    assert ds.classes == ["neg", "pos"]
    assert Path(ds.samples[0].path).is_absolute() and Path(ds.samples[0].path).exists()
    where: dict[str, set[str]] = defaultdict(set)
    for s in ds.samples:
        where[s.patient_id].add(s.split)
    assert all(len(v) == 1 for v in where.values()), "a patient is in two splits"
    c = ds.counts()
    for sp in ("train", "val", "test"):
        assert all(c[sp][cls] >= 1 for cls in ds.classes), c


def test_csv_split_column_and_absolute_paths(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = ["path,label,split"]
    for i in range(24):
        f = write_image(tmp_path / "elsewhere" / f"{i}.png", rng, "png")
        sp = "train" if i < 16 else ("valid" if i < 20 else "test")
        rows.append(f"{f},{'ab'[i % 2]},{sp}")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "m.csv").write_text("\n".join(rows) + "\n")
    ds = load_dataset(tmp_path / "sub" / "m.csv", min_per_class=2, progress=False)
    c = ds.counts()
    assert sum(c["train"].values()) == 16 and sum(c["val"].values()) == 4
    assert sum(c["test"].values()) == 4


def test_csv_bad_split_value_names_line(tmp_path: Path) -> None:
    write_image(tmp_path / "a.png", np.random.default_rng(0), "png")
    (tmp_path / "m.csv").write_text("path,label,split\na.png,x,training-set\n")
    with pytest.raises(DatasetError, match=r"line 2.*training-set"):
        load_dataset(tmp_path / "m.csv", progress=False)


def test_csv_missing_column(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("file,label\na.png,x\n")
    with pytest.raises(DatasetError, match="'path' column"):
        load_dataset(tmp_path / "m.csv", progress=False)


def test_npz_source(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {}
    for sp, n in (("train", 30), ("val", 6), ("test", 8)):
        arrays[f"{sp}_images"] = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        arrays[f"{sp}_labels"] = (np.arange(n) % 2).reshape(-1, 1)
    np.savez(tmp_path / "pneumoniamnist.npz", **arrays)
    ds = load_dataset(tmp_path / "pneumoniamnist.npz", progress=False)
    assert ds.source == "npz" and ds.classes == ["0", "1"]
    assert ds.counts() == {
        "train": {"0": 15, "1": 15},
        "val": {"0": 3, "1": 3},
        "test": {"0": 4, "1": 4},
    }
    assert ds.split("val")[2].uid == "val/2"
    named = load_dataset(
        tmp_path / "pneumoniamnist.npz", class_names=["normal", "pneumonia"], progress=False
    )
    assert named.classes == ["normal", "pneumonia"]


def test_same_seed_same_split_other_seed_differs(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "ds", {"a": 20, "b": 20})
    s0 = [(s.uid, s.split) for s in load_dataset(root, seed=7, progress=False).samples]
    s1 = [(s.uid, s.split) for s in load_dataset(root, seed=7, progress=False).samples]
    s2 = [(s.uid, s.split) for s in load_dataset(root, seed=8, progress=False).samples]
    assert s0 == s1
    assert s0 != s2


def test_skipped_files_are_reported_not_fatal(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "ds", {"a": 6, "b": 6})
    (root / "a" / "empty.png").write_bytes(b"")
    (root / "a" / "random.jpg").write_bytes(np.random.default_rng(0).bytes(300))
    (root / "b" / "notes.png").write_text("this is a text file named .png")
    (root / "b" / "Thumbs.db").write_bytes(b"\x00" * 64)
    good = write_test_dicom(tmp_path / "full.dcm", np.full((64, 64), 1000, np.uint16))
    data = good.read_bytes()
    (root / "b" / "truncated.dcm").write_bytes(data[: len(data) - 64 * 64])  # half the pixel data
    ds = load_dataset(root, progress=False)
    skipped = {Path(k.path).name: k.reason for k in ds.skipped}
    assert set(skipped) == {"empty.png", "random.jpg", "notes.png", "Thumbs.db", "truncated.dcm"}
    assert all(isinstance(r, str) and r for r in skipped.values())
    assert len(ds.samples) == 12


def test_one_class_is_an_error_naming_it(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "ds", {"onlyclass": 8})
    with pytest.raises(DatasetError, match=r"1 class.*onlyclass"):
        load_dataset(root, progress=False)


def test_too_few_per_class_names_class_and_count(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "ds", {"big": 10, "tiny": 3})
    (root / "tiny" / "broken.png").write_bytes(b"")  # unreadable: does not count
    with pytest.raises(DatasetError, match=r"'tiny' has 3.*min_per_class=5"):
        load_dataset(root, progress=False)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nope", progress=False)
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "m.csv").write_text("path,label\n")
    with pytest.raises(DatasetError, match="Did you mean the manifest"):
        load_dataset(tmp_path / "flat", progress=False)
    with pytest.raises(ConfigError, match="val_fraction"):
        load_dataset(tmp_path, val_fraction=1.5, progress=False)


def test_save_and_load_splits_round_trip(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "ds", {"a": 8, "b": 8})
    (root / "a" / "bad.png").write_bytes(b"")
    ds = load_dataset(root, seed=3, progress=False)
    out = save_splits(ds, tmp_path / "run" / "splits.json")
    text = out.read_text()
    obj = json.loads(text)
    assert all("path" not in r for r in obj["samples"] + obj["skipped"])  # no paths, only uids
    assert "bad.png" not in text and str(tmp_path) not in text
    again = load_splits(out, root)
    assert again.classes == ds.classes
    assert again.samples == ds.samples
    assert again.skipped == ds.skipped
    # the same files under another root (copied dataset) load too
    moved = tmp_path / "moved"
    root.rename(moved)
    relocated = load_splits(out, moved)
    assert [(s.uid, s.split, s.label) for s in relocated.samples] == [
        (s.uid, s.split, s.label) for s in ds.samples
    ]
    with pytest.raises(DatasetError, match="does not exist"):
        load_splits(out, tmp_path / "empty")
    (moved / "a" / "im000.png").rename(moved / "a" / "renamed.png")
    with pytest.raises(DatasetError, match=r"1 image.*missing"):
        load_splits(out, moved)
    with pytest.raises(DatasetError, match="another salt"):
        load_splits(out, moved, salt=b"x" * 32)


def test_patient_id_pattern_keeps_patients_in_one_split(tmp_path: Path) -> None:
    # Kermany-style names: several images per patient, the patient only in the file name
    rng = np.random.default_rng(5)
    root = tmp_path / "ds"
    for p in range(20):
        for k in range(3):
            write_image(
                root / "train" / "PNEU" / f"person{p}_bacteria_{10 * p + k}.png", rng, "png"
            )
        write_image(root / "train" / "NORMAL" / f"IM-{p:04d}-0001.png", rng, "png")
        write_image(root / "train" / "NORMAL" / f"IM-{p:04d}-0002.png", rng, "png")
    write_image(root / "train" / "NORMAL" / "odd_name.png", rng, "png")
    pattern = r"^(person\d+)_|^(IM-\d+)-"
    for seed in range(3):
        ds = load_dataset(
            root, val_fraction=0.3, seed=seed, progress=False, patient_id_pattern=pattern
        )
        where = defaultdict(set)
        for s in ds.samples:
            if s.patient_id:
                where[s.patient_id].add(s.split)
        assert len(where) == 40  # 20 person ids + 20 IM ids; the odd name has none
        assert all(len(v) == 1 for v in where.values())
        assert {"train", "val", "test"} == {s.split for s in ds.samples}
    # without the pattern, the random carve does split patients (what the option prevents)
    ds = load_dataset(root, val_fraction=0.3, seed=0, progress=False)
    split_of = defaultdict(set)
    for s in ds.samples:
        split_of[Path(s.path).name.split("_")[0]].add(s.split)
    assert any(len(v) > 1 for k, v in split_of.items() if k.startswith("person"))


def test_patient_id_pattern_errors_name_the_parameter(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "ds", {"A": 6, "B": 6})
    with pytest.raises(ConfigError, match="patient_id_pattern"):
        load_dataset(root, progress=False, patient_id_pattern="person(")
    from medtl.config import ExperimentConfig

    cfg = ExperimentConfig()
    cfg.data.patient_id_pattern = "(["
    with pytest.raises(ConfigError, match=r"data\.patient_id_pattern"):
        cfg.validate()


def test_positive_class_becomes_index_one(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "ds", {"malignant": 6, "normal": 9})
    default = load_dataset(root, progress=False)
    assert default.classes == ["malignant", "normal"]  # sorted: "normal" would be the finding
    ds = load_dataset(root, progress=False, positive_class="malignant")
    assert ds.classes == ["normal", "malignant"]
    by_path = {s.path: s.label for s in default.samples}
    for s in ds.samples:  # every label flipped, files and splits unchanged
        assert s.label == 1 - by_path[s.path]
        assert ("malignant" in s.path) == (s.label == 1)
    assert [s.split for s in ds.samples] == [s.split for s in default.samples]
    same = load_dataset(root, progress=False, positive_class="normal")
    assert same.classes == default.classes
    with pytest.raises(DatasetError, match=r"positive_class.*'benign'"):
        load_dataset(root, progress=False, positive_class="benign")
    three = make_class_folders(tmp_path / "three", {"a": 5, "b": 5, "c": 5})
    with pytest.raises(ConfigError, match="two-class"):
        load_dataset(three, progress=False, positive_class="a")


def test_byte_identical_copies_stay_on_one_side_of_every_carve(tmp_path: Path) -> None:
    import shutil

    root = make_class_folders(tmp_path / "ds", {"A": 30, "B": 30})
    copies = []
    for cls in ("A", "B"):
        for i in range(0, 12, 2):  # six files per class saved again under another name
            src = next((root / cls).glob(f"im{i:03d}*"))
            dst = src.with_name(f"copy_{src.name}")
            shutil.copyfile(src, dst)
            copies.append((str(src), str(dst)))
    for seed in range(4):
        ds = load_dataset(root, val_fraction=0.3, test_fraction=0.3, seed=seed, progress=False)
        split = {s.path: s.split for s in ds.samples}
        assert all(split[a] == split[b] for a, b in copies), seed
        assert {"train", "val", "test"} == set(split.values())


def test_duplicate_groups_reads_only_what_it_must(tmp_path: Path) -> None:
    from medtl.data import duplicate_groups
    from medtl.data._types import Sample

    rng = np.random.default_rng(0)
    big = rng.integers(0, 255, 200_000, dtype=np.uint8).tobytes()  # > the 64 KiB prefix
    files = {
        "a.bin": big,
        "a_copy.bin": big,
        "same_prefix.bin": big[:-1] + bytes([(big[-1] + 1) % 256]),  # differs in the last byte
        "s1.png": b"x" * 100,
        "s2.png": b"x" * 100,
        "s3.png": b"y" * 100,  # same size as s1/s2, other bytes
    }
    samples = []
    for i, (name, data) in enumerate(files.items()):
        (tmp_path / name).write_bytes(data)
        samples.append(Sample(path=str(tmp_path / name), label=0, uid=str(i)))
    samples.append(Sample(path=str(tmp_path / "missing.png"), label=0, uid="m"))
    samples.append(Sample(path=str(tmp_path / "a.bin"), label=0, uid="npz", index=3))
    g = duplicate_groups(samples)
    assert g[0] is not None and g[0] == g[1]
    assert g[2] is None and g[5] is None and g[6] is None and g[7] is None
    assert g[3] is not None and g[3] == g[4] and g[3] != g[0]


def test_copies_across_given_splits_or_labels_are_reported(tmp_path: Path) -> None:
    import shutil

    rng = np.random.default_rng(3)
    root = tmp_path / "ds"
    for split in ("train", "test"):
        for cls in ("A", "B"):
            for i in range(8):
                write_image(root / split / cls / f"{split}{cls}{i}.png", rng, "png")
    shutil.copyfile(root / "train" / "A" / "trainA0.png", root / "test" / "A" / "again.png")
    shutil.copyfile(root / "train" / "A" / "trainA1.png", root / "train" / "B" / "relabel.png")
    with pytest.warns(UserWarning) as record:
        load_dataset(root, progress=False)
    messages = " ".join(str(w.message) for w in record)
    assert "1 group(s) of byte-identical image files sit in more than one" in messages
    assert "1 group(s) of byte-identical image files carry different labels" in messages
    assert "trainA" not in messages and "relabel" not in messages  # counts only, no file names


def test_grouped_split_memo_is_identical_and_skips_the_split(tmp_path: Path, monkeypatch) -> None:
    """Issue 17: a duplicate- or patient-grouped carve (seconds for thousands of groups) is memoised
    under the project's cache folder; the memoised split equals scikit-learn's on the group names."""
    import sklearn.model_selection

    from medtl.data._splits import _carve_grouped, _grouped_fold

    rng = np.random.default_rng(0)
    for trial in range(8):
        n = int(rng.integers(20, 600))
        labels = rng.integers(0, int(rng.integers(2, 5)), n)
        groups = np.array(
            [f"g{x}" for x in rng.integers(0, max(3, n // int(rng.integers(1, 4))), n)]
        )
        pos = np.arange(n) * 3
        keep, carved = _grouped_fold(labels, groups, 0.15, trial, ())  # on the names themselves
        want = (sorted(pos[keep].tolist()), sorted(pos[carved].tolist()))
        assert _carve_grouped(pos, labels, groups, 0.15, trial) == want
        assert _carve_grouped(pos, labels, groups, 0.15, trial, tmp_path) == want

    class Boom:
        def __init__(self, *a, **k):
            raise AssertionError("the split was recomputed although it was memoised")

    monkeypatch.setattr(sklearn.model_selection, "StratifiedGroupKFold", Boom)
    assert _carve_grouped(pos, labels, groups, 0.15, trial, tmp_path) == want
    with pytest.raises(AssertionError, match="memoised"):
        _carve_grouped(pos, labels, groups, 0.15, trial + 1, tmp_path)  # another seed: computed


def test_a_damaged_memo_entry_is_recomputed_with_one_plain_warning(
    tmp_path: Path, capsys, caplog
) -> None:
    """A memoised result whose file is damaged is recomputed (same answer) and reported as one line,
    without joblib's traceback."""
    from medtl._memo import memoized

    def double(x: np.ndarray) -> np.ndarray:
        return x * 2

    f = memoized(double, tmp_path)
    want = f(np.arange(5))
    outputs = list((tmp_path / "results").rglob("output.pkl"))
    assert len(outputs) == 1
    outputs[0].write_bytes(b"garbage")
    with caplog.at_level("WARNING"):
        got = f(np.arange(5))
    np.testing.assert_array_equal(got, want)
    text = capsys.readouterr().err + caplog.text
    assert "Traceback" not in text
    assert "unreadable; recomputed" in caplog.text

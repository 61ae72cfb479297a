"""Issue 25, first half: no identifier in any log or record, one id per file, tamper-evident records.

Every case is generated here, small: a folder dataset of 32-px PNGs under a folder named like a
hospital export (``Export_Smith_John_2023``) with one broken file named like a patient
(``Doe_Jane_MRN12345.png``); the ``tiny_test`` backbone; feature extraction only.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medtl import records, runs
from medtl.cli import main
from medtl.config import config_from_dict
from medtl.errors import RecordTamperedError, RunLockedError
from medtl.evaluation import evaluate
from medtl.experiment import compare
from medtl.strategies import load_model
from medtl.strategies._modelfile import IncompleteModelWarning, ModelFileError

EXPORT = "Export_Smith_John_2023"
PATIENT_FILE = "Doe_Jane_MRN12345.png"
SECRETS = ("Smith", "Doe_Jane", "MRN12345")


def _make_dataset(root: Path, n: int = 12, seed: int = 0) -> Path:
    """Two classes of noisy 32-px PNGs (``lesion`` has a bright square) and one broken file."""
    rng = np.random.default_rng(seed)
    for label in ("normal", "lesion"):
        (root / label).mkdir(parents=True)
        for i in range(n):
            px = rng.normal(90, 20, size=(32, 32))
            if label == "lesion":
                r, c = rng.integers(2, 20, size=2)
                px[r : r + 8, c : c + 8] += 110
            Image.fromarray(np.clip(px, 0, 255).astype(np.uint8)).save(root / label / f"{i}.png")
    (root / "normal" / PATIENT_FILE).write_bytes(b"this is not a PNG at all")
    return root


def _cfg(tmp: Path, out: Path, data: Path, **data_kw) -> dict:
    return {
        "name": "records",
        "data": {"path": str(data), "min_per_class": 2, **data_kw},
        "model": {"backbone": "tiny_test", "image_size": 32},
        "strategies": ["feature_extraction"],
        "train": {"epochs": 1, "batch_size": 8},
        # the default cache folder of a command run in `tmp`: the same salt as `medtl data check`
        "output": {"out": str(out), "cache_dir": str(tmp / ".medtl_cache")},
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("records")
    data = _make_dataset(tmp / EXPORT)
    summary = compare(
        config_from_dict(_cfg(tmp, tmp / "run", data)), progress=False, write_html=False
    )
    return tmp, data, tmp / "run", summary


def _no_secret(text: str, where: str) -> None:
    for s in SECRETS:
        assert s not in text, f"{s!r} leaked into {where}"


def _tree_text(folder: Path) -> str:
    return "\n".join(
        f"{p.relative_to(folder)}\n{p.read_bytes().decode('utf-8', 'replace')}"
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    )


# -- identifiers -----------------------------------------------------------------------------------


def test_logs_at_every_verbosity_name_skipped_files_by_the_one_keyed_id(
    run, tmp_path, monkeypatch, capsys
):
    tmp, data, rd, _ = run
    monkeypatch.chdir(tmp)
    log = tmp_path / "check.log"
    id_map = tmp_path / "ids.csv"
    code = main(
        ["-vv", "--log-file", str(log), "data", "check", str(data), "--id-map", str(id_map)]
    )
    out, err = capsys.readouterr()
    assert code == 1  # one file cannot be used
    _no_secret(out + err, "data check -vv output")
    _no_secret(log.read_text(), "the --log-file")
    (check_uid,) = re.findall(r"^  ([0-9a-f]{16}): ", out, flags=re.M)
    with open(id_map, encoding="utf-8") as fh:
        rows = [r for r in csv.reader(fh) if len(r) == 3 and r[2].endswith(PATIENT_FILE)]
    assert [r[0] for r in rows] == [check_uid]  # the id map names the file by the same id
    assert f"Skipping image {check_uid}" in log.read_text()  # and so does the log

    main(["data", "card", str(data)])
    card = capsys.readouterr().out
    assert f"`{check_uid}`" in card
    _no_secret(card, "the data card")
    with open(rd / runs.SKIPPED_FILE, encoding="utf-8") as fh:  # and the run's skipped.csv
        assert check_uid in {r["id"] for r in csv.DictReader(fh)}

    model = rd / "feature_extraction" / "model"
    plog = tmp_path / "predict.log"
    code = main(
        [
            "-vv",
            "--log-file",
            str(plog),
            "predict",
            str(model),
            str(data),
            "--out",
            str(tmp_path / "p.csv"),
            "--quiet",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0
    _no_secret(out + err + plog.read_text(), "predict -vv output and log")
    assert check_uid in err  # predict on the dataset folder names the file by the same id


def test_compare_with_verbose_logging_names_no_file(tmp_path, monkeypatch, capsys):
    data = _make_dataset(tmp_path / EXPORT, n=8, seed=1)
    monkeypatch.chdir(tmp_path)
    log = tmp_path / "compare.log"
    code = main(
        [
            "-vv",
            "--log-file",
            str(log),
            "compare",
            "--data",
            str(data),
            "--out",
            "r",
            "--backbone",
            "tiny_test",
            "--image-size",
            "32",
            "--epochs",
            "1",
            "--strategies",
            "feature_extraction",
            "--quiet",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err[-2000:]
    _no_secret(out + err + log.read_text(), "compare -vv output and log")
    _no_secret(_tree_text(tmp_path / "r"), "the run folder")


def test_unlabelled_files_with_equal_names_in_two_folders_get_two_ids(tmp_path):
    from medtl.data import default_salt, file_uid, unlabelled_files

    salt = default_salt(tmp_path / "cache")
    for site in ("a", "b"):
        (tmp_path / site).mkdir()
        (tmp_path / site / "x.png").write_bytes(b"png?")
    samples, _ = unlabelled_files([tmp_path / "a" / "x.png", tmp_path / "b" / "x.png"], salt=salt)
    assert len({s.uid for s in samples}) == 2
    # a folder given: ids relative to it, as a dataset's files are relative to its root
    (folder,) = unlabelled_files(tmp_path / "a", salt=salt)[0]
    assert folder.uid == file_uid(tmp_path / "a" / "x.png", tmp_path / "a", salt)


def test_run_records_keep_no_data_path_and_resume_takes_it_from_the_command_line(
    run, tmp_path, monkeypatch, capsys
):
    tmp, data, rd, summary = run
    _no_secret(_tree_text(rd), "the run folder")
    cfg_text = (rd / runs.CONFIG_FILE).read_text()
    assert records.NOT_RECORDED in cfg_text and summary["dataset"]["fingerprint"] in cfg_text
    assert summary["dataset"]["label"] == "dataset-" + summary["dataset"]["fingerprint"][3:9]

    copy = tmp_path / "r"
    shutil.copytree(rd, copy)
    monkeypatch.chdir(tmp)
    code = main(["compare", "--out", str(copy), "--resume", "--quiet"])
    err = capsys.readouterr().err
    assert code == 3 and "--data PATH" in err and "Traceback" not in err
    code = main(["compare", "--out", str(copy), "--resume", "--data", str(data), "--quiet"])
    assert code == 0, capsys.readouterr().err[-2000:]
    assert records.NOT_RECORDED in (copy / runs.CONFIG_FILE).read_text()  # still not recorded
    other = _make_dataset(tmp_path / "other", n=12, seed=5)
    other_png = other / "lesion" / "0.png"
    other_png.write_bytes(other_png.read_bytes() + b"\0")  # one file's size differs
    code = main(["compare", "--out", str(copy), "--resume", "--data", str(other), "--quiet"])
    err = capsys.readouterr().err
    assert code == 3 and "dataset differs" in err


def test_evaluate_names_datasets_by_label_never_by_path(run, tmp_path, monkeypatch, capsys):
    tmp, data, rd, _ = run
    monkeypatch.chdir(tmp)
    out_dir = tmp_path / "ev"
    code = main(["evaluate", str(rd), "--data", str(data), "--out", str(out_dir), "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0
    _no_secret(printed, "evaluate's printed table")
    _no_secret(_tree_text(out_dir), "evaluation.csv / evaluation.md / rows/*.json")
    assert re.search(r"\| dataset-[0-9a-f]{6} \|", printed)
    res = evaluate(
        [str(rd)],
        [{"path": str(data), "name": "site_a"}],
        out=str(tmp_path / "ev2"),
        progress=False,
    )
    assert [r["dataset"] for r in res["rows"]] == ["site_a"]
    code = main(
        [
            "evaluate",
            str(rd),
            "--data",
            str(data),
            "--data-name",
            "site_b",
            "--out",
            str(tmp_path / "ev3"),
            "--quiet",
        ]
    )
    assert code == 0 and "| site_b |" in capsys.readouterr().out


# -- records that can be edited into lies ----------------------------------------------------------


def _model_copy(rd: Path, dest: Path) -> Path:
    shutil.copytree(rd / "feature_extraction" / "model", dest)
    return dest


def _edit_json(path: Path, fn) -> None:
    obj = json.loads(path.read_text())
    fn(obj)
    path.write_text(json.dumps(obj))


def test_an_edited_model_json_is_refused_naming_the_field(run, tmp_path, monkeypatch, capsys):
    tmp, data, rd, _ = run
    d = _model_copy(rd, tmp_path / "m")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a sealed folder loads without a word
        load_model(d)
    _edit_json(d / "model.json", lambda m: m["preprocessing"].update(image_size=16))
    with pytest.raises(ModelFileError, match=r"'preprocessing\.image_size'"):
        load_model(d)
    monkeypatch.chdir(tmp)
    image = next((data / "lesion").glob("*.png"))
    code = main(["predict", str(d), str(image), "--out", str(tmp_path / "p.csv"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 3 and "preprocessing.image_size" in err and "Traceback" not in err
    assert not (tmp_path / "p.csv").exists()
    d2 = _model_copy(rd, tmp_path / "m2")
    _edit_json(d2 / "model.json", lambda m: m["operating_point"].update(threshold=0.01))
    with pytest.raises(ModelFileError, match=r"'operating_point\.threshold'"):
        load_model(d2)


def test_a_model_folder_from_before_the_seal_loads_with_a_warning(run, tmp_path):
    from safetensors.torch import load_file, save_file

    from medtl.strategies._modelfile import sha256_file

    _, _, rd, _ = run
    d = _model_copy(rd, tmp_path / "old")
    save_file(load_file(d / "model.safetensors"), d / "model.safetensors")  # no seal, as before
    _edit_json(
        d / "model.json", lambda m: m["weights"].update(sha256=sha256_file(d / "model.safetensors"))
    )
    with pytest.warns(IncompleteModelWarning, match="cannot be detected"):
        est = load_model(d)
    assert est.preprocessing_["image_size"] == 32
    est.save(tmp_path / "resaved")  # saving again seals it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_model(tmp_path / "resaved")


def test_evaluate_split_refuses_an_edited_splits_json(run, tmp_path, monkeypatch, capsys):
    tmp, data, rd, summary = run
    copy = tmp_path / "r"
    shutil.copytree(rd, copy)
    assert summary[records.SPLITS_DIGEST_KEY] == records.file_digest(rd / runs.SPLITS_FILE)
    ok = evaluate([str(copy)], [str(data)], split="test", out=str(tmp_path / "e0"), progress=False)
    assert ok["rows"][0]["n"] == summary["dataset"]["n_test"]
    _edit_json(copy / runs.SPLITS_FILE, lambda s: [r.update(split="test") for r in s["samples"]])
    with pytest.raises(RecordTamperedError, match="edited or replaced"):
        evaluate([str(copy)], [str(data)], split="test", out=str(tmp_path / "e1"), progress=False)
    monkeypatch.chdir(tmp)
    code = main(
        [
            "evaluate",
            str(copy),
            "--data",
            str(data),
            "--split",
            "test",
            "--out",
            str(tmp_path / "e2"),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert code == 3 and "splits.json" in err and "Traceback" not in err
    # a run made before the digest was recorded: used, with a warning that it cannot be checked
    _edit_json(copy / runs.SUMMARY_FILE, lambda s: s.pop(records.SPLITS_DIGEST_KEY))
    with pytest.warns(UserWarning, match="cannot be detected"):
        evaluate([str(copy)], [str(data)], split="test", out=str(tmp_path / "e3"), progress=False)


def test_a_locked_run_folder_refuses_a_second_process_until_the_first_ends(
    run, tmp_path, monkeypatch, capsys
):
    tmp, data, rd, _ = run
    copy = tmp_path / "r"
    shutil.copytree(rd, copy)
    holder = subprocess.Popen(  # another process working in the run folder
        [
            sys.executable,
            "-c",
            "import sys; from medtl.records import acquire_run_lock; "
            "acquire_run_lock(sys.argv[1]); print('locked', flush=True); sys.stdin.read()",
            str(copy),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.getcwd(),
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        monkeypatch.chdir(tmp)
        code = main(["compare", "--out", str(copy), "--resume", "--data", str(data), "--quiet"])
        err = capsys.readouterr().err
        assert code == 3 and "in use by another medtl process" in err
        with pytest.raises(RunLockedError):
            records.acquire_run_lock(copy)
    finally:
        holder.send_signal(signal.SIGKILL)  # killed: the OS drops its lock
        holder.wait()
    code = main(["compare", "--out", str(copy), "--resume", "--data", str(data), "--quiet"])
    assert code == 0, capsys.readouterr().err[-2000:]
    lock = records.acquire_run_lock(copy)  # released when the run ended
    lock.release()


def test_a_refused_start_leaves_no_empty_run_folder(tmp_path):
    from medtl.errors import ConfigError

    out = tmp_path / "new"
    cfg = _cfg(tmp_path, out, tmp_path)
    with pytest.raises(ConfigError):
        compare(config_from_dict(cfg), progress=False, resume=True, write_html=False)
    assert not out.exists()


def test_summary_records_how_the_run_was_executed(run):
    _, _, rd, summary = run
    ex = json.loads((rd / runs.SUMMARY_FILE).read_text())["execution"]
    assert ex["device"] == "cpu" and ex["processes"] == 1
    assert ex["launcher"] == "single process" and ex["backend"] is None
    assert ex["precision"] == summary["precision"] and ex["threads_per_process"] >= 1

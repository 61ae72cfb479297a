"""The same config gives the same numbers, whatever the caches hold (issue 28).

A run on empty caches is repeated on a fresh copy of the data (another path, another project salt,
the manifest's rows in another order) after runs with other settings (another precision, another
image size, other read options) have filled that project's caches: the split is the same, feature
extraction's probabilities are bit-identical and fine-tuning's agree within the training tests'
tolerance. With a cache key that forgot the precision (the bug the issue reports), the second run
would be served the fp32 embeddings and differ.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np

from medtl.config import config_from_dict
from medtl.experiment import compare, load_data

STRATEGIES = ["feature_extraction", "fine_tuning"]


def _cfg(data_path: Path, work: Path, **changes: dict) -> object:
    d = {
        "name": "repro",
        "data": {"path": str(data_path), "min_per_class": 2, "window": "header"},
        "model": {"backbone": "tiny_test", "image_size": 32},
        "strategies": STRATEGIES,
        "params": {"feature_extraction": {"Cs": [0.1, 1.0]}},
        "train": {"epochs": 2, "batch_size": 8, "precision": "bf16", "seed": 3},
        "output": {"out": str(work / "run"), "cache_dir": str(work / "cache")},
    }
    for section, values in changes.items():
        d[section] = {**d[section], **values}
    return config_from_dict(d)


def _copy_reordered(src: Path, dst: Path) -> None:
    """The same files elsewhere, written in reverse order, with the manifest's rows reversed."""
    files = sorted(p for p in src.rglob("*") if p.is_file() and p.name != "manifest.csv")
    for f in reversed(files):
        out = dst / f.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, out)
    lines = (src / "manifest.csv").read_text().splitlines()
    (dst / "manifest.csv").write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n")


def _by_file(cfg: object, run: Path, name: str) -> dict[str, tuple[str, tuple[float, ...]]]:
    """Relative file path -> (split, probabilities) of one strategy's predictions.csv."""
    data = load_data(cfg, progress=False)
    root = Path(data.dataset.root)
    rel = {s.uid: Path(s.path).resolve().relative_to(root.resolve()).as_posix()
           for s in data.dataset.samples}  # fmt: skip
    with open(run / name / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    probs = [k for k in rows[0] if k.startswith("p_")]
    return {rel[r["uid"]]: (r["split"], tuple(float(r[k]) for k in probs)) for r in rows}


def test_same_config_same_numbers_whatever_the_caches_hold(tmp_path: Path) -> None:
    from medtl.data.synth import make_phantom

    first_data = make_phantom(tmp_path / "a" / "data", n_per_class=12, size=48, seed=5)
    cold = _cfg(first_data, tmp_path / "a")
    compare(cold, progress=False, write_html=False)

    second_data = tmp_path / "elsewhere" / "copy"
    _copy_reordered(first_data, second_data)
    work = tmp_path / "b"
    for other in (
        {"train": {"precision": "fp32"}},
        {"model": {"image_size": 40}},
        {"data": {"window": "full"}},
    ):
        compare(_cfg(second_data, work, **other, output={"out": str(work / "filler")}),
                progress=False, write_html=False)  # fmt: skip
    warm = _cfg(second_data, work)
    summary = compare(warm, progress=False, write_html=False)

    a_salt = (tmp_path / "a" / "cache" / "salt").read_bytes()
    assert a_salt != (work / "cache" / "salt").read_bytes()  # another project salt
    fe_cache = summary["strategies"]["feature_extraction"]["cache"]
    assert fe_cache["versions"]["embeddings"]
    # the fp32 filler decoded the images with the same size and read options (a legitimate hit);
    # no filler computed an embedding with this run's key, so none was served
    assert fe_cache["images"] == {"from_cache": 24, "computed": 0}
    assert fe_cache["embeddings"]["from_cache"] == 0
    assert fe_cache["embedding_keys"][0]["precision"] == "bf16"

    for name in STRATEGIES:
        a = _by_file(cold, tmp_path / "a" / "run", name)
        b = _by_file(warm, work / "run", name)
        assert a.keys() == b.keys()
        assert {f: v[0] for f, v in a.items()} == {f: v[0] for f, v in b.items()}  # same split
        pa = np.array([a[f][1] for f in sorted(a)])
        pb = np.array([b[f][1] for f in sorted(a)])
        if name == "feature_extraction":
            np.testing.assert_array_equal(pa, pb)  # bit-identical
        else:  # the tolerance of tests/test_training.py's fine-tuning comparisons
            np.testing.assert_allclose(pa, pb, rtol=1e-3, atol=1e-4)
    rows = json.loads((work / "run" / "summary.json").read_text())["strategies"]
    assert all("cache" in rows[n] for n in STRATEGIES)


def test_a_warm_rerun_says_what_it_was_served(tmp_path: Path) -> None:
    """The same run twice on one project: the second is served every image and embedding from
    the caches, and its summary row says so, under the current key versions."""
    from medtl.cachekeys import key_versions
    from medtl.data.synth import make_phantom

    data = make_phantom(tmp_path / "data", n_per_class=12, size=48, seed=2)
    cfg = _cfg(data, tmp_path)
    cfg.strategies = ["feature_extraction"]
    first = compare(cfg, progress=False, write_html=False)["strategies"]["feature_extraction"][
        "cache"
    ]
    cfg.output.out = str(tmp_path / "run2")
    second = compare(cfg, progress=False, write_html=False)["strategies"]["feature_extraction"][
        "cache"
    ]
    assert first["versions"] == second["versions"] == key_versions()
    assert first["images"]["computed"] > 0 and first["embeddings"]["computed"] > 0
    assert second["images"] == {"from_cache": first["images"]["computed"], "computed": 0}
    assert second["embeddings"]["computed"] == 0 and second["embeddings"]["from_cache"] > 0
    assert second["results"]["computed"] == 0 and second["results"]["from_cache"] == 2

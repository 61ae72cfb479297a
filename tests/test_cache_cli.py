"""``medtl cache info | verify | clear`` on a small project cache (issue 28)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medtl.cli import main


def _dataset(root: Path, n: int = 6) -> Path:
    for i in range(n):
        cls = ("a", "b")[i % 2]
        (root / cls).mkdir(parents=True, exist_ok=True)
        arr = ((np.arange(24 * 24).reshape(24, 24) * (i + 3)) % 251).astype(np.uint8)
        Image.fromarray(arr).save(root / cls / f"img{i}.png")
    return root


@pytest.fixture()
def project(tmp_path: Path) -> tuple[Path, Path]:
    """A cache filled by a real feature extraction: images at 16 px, tiny_test embeddings."""
    from medtl.data import image_cache_dir, load_dataset, prepare_images
    from medtl.strategies import FeatureExtraction

    data = _dataset(tmp_path / "data")
    cache = tmp_path / "cache"
    ds = load_dataset(str(data), val_fraction=0.0, test_fraction=0.34, min_per_class=1,
                      progress=False)  # fmt: skip
    tr, va = (prepare_images(ds.split(s), ds.classes, size=16, channels=1,
                             cache_dir=image_cache_dir(cache), progress=False,
                             read_options={"window": "header"})  # as `medtl compare` reads
              for s in ("train", "test"))  # fmt: skip
    FeatureExtraction(backbone="tiny_test", cache_dir=str(cache), progress=False, Cs=[1.0]).fit(
        tr, va
    )
    # what an older medtl left: a v1 image entry and an embedding folder without key.json
    old = cache / "images" / "ab"
    old.mkdir(parents=True)
    np.save(old / ("ab" + "0" * 62 + ".npy"), np.zeros((16, 16), np.uint8))
    (cache / "embeddings" / ("f" * 32)).mkdir(parents=True)
    (cache / "salt").write_bytes(b"s" * 32)
    return data, cache


def _json(capsys, argv: list[str]) -> tuple[int, dict]:
    code = main([*argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_info_shows_entries_sizes_and_stale_ones(project, capsys) -> None:
    _, cache = project
    code, inv = _json(capsys, ["cache", "info", "--cache-dir", str(cache)])
    assert code == 0
    assert inv["images"]["current"]["entries"] == 6 and inv["images"]["stale"]["entries"] == 1
    current = [f for f in inv["embeddings"] if f["current"]]
    assert len(current) == 1 and current[0]["backbone_name"] == "tiny_test"
    assert current[0]["rows"] == 6 and current[0]["image_size"] == 16
    assert [f["current"] for f in inv["embeddings"]].count(False) == 1
    main(["cache", "info", "--cache-dir", str(cache)])
    text = capsys.readouterr().out
    assert "tiny_test" in text and "stale" in text and "img" not in text  # no file names


def test_verify_finds_a_stale_image_entry_and_fix_removes_it(project, capsys) -> None:
    data, cache = project
    code, out = _json(capsys, ["cache", "verify", "--cache-dir", str(cache)])
    assert code == 0 and out["problems"] == [] and out["checked"]["images"] == 6
    entry = next((cache / "images" / "medtl-prep-v2").rglob("*.npy"))
    np.save(entry, np.load(entry) ^ 1)  # readable, right shape, wrong pixels: what a stale one is
    code, out = _json(capsys, ["cache", "verify", "--cache-dir", str(cache)])
    assert out["problems"] == []  # readability alone cannot tell
    argv = ["cache", "verify", "--cache-dir", str(cache), "--data", str(data), "--image-size", "16"]
    code, out = _json(capsys, argv)
    assert code == 1 and out["checked"]["recomputed"] == 6
    assert [p["entry"] for p in out["problems"]] == [entry.name]
    assert "stale" in out["problems"][0]["reason"]
    code, out = _json(capsys, [*argv, "--fix"])
    assert code == 0 and not entry.exists()


def test_verify_reports_a_damaged_embedding_chunk(project, capsys) -> None:
    _, cache = project
    chunk = next((cache / "embeddings").rglob("chunk-*.safetensors"))
    chunk.write_bytes(b"not a safetensors file")
    code, out = _json(capsys, ["cache", "verify", "--cache-dir", str(cache)])
    assert code == 1 and out["problems"][0]["cache"] == "embeddings"


def test_clear_dataset_backbone_stale_and_all(project, capsys, tmp_path) -> None:
    _, cache = project
    other = _dataset(tmp_path / "other", n=2)  # two files equal to data's img0, img1
    code, out = _json(
        capsys, ["cache", "clear", "--cache-dir", str(cache), "--dataset", str(other)]
    )
    assert code == 0 and out["removed"]["images"]["files"] == 2
    assert out["removed"]["embeddings"]["files"] == 2  # their rows, rewritten out of the chunk
    _, inv = _json(capsys, ["cache", "info", "--cache-dir", str(cache)])
    assert inv["images"]["current"]["entries"] == 4
    assert [f["rows"] for f in inv["embeddings"] if f["current"]] == [4]
    _, out = _json(capsys, ["cache", "clear", "--cache-dir", str(cache), "--stale"])
    assert out["removed"]["images"]["files"] == 1
    _, inv = _json(capsys, ["cache", "info", "--cache-dir", str(cache)])
    assert len(inv["embeddings"]) == 1 and inv["images"]["stale"]["entries"] == 0
    _, out = _json(capsys, ["cache", "clear", "--cache-dir", str(cache), "--backbone", "tiny_test"])
    assert out["removed"]["embeddings"]["files"] >= 2  # key.json and the chunk
    _, out = _json(capsys, ["cache", "clear", "--cache-dir", str(cache), "--all"])
    assert not (cache / "images").exists() and (cache / "salt").exists()  # the salt is kept


def test_clear_without_a_target_is_a_message(tmp_path, capsys) -> None:
    code = main(["cache", "clear", "--cache-dir", str(tmp_path)])
    assert code == 3 and "--all, --stale" in capsys.readouterr().err

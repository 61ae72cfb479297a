"""prepare_images: shapes, dtype, label alignment, channel handling and the decoded-image cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import medtl.data._prepare as prep_mod
from medtl.data import Sample, prepare_images
from medtl.data._sources import make_uid
from medtl.errors import ConfigError


def _samples(tmp_path: Path) -> list[Sample]:
    """4 readable images of different sizes/formats plus one broken file in the middle."""
    rng = np.random.default_rng(0)
    out = []
    files = []
    a = tmp_path / "grey16.png"
    Image.fromarray(rng.integers(0, 65535, (40, 30), dtype=np.uint16)).save(a)
    files.append((a, 0))
    b = tmp_path / "greyrgb.jpg"  # grey content saved as RGB JPEG
    Image.fromarray(rng.integers(0, 255, (50, 50), dtype=np.uint8)).convert("RGB").save(
        b, quality=95
    )
    files.append((b, 1))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    files.append((bad, 0))
    c = tmp_path / "grad.png"
    Image.fromarray(np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))).save(c)
    files.append((c, 1))
    for f, label in files:
        out.append(Sample(path=str(f), label=label, uid=make_uid(f.name)))
    return out


def test_shapes_dtype_alignment_and_skips(tmp_path: Path) -> None:
    samples = _samples(tmp_path)
    prep = prepare_images(samples, ["x", "y"], size=32, progress=False)
    assert prep.pixels.shape == (3, 1, 32, 32)  # grey RGB JPEG counts as grey
    assert prep.pixels.dtype == np.uint8
    assert prep.labels.dtype == np.int64
    assert prep.labels.tolist() == [0, 1, 1]
    assert prep.uids == [samples[i].uid for i in (0, 1, 3)]
    assert [Path(k.path).name for k in prep.skipped] == ["bad.png"]
    assert len(prep.keys) == 3 and len(set(prep.keys)) == 3
    # intensities survive resizing: the gradient image stays a left-to-right ramp
    ramp = prep.pixels[2, 0].astype(int)
    assert ramp[:, 0].mean() < 20 and ramp[:, -1].mean() > 230
    assert np.all(np.diff(ramp.mean(axis=0)) >= 0)


def test_channels_explicit_and_colour(tmp_path: Path) -> None:
    samples = _samples(tmp_path)
    col = tmp_path / "colour.png"
    img = np.zeros((20, 20, 3), np.uint8)
    img[..., 0] = 255  # pure red: genuinely colour
    Image.fromarray(img).save(col)
    samples.append(Sample(path=str(col), label=0, uid="c"))
    auto = prepare_images(samples, ["x", "y"], size=16, progress=False)
    assert auto.pixels.shape == (4, 3, 16, 16)
    red = auto.pixels[3]
    assert red[0].min() == 255 and red[1].max() == 0
    grey_rows = auto.pixels[0]
    assert np.array_equal(grey_rows[0], grey_rows[1]) and np.array_equal(grey_rows[1], grey_rows[2])
    one = prepare_images(samples, ["x", "y"], size=16, channels=1, progress=False)
    assert one.pixels.shape == (4, 1, 16, 16)
    assert 40 < int(one.pixels[3].mean()) < 120  # red -> luminance, neither black nor white
    three = prepare_images(samples[:1], ["x", "y"], size=16, channels=3, progress=False)
    assert three.pixels.shape == (1, 3, 16, 16)
    assert one.keys[0] != three.keys[0]  # key includes the channel count


def test_second_call_is_served_from_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    samples = [s for s in _samples(tmp_path) if not s.path.endswith("bad.png")]
    cache = tmp_path / "cache"
    first = prepare_images(samples, ["x", "y"], size=24, cache_dir=cache, progress=False)
    assert len(list(cache.rglob("*.npy"))) == 3

    calls: list[str] = []
    real = prep_mod.read_with_options

    def counting(path, read_options):
        calls.append(path)
        return real(path, read_options)

    monkeypatch.setattr(prep_mod, "read_with_options", counting)
    second = prepare_images(
        samples, ["x", "y"], size=24, cache_dir=cache, progress=False, num_workers=2
    )
    assert calls == []  # nothing decoded
    assert second.skipped == []
    assert np.array_equal(first.pixels, second.pixels)
    assert first.keys == second.keys
    # another size is another cache entry (and needs decoding)
    prepare_images(samples, ["x", "y"], size=20, cache_dir=cache, progress=False)
    assert len(calls) == 3


def test_cache_entries_are_plain_files_and_an_unwritable_cache_loses_no_image(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The fast cache writer leaves complete files with a plain write's mode and no temporaries; a
    cache folder that cannot be created costs the cache, never an image (no file is skipped)."""
    import os
    import stat

    samples = [s for s in _samples(tmp_path) if not s.path.endswith("bad.png")]
    cache = tmp_path / "cache"
    first = prepare_images(samples, ["x", "y"], size=24, cache_dir=cache, progress=False)
    entries = sorted(cache.rglob("*"))
    assert not [p for p in entries if p.name.endswith(".tmp")]
    umask = os.umask(0)
    os.umask(umask)
    for p in (p for p in entries if p.is_file()):
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask
        assert np.load(p).dtype == np.uint8
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the cache folder should go")
    with caplog.at_level("WARNING"):
        out = prepare_images(samples, ["x", "y"], size=24, cache_dir=blocker / "c", progress=False)
    assert out.skipped == [] and np.array_equal(out.pixels, first.pixels)
    assert sum("Cannot write the image cache" in r.getMessage() for r in caplog.records) == 1


def test_cache_key_follows_file_content(tmp_path: Path) -> None:
    f = tmp_path / "a.png"
    ramp = np.tile(np.arange(10, dtype=np.uint8), (10, 1))  # not constant: blank images are skipped
    Image.fromarray(ramp).save(f)
    s = [Sample(path=str(f), label=0, uid="a")]
    k1 = prepare_images(s, ["x"], size=8, cache_dir=tmp_path / "c", progress=False)
    Image.fromarray(ramp + 200).save(f)
    k2 = prepare_images(s, ["x"], size=8, cache_dir=tmp_path / "c", progress=False)
    assert k1.keys != k2.keys
    assert k2.pixels.mean() > 150  # not the stale cached image


def test_npz_samples(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    imgs = {
        sp: rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        for sp, n in (("train", 5), ("test", 3))
    }
    np.savez(
        tmp_path / "m.npz",
        train_images=imgs["train"],
        train_labels=np.zeros((5, 1)),
        test_images=imgs["test"],
        test_labels=np.ones((3, 1)),
    )
    from medtl.data import load_dataset

    ds = load_dataset(tmp_path / "m.npz", min_per_class=1, val_fraction=0.0, progress=False)
    test = ds.split("test")
    prep = prepare_images(test, ds.classes, size=28, progress=False)
    assert prep.pixels.shape == (3, 1, 28, 28)
    assert np.array_equal(prep.pixels[:, 0], imgs["test"])  # same size: exact round trip


def test_bad_options(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="channels"):
        prepare_images([], [], size=32, channels=2, progress=False)
    with pytest.raises(ConfigError, match="size"):
        prepare_images([], [], size=2, progress=False)
    empty = prepare_images([], ["a"], size=32, progress=False)
    assert empty.pixels.shape == (0, 1, 32, 32)

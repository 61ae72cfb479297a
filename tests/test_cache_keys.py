"""Forgetting a cache key version bump is caught, and every key covers what changes its value.

The reference digests in ``tests/cache_reference.json`` are tied to the key versions in
``medtl/_cachekeys.py`` (see ``tests/_cache_reference.py``): a reader or extraction change that changes
a cached value without a version bump fails here. After a deliberate bump:
``python -m tests.make_cache_reference``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medtl import cachekeys as ck
from tests._cache_reference import (
    EMBEDDING_CASES,
    EMBEDDING_LIBRARIES,
    IMAGE_LIBRARIES,
    REFERENCE_FILE,
    embedding_summary,
    image_cases,
    library_snapshot,
    pixel_digest,
)

pytest.importorskip("pydicom")
REGENERATE = "python -m tests.make_cache_reference"


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads(REFERENCE_FILE.read_text())


def _libraries_differ(stored: dict[str, str], names: tuple[str, ...]) -> str:
    now = library_snapshot(names)
    return ", ".join(f"{n} {stored.get(n)} -> {now[n]}" for n in names if stored.get(n) != now[n])


def test_reference_is_for_the_current_key_versions(reference: dict) -> None:
    """A bumped version needs a regenerated reference (and a regenerated reference, a bump)."""
    assert reference["image_key_version"] == ck.IMAGE_KEY_VERSION, (
        f"IMAGE_KEY_VERSION is {ck.IMAGE_KEY_VERSION!r} but {REFERENCE_FILE.name} was made for "
        f"{reference['image_key_version']!r}: run `{REGENERATE}`."
    )
    assert reference["embedding_key_version"] == ck.EMBEDDING_KEY_VERSION, (
        f"EMBEDDING_KEY_VERSION is {ck.EMBEDDING_KEY_VERSION!r} but {REFERENCE_FILE.name} was made "
        f"for {reference['embedding_key_version']!r}: run `{REGENERATE}`."
    )


def test_decoded_pixels_match_the_reader_version(reference: dict, tmp_path: Path) -> None:
    """The pixels the decoded-image cache would hold for each reference file are those recorded
    for IMAGE_KEY_VERSION; otherwise the reader changed and the version was not bumped."""
    cases = image_cases(tmp_path, reference["jpeg_bytes"])
    missing = sorted(set(reference["images"]) - set(cases))
    if len(missing) == len(reference["images"]):
        pytest.skip("no reference file available (pip install pydicom-data)")
    changed = [k for k, v in cases.items() if k in reference["images"]
               and pixel_digest(*v) != reference["images"][k]]  # fmt: skip
    if changed and (differ := _libraries_differ(reference["image_libraries"], IMAGE_LIBRARIES)):
        pytest.skip(
            f"{len(changed)} decoding(s) differ, but the decoders differ from the reference's "
            f"({differ}); their versions are in the image key, so no stale entry is served. "
            f"Check the change and run `{REGENERATE}`."
        )
    assert not changed, (
        f"Decoded pixels changed for {changed} but IMAGE_KEY_VERSION is still "
        f"{ck.IMAGE_KEY_VERSION!r}: caches would serve the old pixels. Bump it in "
        f"medtl/_cachekeys.py and run `{REGENERATE}`."
    )
    assert not missing or all(k.split("|")[0].endswith(".dcm") for k in missing)


@pytest.mark.parametrize("backbone,size,channels", EMBEDDING_CASES)
def test_embeddings_match_the_extraction_version(
    reference: dict, backbone: str, size: int, channels: int
) -> None:
    ref = np.array(reference["embeddings"][f"{backbone}|{size}|c{channels}"])
    try:
        now = np.array(embedding_summary(backbone, size, channels))
    except Exception as exc:  # e.g. the offline weights package is not installed
        pytest.skip(f"{backbone} unavailable: {exc}")
    tol = reference["embedding_rtol"] * float(np.abs(ref).max())
    if not np.allclose(now, ref, rtol=0, atol=tol):
        differ = _libraries_differ(reference["embedding_libraries"], EMBEDDING_LIBRARIES)
        if differ:
            pytest.skip(f"embeddings differ with other libraries ({differ}); run `{REGENERATE}`")
        raise AssertionError(
            f"{backbone} embeddings changed by up to {np.abs(now - ref).max():.3g} (tolerance "
            f"{tol:.3g}) but EMBEDDING_KEY_VERSION is still {ck.EMBEDDING_KEY_VERSION!r}: caches "
            f"would serve the old embeddings. Bump it in medtl/_cachekeys.py and run `{REGENERATE}`."
        )


def test_a_changed_reader_without_a_bump_is_caught(reference: dict, tmp_path: Path, monkeypatch):
    """The mechanism the reference guards: a reader change (here grey-as-RGB detection turned off,
    the kind of change that moves brain-MRI-like RGB JPEGs) changes the digest of a reference."""
    import medtl.data._prepare as prep

    key = "grey_as_rgb.jpg|{}|32"
    path, opts, size = image_cases(tmp_path, reference["jpeg_bytes"])[key]
    assert pixel_digest(path, opts, size) == reference["images"][key]
    monkeypatch.setattr(prep, "is_near_grey", lambda image: False)
    assert pixel_digest(path, opts, size) != reference["images"][key]


# -- what the keys cover ---------------------------------------------------------------------------


def test_image_key_covers_reader_and_decoder_versions(monkeypatch) -> None:
    from medtl.data._prepare import image_cache_key

    digest = b"\0" * 32
    base = image_cache_key(digest, b"{}", 64)
    assert base != image_cache_key(digest, b'{"window": "full"}', 64)
    assert base != image_cache_key(digest, b"{}", 65)
    ck.image_key_prefix.cache_clear()
    monkeypatch.setattr(ck, "IMAGE_KEY_VERSION", "medtl-prep-test")
    try:
        assert image_cache_key(digest, b"{}", 64) != base
    finally:
        ck.image_key_prefix.cache_clear()
    for lib in ("pydicom", "pillow", "pylibjpeg-openjpeg", "pylibjpeg-libjpeg", "pylibjpeg-rle"):
        assert f"{lib}==".encode() in ck.image_key_prefix()


def test_embedding_key_covers_precision_device_and_code(tmp_path: Path) -> None:
    """The issue's case: an fp32 run after a bf16 one computes its own embeddings."""
    from medtl.strategies import FeatureExtraction
    from tests._helpers import blob_images

    train, val = blob_images(20, seed=1), blob_images(10, seed=2, offset=50)
    kw = {"backbone": "tiny_test", "cache_dir": str(tmp_path), "progress": False, "Cs": [1.0]}
    a = FeatureExtraction(precision="bf16", **kw).fit(train, val)
    b = FeatureExtraction(precision="fp32", **kw).fit(train, val)
    assert a.cache_hits_ == 0 and b.cache_hits_ == 0
    c = FeatureExtraction(precision="fp32", **kw).fit(train, val)
    assert c.cache_hits_ == len(train) + len(val)
    keys = [json.loads(p.read_text()) for p in (tmp_path / "embeddings").glob("*/key.json")]
    assert sorted(k["precision"] for k in keys) == ["bf16", "fp32"]
    assert all(k["version"] == ck.EMBEDDING_KEY_VERSION and k["device"].startswith("cpu")
               for k in keys)  # fmt: skip
    parts = keys[0]
    assert ck.key_digest(parts) != ck.key_digest({**parts, "version": "medtl-embed-test"})
    assert ck.key_digest(parts) != ck.key_digest({**parts, "pass_size": parts["pass_size"] + 1})


def test_memo_key_covers_the_helpers_it_calls() -> None:
    """joblib hashes only the memoised function's own source: the helpers' digest is in the key."""

    def helper_a() -> int:
        return 1

    def helper_b() -> int:
        return 2

    assert ck.memo_versions(["numpy"], [helper_a]) != ck.memo_versions(["numpy"], [helper_b])
    assert ck.memo_versions(["numpy"], [helper_a])[0] == ck.RESULTS_KEY_VERSION


def _old_advisor_embeddings(cache: Path, images, seed: int) -> None:
    """What medtl's advisor cached before 2026-12-02 14:45 (commit 9933e42): embeddings from the
    network with hooks on its BatchNorm layers, hence unfolded, under feature extraction's key."""
    import torch

    from medtl.strategies import FeatureExtraction
    from medtl.strategies._base import _build_network

    torch.manual_seed(seed)
    model, cfg = _build_network("tiny_test", 2, pretrained=True)
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.register_forward_hook(lambda *a: None)  # the advisor's BN statistics recorder
    fe = FeatureExtraction(backbone="tiny_test", precision="bf16", cache_dir=str(cache), seed=seed)
    fe.embed(images, model.eval(), cfg, "old advisor", progress=False)


def test_stale_embeddings_change_results_unless_the_key_version_moves(tmp_path, monkeypatch):
    """The brain MRI grid's non-reproduction in miniature: embeddings cached by older extraction
    code under the same key are served to a later fit, whose results then depend on what ran
    before (here by ~2e-6 in probability with tiny_test; on the brain grid the stale rows could move
    the chosen C and with it the LP-FT start). A bumped EMBEDDING_KEY_VERSION leaves them unread."""
    from medtl.strategies import FeatureExtraction
    from tests._helpers import blob_images

    train, val = blob_images(24, seed=7), blob_images(12, seed=8, offset=100)
    test = blob_images(16, seed=9, offset=200).pixels
    kw = {"backbone": "tiny_test", "precision": "bf16", "progress": False, "seed": 0}
    fresh = FeatureExtraction(cache_dir=str(tmp_path / "fresh"), **kw).fit(train, val)

    stale = tmp_path / "stale"
    _old_advisor_embeddings(stale, train, seed=0)
    served = FeatureExtraction(cache_dir=str(stale), **kw).fit(train, val)
    assert served.cache_hits_ == len(train)
    assert not np.array_equal(served.predict_proba(test), fresh.predict_proba(test))

    bumped = tmp_path / "bumped"
    with monkeypatch.context() as m:  # the old code wrote under the old version
        m.setattr(ck, "EMBEDDING_KEY_VERSION", "medtl-embed-v1")
        _old_advisor_embeddings(bumped, train, seed=0)
    again = FeatureExtraction(cache_dir=str(bumped), **kw).fit(train, val)
    assert again.cache_hits_ == 0
    np.testing.assert_array_equal(again.predict_proba(test), fresh.predict_proba(test))

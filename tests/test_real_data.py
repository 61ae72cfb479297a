"""Quick sanity on the real Kermany chest X-rays (skips when ../shared/data is absent).

Run with ``python -m pytest -m real_data``. 300 training images at 128 px: both transfer strategies must
reach a sane test AUROC on the official (shifted) test split. This is a floor, not the quality claim;
the full measurements are in benchmarks/.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

KERMANY = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "chest_xray_pneumonia_224"
)

pytestmark = [
    pytest.mark.real_data,
    pytest.mark.skipif(not KERMANY.exists(), reason=f"{KERMANY} is absent"),
]


def _pick(samples, n, seed):
    from sklearn.model_selection import train_test_split

    idx, _ = train_test_split(
        np.arange(len(samples)),
        train_size=n,
        stratify=[s.label for s in samples],
        random_state=seed,
    )
    return [samples[i] for i in sorted(idx)]


@pytest.fixture(scope="module")
def kermany(tmp_path_factory):
    from medtl.data import load_dataset, prepare_images

    ds = load_dataset(KERMANY, verify=False, progress=False)
    assert ds.classes == ["NORMAL", "PNEUMONIA"]
    cache = tmp_path_factory.mktemp("cache")
    parts = {
        "train": _pick(ds.split("train"), 300, 0),
        "val": _pick(ds.split("val"), 150, 0),
        "test": _pick(ds.split("test"), 300, 0),
    }
    return {
        k: prepare_images(v, ds.classes, size=128, channels=1, cache_dir=cache, progress=False)
        for k, v in parts.items()
    }, cache


@pytest.mark.parametrize(
    "name, params",
    [
        ("feature_extraction", {}),
        ("fine_tuning", {"epochs": 3, "head_init": "probe", "lr": 3e-4}),
    ],
)
def test_quick_kermany_reaches_sane_auroc(kermany, name, params):
    from sklearn.metrics import roc_auc_score

    from medtl.strategies import get_strategy

    data, cache = kermany
    est = get_strategy(name, progress=False, cache_dir=str(cache), **params)
    est.fit(data["train"], data["val"])
    auc = roc_auc_score(data["test"].labels, est.predict_proba(data["test"])[:, 1])
    assert auc >= 0.85, f"{name}: test AUROC {auc:.3f}"

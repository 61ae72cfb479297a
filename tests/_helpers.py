"""Shared helpers for tests: tiny in-memory datasets that need no files."""

from __future__ import annotations

from typing import Any

import numpy as np

from medtl.data._types import PreparedImages


def blob_images(
    n: int = 40, size: int = 32, seed: int = 0, offset: int = 0, channels: int = 1
) -> PreparedImages:
    """Class 1 has a bright square in a random place, class 0 has none; noise on both. Balanced."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    px = rng.normal(90, 20, size=(n, channels, size, size))
    for i in np.where(labels == 1)[0]:
        r, c = rng.integers(2, size - 10, size=2)
        px[i, :, r : r + 8, c : c + 8] += 110
    px = np.clip(px, 0, 255).astype(np.uint8)
    uids = [f"img{offset + i:05d}" for i in range(n)]
    return PreparedImages(
        pixels=px,
        labels=labels.astype(np.int64),
        uids=uids,
        keys=[f"key-{seed}-{u}" for u in uids],
        classes=["normal", "lesion"],
    )


def app_texts(at: Any) -> str:
    """Every text a Streamlit AppTest page shows (markdown, captions, alerts, metrics, tables)."""
    parts = []
    for kind in ("markdown", "caption", "error", "warning", "info", "success", "metric"):
        for el in getattr(at, kind):
            parts.append(str(getattr(el, "value", "")) + " " + str(getattr(el, "label", "")))
    for df in [*at.dataframe, *at.table]:
        parts.append(df.value.to_string())
    return "\n".join(parts)

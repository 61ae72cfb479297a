"""Subgroup attributes attached to a dataset's samples: from manifest columns and DICOM headers.

The attribute names, their normalisation and the identifier checks are :mod:`medtl.subgroups`'s;
this module reads them from the data (it needs the manifest reader and the DICOM reader).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from medtl.data._sources import _read_manifest_rows, manifest_row_path
from medtl.errors import DatasetError
from medtl.io import is_dicom, read_dicom_attributes
from medtl.subgroups import (
    DICOM_ATTRIBUTES,
    SITE,
    SITE_OWN,
    canonical_name,
    check_column,
    clean_text,
    normalise_value,
    parse_subgroups,
)

logger = logging.getLogger(__name__)


def _manifest_values(
    manifest: Path, names: Sequence[str]
) -> tuple[dict[str, dict[str, str | None]], list[str]]:
    """{absolute path: {attribute: value}} for the manifest columns among ``names``, and which of
    ``names`` the manifest holds."""
    from medtl._fileio import display_path

    delimiter = "\t" if manifest.suffix.lower() == ".tsv" else ","
    header, rows = _read_manifest_rows(manifest, delimiter)
    columns = {canonical_name(h): i for i, h in enumerate(header) if (h or "").strip()}
    ipath = columns.get("path")
    found = [n for n in names if n in columns]
    where = f"Manifest {display_path(manifest)!r}"
    out: dict[str, dict[str, str | None]] = {}
    if ipath is None or not found:
        return out, found
    per_column: dict[str, list[str | None]] = {n: [] for n in found}
    for lineno, row in enumerate(rows, start=2):
        if not any(c.strip() for c in row) or ipath >= len(row) or not row[ipath].strip():
            continue
        try:
            key = str(manifest_row_path(row[ipath].strip(), manifest.parent))
        except (OSError, ValueError):
            continue
        values: dict[str, str | None] = {}
        for n in found:
            raw = row[columns[n]] if columns[n] < len(row) else ""
            try:
                values[n] = normalise_value(n, raw)
            except DatasetError as exc:
                raise DatasetError(f"{where} line {lineno}: {exc}") from None
            # uniqueness is judged on the raw text (before age banding merges ages)
            per_column[n].append(clean_text(raw) if n != "age" else values[n])
        out[key] = values
    for n in found:
        check_column(n, per_column[n], where)
    return out, found


def attach_subgroups(
    samples: Sequence[Any],
    names: Sequence[str],
    *,
    manifest: str | os.PathLike | None = None,
    site: str = SITE_OWN,
    read_headers: bool = True,
) -> list[Any]:
    """Samples with ``attributes`` set for the attribute ``names``.

    Sources, first found wins per attribute: the manifest's column of that name; the DICOM header
    (:data:`DICOM_ATTRIBUTES`, read without pixel data); for ``site``, ``site`` (the dataset the
    image came from). An image with no value gets no key (it is shown as ``unknown``).

    Raises:
        DatasetError: an attribute that no source gives for any image (naming the attribute and
            where it was looked for), or an identifier-like manifest column.
    """
    names = parse_subgroups(list(names))
    if not names:
        return list(samples)
    from_manifest: dict[str, dict[str, str | None]] = {}
    manifest_cols: list[str] = []
    if manifest is not None and str(manifest).lower().endswith((".csv", ".tsv")):
        from_manifest, manifest_cols = _manifest_values(Path(manifest), names)
    header_names = [n for n in names if n in DICOM_ATTRIBUTES and n not in manifest_cols]
    out = []
    seen: dict[str, int] = dict.fromkeys(names, 0)
    for s in samples:
        attrs = dict(getattr(s, "attributes", None) or {})
        row = from_manifest.get(s.path, {})
        for n in manifest_cols:
            if row.get(n) is not None:
                attrs[n] = row[n]
        if header_names and read_headers and s.index is None:
            header = read_header_attributes(s.path)
            for n in header_names:
                if n in header:
                    attrs[n] = header[n]
        if SITE in names and SITE not in manifest_cols:
            attrs[SITE] = site
        for n in names:
            seen[n] += n in attrs
        out.append(replace(s, attributes=attrs))
    missing = [n for n in names if seen[n] == 0]
    if missing and out:
        known = ", ".join(DICOM_ATTRIBUTES)
        raise DatasetError(
            f"No image has a value for the subgroup attribute(s) {missing}: looked in the "
            + ("the manifest's columns and " if manifest is not None else "")
            + f"the DICOM headers. Attributes read from DICOM headers: {known} (and {SITE!r}, the "
            "dataset an image came from); any other must be a manifest column of that name. Fix "
            "the name or add the column."
        )
    return out


def read_header_attributes(path: str) -> dict[str, str]:
    """Subgroup attributes from a DICOM file's header ({} for a non-DICOM or unreadable file)."""
    if not is_dicom(path):
        return {}
    try:
        return read_dicom_attributes(path)
    except Exception as exc:  # counted as missing; the reason may quote header values: type only
        logger.debug("subgroups: header not read (%s)", type(exc).__name__)
        return {}

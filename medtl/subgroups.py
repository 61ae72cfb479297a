"""Subgroup attributes: which ones exist, where they come from, how their values are written.

A subgroup is an *attribute* of an image shared by many patients (sex, age band, view, scanner,
site), never an identity. This module is the one owner of:

* the attribute names and the DICOM header keyword each is read from (:data:`DICOM_ATTRIBUTES`;
  never a date, a name or an id: age comes from ``PatientAge`` only, never from the birth date);
* normalisation (``"female"``, ``"F"``, ``"w"`` -> ``"F"``; ``"045Y"`` -> ``"40-59"``) so that a
  manifest and a DICOM header give the same group names;
* age banding (:data:`AGE_BANDS`): the exact age is dropped as soon as it is read, so no age above
  89 (an identifier under HIPAA Safe Harbor) is ever shown;
* validation: a manifest column whose name or values look like an identifier (nearly one value per
  row) is refused, and so is a value that is too long to be a category;
* attaching the attributes to :class:`~medtl.data.Sample` objects (manifest columns, DICOM headers,
  the site of an external ``--val``/``--test`` set) and the per-image table a run folder keeps.

None of these values ever becomes a file name, a patient id or an image id: they are carried beside
the de-identified uid (``Sample.attributes``, ``PreparedImages.attributes``, ``subgroups.csv``).

Example:
    >>> from medtl.subgroups import normalise_value
    >>> normalise_value("sex", "female"), normalise_value("age", "093Y")
    ('F', '80+')
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from medtl.errors import ConfigError, DatasetError

logger = logging.getLogger(__name__)

#: attribute name -> the DICOM keyword it is read from (technical or demographic, never an identifier)
DICOM_ATTRIBUTES: dict[str, str] = {
    "sex": "PatientSex",
    "age": "PatientAge",
    "view": "ViewPosition",
    "manufacturer": "Manufacturer",
    "model": "ManufacturerModelName",
    "modality": "Modality",
    "body_part": "BodyPartExamined",
}
#: the attribute that says which dataset (site) an image came from: own data or an external set
SITE = "site"
#: what ``site`` is when no manifest column gives it
SITE_OWN, SITE_EXTERNAL_VAL, SITE_EXTERNAL_TEST = "development", "external val", "external test"
#: other spellings users give for the attribute names
ALIASES = {
    "gender": "sex",
    "patient_sex": "sex",
    "patientsex": "sex",
    "patient_age": "age",
    "patientage": "age",
    "view_position": "view",
    "viewposition": "view",
    "projection": "view",
    "scanner": "manufacturer",
    "vendor": "manufacturer",
    "manufacturer_model": "model",
    "manufacturermodelname": "model",
    "manufacturer_model_name": "model",
    "bodypart": "body_part",
    "bodypartexamined": "body_part",
    "body_part_examined": "body_part",
    "hospital": "site",
    "centre": "site",
    "center": "site",
}
#: age bands: (label, lowest age in years, highest age + 1); the last band is open, so an exact
#: age above 89 never shows
AGE_BANDS: tuple[tuple[str, float, float], ...] = (
    ("<18", 0.0, 18.0),
    ("18-39", 18.0, 40.0),
    ("40-59", 40.0, 60.0),
    ("60-79", 60.0, 80.0),
    ("80+", 80.0, math.inf),
)
#: ages outside this are not ages (typing errors, placeholders such as 999)
MAX_AGE_YEARS = 130.0
#: the group name of an image whose attribute is missing (shown, never dropped)
UNKNOWN = "unknown"
#: a subgroup column with more distinct values than this is not a grouping
MAX_GROUPS = 30
#: longer values are free text or identifiers, not categories
MAX_VALUE_CHARS = 40
#: a column with at least this many rows whose values are distinct in more than
#: UNIQUE_SHARE of them is treated as an identifier
MIN_ROWS_FOR_UNIQUENESS, UNIQUE_SHARE = 20, 0.5
# names that say "identifier" (or a date, which identifies together with a few other facts)
_ID_NAME = re.compile(
    r"(^|_)(id|ids|uid|mrn|name|names|accession|dob|birth|birthdate|date|datetime|time|path|file"
    r"|filename|label|split|ssn|address|phone|email|zip|postcode)($|_)"
)
_SEX = {
    "f": "F",
    "female": "F",
    "w": "F",
    "woman": "F",
    "girl": "F",
    "m": "M",
    "male": "M",
    "man": "M",
    "boy": "M",
    "o": "other",
    "other": "other",
    "x": "other",
}
_VIEW = {
    "pa": "PA",
    "posteroanterior": "PA",
    "ap": "AP",
    "anteroposterior": "AP",
    "ap supine": "AP",
    "ap erect": "AP",
    "lateral": "lateral",
    "lat": "lateral",
    "l": "lateral",
    "ll": "lateral",
    "rl": "lateral",
    "rlat": "lateral",
    "llat": "lateral",
}
_AGE_UNITS = {"y": 1.0, "m": 1.0 / 12.0, "w": 7.0 / 365.25, "d": 1.0 / 365.25}
_AGE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([ymwd]?)\w*\s*$", re.IGNORECASE)


# -- names ------------------------------------------------------------------------------------------
def canonical_name(name: str) -> str:
    """The attribute name medtl uses for ``name`` (``"Gender"`` -> ``"sex"``); others are kept
    (lower case, spaces as underscores), e.g. a manifest column ``ethnicity``."""
    camel = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", str(name).strip())  # PatientName -> Patient_Name
    key = re.sub(r"[\s\-]+", "_", camel.lower())
    return ALIASES.get(key, key)


def parse_subgroups(spec: str | Sequence[str] | None, field: str = "subgroups") -> list[str]:
    """The attribute names of ``--subgroups sex,age,view`` (or a list), canonical and unique.

    Raises:
        ConfigError: an empty name or a name that is an identifier (``patient_id``, ``path``...).
    """
    if spec is None:
        return []
    parts = spec.split(",") if isinstance(spec, str) else [str(p) for p in spec]
    names: list[str] = []
    for raw in parts:
        name = canonical_name(raw)
        if not name:
            raise ConfigError(
                f"The {field!r} parameter has an empty name in {spec!r}; give names separated by "
                "commas, e.g. 'sex,age,view'."
            )
        if _ID_NAME.search(name):
            raise ConfigError(
                f"The {field!r} parameter names {raw.strip()!r}, which looks like an identifier, "
                "a date or a file name: subgroups are attributes shared by many patients (e.g. "
                f"{', '.join([*DICOM_ATTRIBUTES, SITE])}). Remove it."
            )
        if name not in names:
            names.append(name)
    return names


# -- values -----------------------------------------------------------------------------------------
def parse_age(value: Any) -> float | None:
    """Age in years from a DICOM AS value (``"045Y"``, ``"006M"``, ``"010W"``, ``"003D"``) or a
    plain number (``45``, ``"45.0"``); None when missing or not an age (never from a date)."""
    if value is None:
        return None
    if isinstance(value, int | float):
        years = float(value)
    else:
        m = _AGE_RE.match(str(value))
        if not m:
            return None
        years = float(m.group(1)) * _AGE_UNITS.get(m.group(2).lower() or "y", 1.0)
    if not math.isfinite(years) or years < 0 or years > MAX_AGE_YEARS:
        return None
    return years


def age_band(years: float | None) -> str | None:
    """The band of an age in years (``"<18"``, ``"18-39"``, ``"40-59"``, ``"60-79"``, ``"80+"``)."""
    if years is None:
        return None
    for label, low, high in AGE_BANDS:
        if low <= years < high:
            return label
    return None


def clean_text(value: Any) -> str | None:
    text = re.sub(r"\s+", " ", str(value)).strip()
    if not text or text.lower() in {"nan", "none", "null", "na", "n/a", "unknown", "?", "-"}:
        return None
    return text


def normalise_value(name: str, value: Any) -> str | None:
    """One attribute value as a group name (None when missing).

    ``sex`` -> ``F``/``M``/``other``; ``age`` -> its band; ``view`` -> ``PA``/``AP``/``lateral``
    (others upper case); anything else: the text with spaces collapsed.

    Raises:
        DatasetError: a value longer than MAX_VALUE_CHARS (free text or an identifier, not a group).
    """
    name = canonical_name(name)
    if name == "age":
        return age_band(parse_age(value))
    if value is None:
        return None
    if isinstance(value, tuple | list):  # a multi-valued DICOM element: its first value
        value = value[0] if value else None
        if value is None:
            return None
    text = clean_text(value)
    if text is None:
        return None
    if len(text) > MAX_VALUE_CHARS:
        raise DatasetError(
            f"A value of the subgroup attribute {name!r} is {len(text)} characters long (more than "
            f"{MAX_VALUE_CHARS}): that is free text or an identifier, not a group. Shorten the "
            "values to categories or leave the attribute out of the subgroups."
        )
    if name == "sex":
        return _SEX.get(text.lower(), "other")
    if name == "view":
        return _VIEW.get(text.lower(), text.upper())
    return text


def dicom_attributes(ds: Any) -> dict[str, str]:
    """The subgroup attributes of a parsed DICOM header (pydicom Dataset), normalised; only the
    keywords in :data:`DICOM_ATTRIBUTES` are read, so no identifier or date is looked at."""
    out: dict[str, str] = {}
    for name, keyword in DICOM_ATTRIBUTES.items():
        try:
            raw = ds.get(keyword)
            value = normalise_value(name, None if raw is None else str(raw))
        except (DatasetError, TypeError, ValueError):
            value = None  # a damaged or free-text element is treated as missing
        if value is not None:
            out[name] = value
    return out


def check_column(name: str, values: Sequence[str | None], where: str) -> None:
    """Refuse a subgroup column whose values look like an identifier or are not a grouping.

    Raises:
        DatasetError: nearly one distinct value per row (more than UNIQUE_SHARE of at least
            MIN_ROWS_FOR_UNIQUENESS rows), or more than MAX_GROUPS groups.
    """
    present = [v for v in values if v is not None]
    distinct = set(present)
    if len(present) >= MIN_ROWS_FOR_UNIQUENESS and len(distinct) > UNIQUE_SHARE * len(present):
        raise DatasetError(
            f"{where}: the subgroup column {name!r} has {len(distinct)} distinct values in "
            f"{len(present)} rows, so it identifies images or patients rather than grouping them. "
            "Subgroups must be attributes shared by many patients (sex, age, view, site); leave "
            "this column out of --subgroups."
        )
    if len(distinct) > MAX_GROUPS:
        raise DatasetError(
            f"{where}: the subgroup column {name!r} has {len(distinct)} distinct values (more "
            f"than {MAX_GROUPS}); group its values into a few categories first, or leave it out."
        )


def with_site(attributes: Mapping[str, str] | None, site: str) -> dict[str, str]:
    """``attributes`` with ``site`` set, if the site is one of them (an external val/test set)."""
    attrs = dict(attributes or {})
    if SITE in attrs and attrs[SITE] in (SITE_OWN, SITE_EXTERNAL_VAL, SITE_EXTERNAL_TEST):
        attrs[SITE] = site
    return attrs


def group_of(attributes: Mapping[str, str] | None, name: str) -> str:
    """The group an image belongs to for attribute ``name`` (``unknown`` when missing)."""
    return (attributes or {}).get(name) or UNKNOWN


def attribute_names(rows: Iterable[Mapping[str, str] | None]) -> list[str]:
    """The attribute names present in per-image attribute dicts, in first-seen order."""
    names: list[str] = []
    for r in rows:
        for k in r or {}:
            if k not in names:
                names.append(k)
    return names


# -- the per-image table of a run folder -----------------------------------------------------------
def attributes_csv(parts: Sequence[tuple[str, Any]], names: Sequence[str]) -> str:
    """``subgroups.csv`` text: uid, split and one column per attribute, for (split, PreparedImages).

    Holds only de-identified ids and group names (age bands, never ages)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["uid", "split", *names])
    for split, images in parts:
        attrs = getattr(images, "attributes", None) or [{}] * len(images.uids)
        for uid, a in zip(images.uids, attrs):
            w.writerow([uid, split, *[(a or {}).get(n, "") for n in names]])
    return buf.getvalue()


def read_attributes_csv(path: str | os.PathLike) -> dict[str, dict[str, str]]:
    """{uid: {attribute: group}} from a run's ``subgroups.csv`` (empty cells left out)."""
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        out: dict[str, dict[str, str]] = {}
        for row in reader:
            uid = row.pop("uid", None)
            row.pop("split", None)
            if uid:
                out[uid] = {k: v for k, v in row.items() if k and v}
    return out

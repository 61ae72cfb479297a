"""Several findings per image: reading finding columns, the uncertain-label policy, per-finding
counts and a patient-grouped split stratified over every finding.

Labels of a multi-label dataset are a float array (N, K): 1 (finding present), 0 (absent) and NaN
(not labelled: blank in the manifest). A blank is *missing*, never negative; it contributes nothing
to a loss, a metric or a threshold for that finding. Uncertain labels (``-1``, as in CheXpert) follow
a policy chosen once and recorded in the run and the model (Irvin et al. 2019):

* ``ignore`` (U-Ignore, the default): treated as not labelled (NaN);
* ``positive`` (U-Ones): counted as 1;
* ``negative`` (U-Zeros): counted as 0.

A manifest's ``No Finding`` column is the all-negative marker, not a finding: a row with
``No Finding = 1`` gets 0 for every finding left blank on that row (an explicit 1 in a finding column
is kept, and the contradiction is counted in the data card).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medtl.errors import DatasetError

logger = logging.getLogger(__name__)

#: what ``data.uncertain`` / ``--uncertain`` accept
UNCERTAIN_POLICIES = ("ignore", "positive", "negative")
#: the task kind of a dataset with several findings per image (medtl.tasks.MultiLabelTask.kind)
MULTILABEL = "multilabel"
#: a manifest column with one of these names (case- and separator-insensitive) is the all-negative
#: marker, not a finding
NO_FINDING_NAMES = frozenset({"nofinding", "normal"})
#: manifest columns that are never findings (identifiers, splits, subgroup attributes)
METADATA_COLUMNS = frozenset(
    {
        "path", "label", "patientid", "split", "sex", "gender", "age", "view", "viewposition",
        "site", "scanner", "manufacturer", "studyid", "imageid", "frontallateral", "appa",
    }
)  # fmt: skip
#: columns that structure the manifest (read as such, so not listed as ignored)
_STRUCTURAL = frozenset({"path", "patientid", "split", "label"})
_POSITIVE = frozenset({"1", "1.0", "1.00"})
_NEGATIVE = frozenset({"0", "0.0", "0.00", "-0", "-0.0"})
_UNCERTAIN = frozenset({"-1", "-1.0", "-1.00"})


def _norm(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def check_uncertain(policy: str) -> str:
    """``policy`` if it is one of :data:`UNCERTAIN_POLICIES` (did-you-mean ConfigError if not)."""
    from medtl._options import look_up_option

    return look_up_option("uncertain", policy, list(UNCERTAIN_POLICIES))


@dataclass(frozen=True)
class LabelOptions:
    """How a multi-label source reads its labels.

    Attributes:
        findings: the finding columns to use, in this order (None: every column whose values are
            finding labels, in the file's order).
        uncertain: what an uncertain label (``-1``) becomes: ``ignore`` (NaN), ``positive`` (1) or
            ``negative`` (0).
    """

    findings: tuple[str, ...] | None = None
    uncertain: str = "ignore"

    def __post_init__(self) -> None:
        check_uncertain(self.uncertain)


def finding_value(raw: str) -> float | str | None:
    """1.0, 0.0, NaN (blank), ``"uncertain"`` (-1) for a manifest cell; None for anything else."""
    v = raw.strip()
    if v == "":
        return math.nan
    if v in _POSITIVE:
        return 1.0
    if v in _NEGATIVE:
        return 0.0
    if v in _UNCERTAIN:
        return "uncertain"
    return None


def uncertain_value(policy: str) -> float:
    """What an uncertain label becomes under ``policy``."""
    return {"ignore": math.nan, "positive": 1.0, "negative": 0.0}[check_uncertain(policy)]


@dataclass
class FindingColumns:
    """Which manifest columns are findings, which one is the No Finding marker, which are ignored."""

    findings: list[tuple[str, int]]
    no_finding: int | None
    ignored: list[str] = field(default_factory=list)


def finding_columns(
    header: Sequence[str], rows: Sequence[Sequence[str]], findings: Sequence[str] | None, where: str
) -> FindingColumns:
    """Classify a manifest's columns (see the module docstring).

    Without ``findings``: a column is a finding when it is not a known metadata column (path,
    patient_id, split, sex, age, view, site, ...) and at least half of its non-blank values are
    finding labels (1, 0, -1; also 1.0/0.0); other columns are ignored and listed. A finding
    column's other values are errors naming row, column and value (:func:`read_targets`).

    Raises:
        DatasetError: a named finding is not a column.
    """
    names = [(h or "").strip() for h in header]
    by_norm = {_norm(n): i for i, n in enumerate(names)}
    nf = next((i for i, n in enumerate(names) if _norm(n) in NO_FINDING_NAMES), None)
    if findings is not None:
        cols = []
        for f in findings:
            i = names.index(f) if f in names else by_norm.get(_norm(f))
            if i is None:
                raise DatasetError(
                    f"Manifest {where!r} has no column for the finding {f!r} (columns: "
                    f"{[n[:40] for n in names[:30]]}). Fix data.findings / --findings."
                )
            cols.append((names[i], i))
        used = {i for _, i in cols} | ({nf} if nf is not None else set())
        ignored = [n for i, n in enumerate(names) if i not in used and _norm(n) not in _STRUCTURAL]
        return FindingColumns(cols, nf, ignored)
    cols, ignored = [], []
    for i, n in enumerate(names):
        if i == nf or _norm(n) in _STRUCTURAL:
            continue
        if _norm(n) in METADATA_COLUMNS or not n:
            ignored.append(n)
            continue
        values = [r[i].strip() for r in rows if i < len(r) and r[i].strip()]
        good = sum(finding_value(v) is not None for v in values)
        if values and good * 2 >= len(values):
            cols.append((n, i))
        else:
            ignored.append(n)
    return FindingColumns(cols, nf, ignored)


@dataclass
class LabelTally:
    """What reading the targets met (for the data card)."""

    uncertain: dict[str, int] = field(default_factory=dict)
    no_finding_rows: int = 0
    no_finding_filled: int = 0
    no_finding_conflicts: int = 0


def read_targets(
    row: Sequence[str],
    lineno: int,
    cols: FindingColumns,
    policy: str,
    where: str,
    tally: LabelTally,
) -> tuple[float, ...]:
    """One manifest row's targets (1.0 / 0.0 / NaN per finding) under the uncertain ``policy``.

    Raises:
        DatasetError: a value that is not 1, 0, -1 or blank, naming the line, column and value.
    """
    u = uncertain_value(policy)
    out: list[float] = []
    for name, i in cols.findings:
        raw = row[i] if i < len(row) else ""
        v = finding_value(raw)
        if v is None:
            raise DatasetError(
                f"Manifest {where!r} line {lineno}, column {name!r}: value {raw.strip()[:40]!r} is "
                "not a finding label. Use 1 (present), 0 (absent), -1 (uncertain) or leave it "
                "blank (not labelled)."
            )
        if v == "uncertain":
            tally.uncertain[name] = tally.uncertain.get(name, 0) + 1
            v = u
        out.append(float(v))
    if cols.no_finding is not None:
        raw = row[cols.no_finding] if cols.no_finding < len(row) else ""
        v = finding_value(raw)
        if v is None:
            raise DatasetError(
                f"Manifest {where!r} line {lineno}, column 'No Finding': value "
                f"{raw.strip()[:40]!r} is not 1, 0 or blank."
            )
        if v == 1.0:
            tally.no_finding_rows += 1
            if any(x == 1.0 for x in out):
                tally.no_finding_conflicts += 1
            filled = [0.0 if math.isnan(x) else x for x in out]
            tally.no_finding_filled += sum(1 for a, b in zip(out, filled) if a != b)
            out = filled
    return tuple(out)


def labelling_record(
    cols: FindingColumns | None, findings: Sequence[str], policy: str, tally: LabelTally | None
) -> dict[str, Any]:
    """What a dataset records about how its multi-label targets were read (data card, run)."""
    rec: dict[str, Any] = {
        "findings": list(findings),
        "uncertain": policy,
        "uncertain_counts": dict(tally.uncertain) if tally else {},
    }
    if cols is not None:
        rec["ignored_columns"] = list(cols.ignored)
        rec["no_finding_column"] = cols.no_finding is not None
    if tally is not None and cols is not None and cols.no_finding is not None:
        rec["no_finding_rows"] = tally.no_finding_rows
        rec["no_finding_filled"] = tally.no_finding_filled
        rec["no_finding_conflicts"] = tally.no_finding_conflicts
    return rec


def targets_of(samples: Sequence[Any], k: int | None = None) -> np.ndarray:
    """The (N, K) float targets of multi-label samples (NaN = not labelled)."""
    rows = [s.targets for s in samples]
    if not rows:
        return np.zeros((0, k or 0), dtype=np.float64)
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), -1)


def is_multilabel(samples: Sequence[Any]) -> bool:
    """True when the samples carry multi-label targets."""
    return any(getattr(s, "targets", None) is not None for s in samples)


def finding_counts(y: np.ndarray, findings: Sequence[str]) -> dict[str, dict[str, int]]:
    """Per finding: positives, negatives and unlabelled rows of (N, K) targets."""
    y = np.asarray(y, dtype=np.float64).reshape(len(y), len(findings))
    return {
        f: {
            "pos": int(np.sum(y[:, k] == 1)),
            "neg": int(np.sum(y[:, k] == 0)),
            "missing": int(np.sum(np.isnan(y[:, k]))),
        }
        for k, f in enumerate(findings)
    }


def iterative_carve(
    targets: np.ndarray, groups: np.ndarray | None, fraction: float, seed: int
) -> np.ndarray:
    """Boolean mask of the rows carved into a new split: about ``fraction`` of the images, whole
    groups (patients) only, stratified over every finding.

    Iterative stratification (Sechidis, Tsoumakas and Vlahavas 2011) over groups instead of images,
    for two folds (carved and kept): the finding with the fewest positives still unassigned is
    served first, each of its groups going to the fold that still wants most of that finding's
    positives (ties: the fold that wants more images, then at random). Groups without a positive
    fill the folds by size. Hand-written (about 40 lines) rather than taken from
    ``iterative-stratification`` or ``scikit-multilearn``: neither groups by patient, and neither
    is installed here; scikit-learn's ``StratifiedGroupKFold`` stratifies one label only.
    """
    y = np.nan_to_num(np.asarray(targets, dtype=np.float64), nan=0.0)
    n, k = y.shape
    rng = np.random.default_rng(seed)
    gid = np.arange(n) if groups is None else np.unique(groups, return_inverse=True)[1].reshape(-1)
    n_groups = int(gid.max()) + 1 if n else 0
    pos = np.zeros((n_groups, k))
    np.add.at(pos, gid, (y == 1).astype(np.float64))
    size = np.bincount(gid, minlength=n_groups).astype(np.float64)
    shares = np.array([fraction, 1.0 - fraction])
    want_n = shares * n
    want_k = shares[:, None] * pos.sum(0)[None, :]
    fold = np.full(n_groups, -1)
    order = rng.permutation(n_groups)

    def put(g: int, candidates: np.ndarray) -> None:
        f = int(rng.choice(candidates)) if len(candidates) > 1 else int(candidates[0])
        fold[g] = f
        want_n[f] -= size[g]
        want_k[f] -= pos[g]

    while True:
        left = order[fold[order] < 0]
        remaining = pos[left].sum(0)
        live = np.flatnonzero(remaining > 0)
        if not len(live):
            break
        lab = live[np.argmin(remaining[live])]
        for g in left[pos[left, lab] > 0]:
            best = np.flatnonzero(want_k[:, lab] == want_k[:, lab].max())
            if len(best) > 1:
                best = best[want_n[best] == want_n[best].max()]
            put(int(g), best)
    for g in order[fold[order] < 0]:
        best = np.flatnonzero(want_n == want_n.max())
        put(int(g), best)
    carved = fold[gid] == 0
    if n >= 2 and (not carved.any() or carved.all()):  # tiny data: keep both sides non-empty
        g = int(gid[int(rng.integers(n))])
        carved = gid == g if not carved.any() else gid != g
    return carved


def training_exclusions(y_train: np.ndarray, findings: Sequence[str]) -> dict[str, dict[str, int]]:
    """Findings that cannot be learned from the training split (no positive or no negative there),
    with their counts."""
    counts = finding_counts(y_train, findings)
    return {f: c for f, c in counts.items() if c["pos"] == 0 or c["neg"] == 0}


def check_finding_counts(
    findings: Sequence[str], samples: Sequence[Any], min_per_class: int
) -> None:
    """Refuse multi-label data without a usable finding; warn about findings too rare to learn.

    Raises:
        DatasetError: no finding column, or no finding with ``min_per_class`` positives and
            negatives (counts named).
    """
    import warnings

    if not findings:
        raise DatasetError(
            "No finding columns found. Name them with data.findings / --findings, or give a "
            "manifest with a label column."
        )
    counts = finding_counts(targets_of(samples, len(findings)), findings)
    usable = [f for f, c in counts.items() if min(c["pos"], c["neg"]) >= min_per_class]
    if not usable:
        detail = ", ".join(f"{f!r}: {c['pos']} pos / {c['neg']} neg" for f, c in counts.items())
        raise DatasetError(
            f"No finding has at least min_per_class={min_per_class} positive and negative readable "
            f"images ({detail}). Add images, or lower min_per_class."
        )
    rare = {f: c for f, c in counts.items() if f not in usable}
    if rare:
        detail = ", ".join(f"{f!r} ({c['pos']} pos / {c['neg']} neg)" for f, c in rare.items())
        warnings.warn(
            f"{len(rare)} finding(s) have fewer than min_per_class={min_per_class} positive or "
            f"negative images: {detail}. They are trained on but likely too rare to learn or to "
            "score at this size.",
            UserWarning,
            stacklevel=3,
        )


def drop_findings(
    classes: list[str], samples: list[Any], drop: Sequence[str]
) -> tuple[list[str], list[Any]]:
    """``classes`` and ``samples`` without the findings ``drop`` (their target columns removed)."""
    from dataclasses import replace

    keep = [k for k, c in enumerate(classes) if c not in set(drop)]
    new = [replace(s, targets=tuple(s.targets[k] for k in keep)) for s in samples]
    return [classes[k] for k in keep], new

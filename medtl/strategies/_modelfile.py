"""The model folder: its file names, the ``model.json`` schema, its writer and its validating reader.

A model folder is the deployable unit (DESIGN.md, "Model folder"): ``model.safetensors`` holds the
network's tensors and ``model.json`` everything needed to use the model exactly as it was validated:

- ``backbone``: name, SHA-256 of the pretrained weights it started from, input mean/std;
- ``weights``: file name and SHA-256 of ``model.safetensors`` (a tampered or swapped file is refused);
- ``preprocessing``: image size, channels, every read option (window, percentiles, frame);
- ``classes`` and ``positive_class``;
- ``operating_point``: threshold, the rule and target that chose it, the split it was chosen on;
- ``calibration``: a fitted recalibration (temperature), or null when none was fitted;
- ``medtl_version`` and the training record (params, history, best epoch).

The weights carry the description's digest: ``model.safetensors``'s metadata holds the SHA-256 of
the canonical JSON of every ``model.json`` field except ``weights`` (which records the weights'
own SHA-256), and one short digest per field. A ``model.json`` edited after saving (an image size
changed from 64 to 8, another threshold) is refused naming the field(s) that changed. A folder saved
before the digest existed loads with an :class:`IncompleteModelWarning` saying that its description
cannot be checked.

This module is the only one that knows the layout; ``Strategy.save`` and ``load_model`` call it.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import struct
import warnings
from pathlib import Path
from typing import Any

from medtl._fileio import atomic_write, atomic_write_json, json_loads
from medtl.backbones import sha256_file
from medtl.errors import ConfigError
from medtl.tasks import list_task_kinds, task_for

MODEL_FILE = "model.safetensors"
META_FILE = "model.json"
FORMAT = "medtl-model/2"
_KNOWN_FORMATS = ("medtl-model/1", FORMAT)


class ModelFileError(ConfigError):
    """A model folder is missing, incomplete, invalid or tampered with."""


class IncompleteModelWarning(UserWarning):
    """An older model folder lacks some of what a current one records (its defaults are assumed)."""


def read_image_defaults() -> dict[str, Any]:
    """The read options ``medtl.io.read_image`` uses when none are given (window, percentiles, frame)."""
    import inspect

    from medtl.io import read_image

    sig = inspect.signature(read_image)
    out = {}
    for name, p in sig.parameters.items():
        if p.kind is inspect.Parameter.KEYWORD_ONLY:
            d = p.default
            out[name] = list(d) if isinstance(d, tuple) else d
    return out


def complete_read_options(read_options: dict[str, Any] | None) -> dict[str, Any]:
    """``read_options`` with every option of ``read_image`` filled in (JSON-safe: tuples -> lists)."""
    out = read_image_defaults()
    for k, v in (read_options or {}).items():
        out[k] = list(v) if isinstance(v, tuple) else v
    return out


#: keys of the safetensors metadata that seal ``model.json`` (whole digest; per-field digests)
DIGEST_KEY, FIELDS_KEY = "medtl.meta_sha256", "medtl.meta_fields"
_MAX_HEADER = 100 * 1024**2  # safetensors' own limit on its JSON header


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _leaves(obj: Any, prefix: str = "") -> dict[str, Any]:
    """``{"preprocessing.image_size": 64, ...}``: nested objects flattened to dotted fields."""
    if isinstance(obj, dict) and (obj or not prefix):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_leaves(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: obj}


def meta_seal(meta: dict[str, Any]) -> dict[str, str]:
    """The safetensors metadata that covers ``meta`` (every field but ``weights``) as read from
    ``model.json`` (plain JSON values: NaN already null, tuples already lists)."""
    covered = {k: v for k, v in meta.items() if k != "weights"}
    fields = {
        k: hashlib.sha256(_canonical(v)).hexdigest()[:16] for k, v in _leaves(covered).items()
    }
    return {
        DIGEST_KEY: hashlib.sha256(_canonical(covered)).hexdigest(),
        FIELDS_KEY: json.dumps(fields, sort_keys=True, separators=(",", ":")),
    }


def _read_header(path: Path) -> tuple[int, dict[str, Any]]:
    """(header length, header) of a safetensors file; ModelFileError when it is not one."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            raw = fh.read(8)
            n = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
            if not 2 <= n <= min(_MAX_HEADER, size - 8):
                raise ValueError(f"header length {n} does not fit a file of {size} bytes")
            header = json.loads(fh.read(n))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        return n, header
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ModelFileError(
            f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc}). Use the model "
            "folder written by medtl or retrain."
        ) from None


def _seal_weights(weights_path: Path, seal: dict[str, str]) -> None:
    """Rewrite the weights file's header metadata with ``seal`` (tensors untouched; atomic)."""
    n, header = _read_header(weights_path)
    meta = header.get("__metadata__") or {}
    header["__metadata__"] = {**{k: str(v) for k, v in meta.items()}, **seal}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # safetensors keeps the data 8-byte aligned

    def _w(tmp: str) -> None:
        with open(weights_path, "rb") as src, open(tmp, "wb") as dst:
            src.seek(8 + n)
            dst.write(struct.pack("<Q", len(text)) + text)
            shutil.copyfileobj(src, dst, 1 << 20)

    atomic_write(weights_path, _w)


def write_meta(directory: str | Path, meta: dict[str, Any]) -> Path:
    """Seal and write the description: the weights' metadata gets the digest of ``meta``, then
    ``model.json`` is written with the (new) SHA-256 of the weights. Both writes are atomic.

    ``model.safetensors`` must exist; an existing seal is replaced (e.g. a new operating point).
    """
    d = Path(directory)
    weights_path = d / MODEL_FILE
    # sealed as written (NaN -> null, numpy -> lists): what read_meta will see
    path = atomic_write_json(d / META_FILE, {"format": FORMAT, **meta})
    written = json.loads(path.read_text(encoding="utf-8"))
    _seal_weights(weights_path, meta_seal(written))
    weights = written.get("weights") if isinstance(written.get("weights"), dict) else {}
    written["weights"] = {**weights, "file": MODEL_FILE, "sha256": sha256_file(weights_path)}
    return atomic_write_json(path, written)


def _check_seal(meta: dict[str, Any], meta_path: Path, weights_path: Path) -> None:
    """Refuse a ``model.json`` that differs from the description sealed in the weights."""
    _, header = _read_header(weights_path)
    stored = header.get("__metadata__") or {}
    if DIGEST_KEY not in stored:
        warnings.warn(
            f"{meta_path.parent} was saved before model folders carried a digest of their "
            f"{META_FILE}, so an edit of its description (image size, classes, threshold...) "
            "cannot be detected. Re-save it with this version (load and save, or retrain).",
            IncompleteModelWarning,
            stacklevel=4,
        )
        return
    now = meta_seal(meta)
    if now[DIGEST_KEY] == stored[DIGEST_KEY]:
        return
    try:
        then = json.loads(stored.get(FIELDS_KEY) or "{}")
    except ValueError:
        then = {}
    fields = json.loads(now[FIELDS_KEY])
    changed = sorted(k for k in set(then) | set(fields) if then.get(k) != fields.get(k))
    named = ", ".join(repr(k) for k in changed[:8]) + (" ..." if len(changed) > 8 else "")
    raise _fail(
        meta_path,
        f"field(s) {named or '(unknown)'} differ from the description sealed in {MODEL_FILE} "
        "when the model was saved (the file was edited after saving; the model would be used "
        "otherwise than it was validated)",
    )


def _fail(path: Path, what: str) -> ModelFileError:
    return ModelFileError(
        f"{path}: {what}. The model folder is damaged or was edited by hand; use the folder written "
        "by medtl (runs/<id>/<strategy>/model) or retrain."
    )


def read_meta(directory: str | Path, *, verify_weights: bool = True) -> dict[str, Any]:
    """Read and validate ``model.json``; returns it in the current schema.

    Older (``medtl-model/1``) folders are upgraded in memory: what they did not record is filled with
    the defaults they were served with, and an :class:`IncompleteModelWarning` names each missing part.

    Raises:
        ModelFileError: the folder or a file is missing, ``model.json`` is not valid, or the weights'
            SHA-256 differs from the one recorded (tampered or swapped file).
    """
    d = Path(directory)
    meta_path, weights_path = d / META_FILE, d / MODEL_FILE
    if not d.is_dir():
        raise ModelFileError(
            f"Model folder {str(d)!r} does not exist. Pass the 'model' folder of a run "
            "(e.g. runs/<id>/<strategy>/model)."
        )
    for f in (meta_path, weights_path):
        if not f.is_file():
            raise ModelFileError(
                f"{d} is not a complete medtl model folder: {f.name} is missing (expected "
                f"{META_FILE} and {MODEL_FILE}). Pass the 'model' folder of a run "
                "(e.g. runs/<id>/<strategy>/model)."
            )
    try:
        meta = json_loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise _fail(meta_path, f"not valid JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(meta, dict):
        raise _fail(meta_path, "not a JSON object")
    fmt = meta.get("format")
    if fmt not in _KNOWN_FORMATS:
        raise _fail(meta_path, f"unknown format {fmt!r} (this medtl reads {list(_KNOWN_FORMATS)})")
    v1 = fmt == "medtl-model/1"
    sealed = dict(meta)
    meta = _upgrade_v1(meta, meta_path) if v1 else meta
    _validate(meta, meta_path)
    recorded = (meta.get("weights") or {}).get("sha256")
    if verify_weights and recorded:
        actual = sha256_file(weights_path)
        if actual != recorded:
            raise _fail(
                weights_path,
                f"SHA-256 {actual[:16]}... differs from the {recorded[:16]}... recorded in {META_FILE} "
                "(the weights were replaced or corrupted)",
            )
    if verify_weights and not v1:  # a v1 folder predates the seal (and already warns)
        _check_seal(sealed, meta_path, weights_path)
    return meta


def _upgrade_v1(meta: dict[str, Any], meta_path: Path) -> dict[str, Any]:
    """A medtl-model/1 model.json in the current schema, warning about what it lacks."""
    out = dict(meta)
    missing = []
    backbone = meta.get("backbone")
    out["backbone"] = {"name": backbone, "pretrained_weights_sha256": None}
    out["preprocessing"] = {
        "image_size": meta.get("image_size"),
        "channels": 1,  # what every medtl-model/1 consumer passed
        "read_options": complete_read_options(None),
    }
    missing.append("preprocessing (assumed: grey, the reader's default window)")
    out["weights"] = {"file": MODEL_FILE, "sha256": None}
    missing.append("the weights' SHA-256 (not verified)")
    classes = meta.get("classes") or []
    out["positive_class"] = task_for(classes).positive_class if len(classes) >= 2 else None
    if meta.get("operating_point") is None:
        out["operating_point"] = None
        missing.append("the operating point (0.5 is used unless you pass a threshold)")
    out.setdefault("calibration", None)
    out.setdefault("medtl_version", None)
    warnings.warn(
        f"{meta_path} was written by an older medtl (medtl-model/1) and does not record: "
        + "; ".join(missing)
        + ". Re-save it with this version (retrain, or load and save) to make it complete.",
        IncompleteModelWarning,
        stacklevel=3,
    )
    return out


def _validate(meta: dict[str, Any], path: Path) -> None:
    """Check the fields every consumer relies on; raise ModelFileError naming the field."""

    def need(cond: bool, field: str, what: str) -> None:
        if not cond:
            raise _fail(path, f"field {field!r} {what} (got {_short(meta, field)})")

    need(isinstance(meta.get("strategy"), str), "strategy", "must be a strategy name")
    need(isinstance(meta.get("params", {}), dict), "params", "must be an object")
    bb = meta.get("backbone")
    need(
        isinstance(bb, dict) and isinstance(bb.get("name"), str), "backbone", "must name a backbone"
    )
    kind = meta.get("task")
    need(kind is None or kind in list_task_kinds(), "task", f"must be one of {list_task_kinds()}")
    classes = meta.get("classes")
    need(
        isinstance(classes, list)
        and len(classes) >= (1 if kind == "multilabel" else 2)  # one finding is a question too
        and all(isinstance(c, str) for c in classes)
        and len(set(classes)) == len(classes),
        "classes",
        "must be a list of two or more distinct class names",
    )
    pre = meta.get("preprocessing")
    need(isinstance(pre, dict), "preprocessing", "must be an object")
    size = pre.get("image_size")
    need(
        isinstance(size, int) and not isinstance(size, bool) and 8 <= size <= 4096,
        "preprocessing.image_size",
        "must be an integer from 8 to 4096",
    )
    need(pre.get("channels") in (1, 3), "preprocessing.channels", "must be 1 or 3")
    need(
        isinstance(pre.get("read_options"), dict), "preprocessing.read_options", "must be an object"
    )
    pos = meta.get("positive_class")
    need(pos is None or pos in classes, "positive_class", "must be one of the classes or null")
    op = meta.get("operating_point")
    if op is not None:
        t = op.get("threshold") if isinstance(op, dict) else None
        # several findings per image: one threshold per finding, keyed by its name
        ts = list(t.values()) if isinstance(t, dict) and kind == "multilabel" else [t]
        need(
            (not isinstance(t, dict) or set(t) <= set(classes))
            and all(
                isinstance(v, int | float)
                and not isinstance(v, bool)
                and math.isfinite(v)
                and 0 <= v <= 1
                for v in ts
            ),
            "operating_point.threshold",
            "must be a number in [0, 1] (for several findings: one per finding name)",
        )
    cal = meta.get("calibration")
    if cal is not None:
        temp = cal.get("temperature") if isinstance(cal, dict) else None
        need(
            isinstance(temp, int | float) and math.isfinite(temp) and temp > 0,
            "calibration.temperature",
            "must be a positive number",
        )


def _short(meta: dict[str, Any], field: str) -> str:
    v: Any = meta
    for part in field.split("."):
        v = v.get(part) if isinstance(v, dict) else None
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."

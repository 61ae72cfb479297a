"""What a run's records may hold, and how they are kept honest.

Four small owners, used by the runner (``experiment``), ``evaluate`` and the CLI:

* **No data path in a record.** A run's ``config.yaml`` keeps every setting but the data paths
  (``data.path``, ``data.val``, ``data.test``): an export folder is often named after a patient. It
  records the data's fingerprint instead (and ``data.name``, a name the user gives, when given);
  ``--resume`` and ``evaluate`` take the path from the command line and the fingerprint check makes
  sure it is the same data. :func:`dataset_label` names a dataset in tables the same way.
* **Tamper-evident split.** :func:`file_digest` of ``splits.json`` is recorded in ``summary.json``
  when the run is made; :func:`check_splits` refuses a ``splits.json`` edited since.
* **One process per run folder.** :func:`acquire_run_lock` takes an OS lock (``fcntl.flock``) on
  ``<run>/.lock`` for as long as a process works in the folder; the OS releases it when the process
  ends, however it ends, so a killed run never leaves a stale lock. A second process is refused.
* **How the run was executed.** :func:`execution_record`: device, processes, launcher, precision.

Example:
    >>> lock = acquire_run_lock("runs/a")   # RunLockedError if another process holds it
    >>> lock.release()
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from medtl.errors import ConfigError, RecordTamperedError, RunLockedError

log = logging.getLogger(__name__)

__all__ = [
    "NOT_RECORDED",
    "RunLock",
    "acquire_run_lock",
    "check_splits",
    "dataset_label",
    "execution_record",
    "file_digest",
    "redact_data_paths",
    "restore_data_paths",
]

#: what a run's ``config.yaml`` holds in place of a data path
NOT_RECORDED = "(not recorded: give it on the command line)"
#: the config fields that hold data paths, and the command-line option that gives each
DATA_PATH_FIELDS = {"data.path": "--data", "data.val": "--val", "data.test": "--test"}
LOCK_FILE = ".lock"
#: the summary.json key of the splits digest
SPLITS_DIGEST_KEY = "splits_sha256"


# -- data paths ------------------------------------------------------------------------------------


def _is_path(value: Any) -> bool:
    return isinstance(value, str) and value not in ("", "synthetic", NOT_RECORDED)


def redact_data_paths(config: dict[str, Any], fingerprint: str | None) -> str:
    """The YAML text of a run's ``config.yaml``: ``config`` with its data paths replaced by
    :data:`NOT_RECORDED` (``synthetic`` is kept: it names no one), headed by the fingerprint.

    Example:
        >>> redact_data_paths(cfg.to_dict(), "ds-1a2b...")
    """
    import copy

    import yaml

    out = copy.deepcopy(config)
    data = out.get("data") or {}
    for dotted in DATA_PATH_FIELDS:
        key = dotted.split(".", 1)[1]
        if _is_path(data.get(key)):
            data[key] = NOT_RECORDED
    head = [
        "# medtl run config. Data paths are not recorded (folder names can identify patients):",
        "# give them again with --data/--val/--test to resume; the data must match this fingerprint.",
    ]
    if fingerprint:
        head.append(f"# data fingerprint: {fingerprint}")
    return "\n".join(head) + "\n" + yaml.safe_dump(out, sort_keys=False)


def restore_data_paths(
    saved: Any, given: Any, explicit: set[str] | None, run_dir: Path
) -> set[str]:
    """Fill the data paths a saved config does not record from the ``given`` config, in place.

    Returns the fields filled (the resume check must not call them conflicts). A field that is not
    recorded and not given is refused, naming the option that gives it.

    Raises:
        ConfigError: a data path is needed and not given.
    """
    filled: set[str] = set()
    for dotted, option in DATA_PATH_FIELDS.items():
        key = dotted.split(".", 1)[1]
        if getattr(saved.data, key) != NOT_RECORDED:
            continue
        value = getattr(given.data, key)
        deliberate = explicit is None or dotted in explicit
        if not deliberate or not _is_path(value):
            raise ConfigError(
                f"Cannot resume {str(run_dir)!r}: the run does not record its {dotted!r} (data "
                f"paths can name patients). Give the same data again with {option} PATH; its "
                "fingerprint is checked against the run's."
            )
        setattr(saved.data, key, value)
        filled.add(dotted)
    return filled


def dataset_label(name: str | None, fingerprint: str | None) -> str:
    """How records name a dataset: the name the user gave, else ``dataset-`` and 6 hex digits of its
    fingerprint (never its path or folder name).

    Example:
        >>> dataset_label(None, "ds-1a2b3c4d...")
        'dataset-1a2b3c'
    """
    if name:
        return str(name)
    digits = (fingerprint or "").removeprefix("ds-")[:6]
    return f"dataset-{digits}" if digits else "dataset"


# -- tamper-evident split ------------------------------------------------------------------------


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file's bytes."""
    from medtl.backbones import sha256_file

    return sha256_file(path)


def check_splits(run_dir: str | os.PathLike, summary: dict[str, Any] | None) -> None:
    """Refuse a run's ``splits.json`` that differs from the digest ``summary`` recorded.

    A run made before the digest was recorded is used with a warning (it cannot be checked).

    Raises:
        RecordTamperedError: the file was edited or replaced after the run was made.
    """
    from medtl import runs

    path = Path(run_dir) / runs.SPLITS_FILE
    recorded = (summary or {}).get(SPLITS_DIGEST_KEY)
    if not recorded:
        import warnings

        warnings.warn(
            f"The run {str(run_dir)!r} does not record a digest of its {runs.SPLITS_FILE} (made "
            "by an older medtl), so an edited split cannot be detected.",
            UserWarning,
            stacklevel=3,
        )
        return
    actual = file_digest(path) if path.is_file() else "(missing)"
    if actual != recorded:
        raise RecordTamperedError(
            f"{path}: SHA-256 {actual[:16]} differs from the {recorded[:16]} recorded in "
            f"{runs.SUMMARY_FILE} when the run was made: the split was edited or replaced, so its "
            "train/val/test images are not the ones the model was validated on. Restore the run's "
            "own splits.json, or evaluate with --split all on data the model has not seen."
        )


# -- one process per run folder --------------------------------------------------------------------


class RunLock:
    """An OS lock on ``<run>/.lock``, held until :meth:`release` or the end of the process."""

    def __init__(self, run_dir: Path, fd: int | None, created: bool) -> None:
        self.run_dir, self._fd, self._created = run_dir, fd, created

    def release(self, *, failed: bool = False) -> None:
        """Release the lock; after a failure, remove a folder this lock created that holds nothing
        else (a refused start leaves no empty run folder behind)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_UN)
        except (ImportError, OSError):
            pass
        os.close(fd)
        if failed and self._created:
            try:
                if [p.name for p in self.run_dir.iterdir()] == [LOCK_FILE]:
                    (self.run_dir / LOCK_FILE).unlink()
                    self.run_dir.rmdir()
            except OSError:
                pass


def acquire_run_lock(run_dir: str | os.PathLike) -> RunLock:
    """Lock ``run_dir`` for this process (creating the folder), or refuse.

    The lock is ``flock`` on ``<run>/.lock``: the OS drops it when the process exits or is killed,
    so it never outlives its holder. Where ``fcntl`` does not exist (Windows) nothing is locked.

    Raises:
        RunLockedError: another process (or another run in this process) works in the folder.
    """
    folder = Path(run_dir).expanduser()
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        log.debug("no fcntl: run folder %s not locked", folder)
        return RunLock(folder, None, created)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise RunLockedError(
            f"The run folder {str(folder)!r} is in use by another medtl process (its {LOCK_FILE} "
            "is locked). Wait for that process to finish, or stop it, then rerun; two processes "
            "in one run folder would do the work twice and overwrite each other's files."
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return RunLock(folder, fd, created)


# -- execution record ----------------------------------------------------------------------------


def execution_record(device: Any, precision: str) -> dict[str, Any]:
    """How a run is executed: device (and GPU name), processes, launcher, backend, precision.

    Example:
        >>> execution_record(torch.device("cpu"), "fp32")["processes"]
        1
    """
    import torch

    from medtl import distributed

    n = distributed.world_size()
    record: dict[str, Any] = {
        "device": str(device),
        "processes": n,
        "launcher": "torchrun" if distributed.launched_by_torchrun() else "single process",
        "backend": torch.distributed.get_backend() if distributed.is_initialized() else None,
        "precision": precision,
        "threads_per_process": torch.get_num_threads(),
    }
    if getattr(device, "type", None) == "cuda" and torch.cuda.is_available():
        record["device_name"] = torch.cuda.get_device_name(device)
    return record

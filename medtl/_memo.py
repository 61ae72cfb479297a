"""Memoised pure computations on disk, under a project's cache folder (``<cache>/results``).

A warm re-run (same images, same settings; say, another report option) reads the carved split and the
fitted linear heads back instead of recomputing them. Only pure functions of their arguments are memoised,
and only with numbers as arguments (never paths, names or ids), through ``joblib.Memory``: it hashes the
arguments and the function's source, so a changed input or a changed function recomputes. Each memoised
function takes a ``versions`` argument (``medtl.cachekeys.memo_versions``: the results key version, the
libraries its result depends on and a digest of the medtl helpers it calls, whose source joblib does not
hash), so an upgrade or a changed helper recomputes too. A damaged entry is recomputed (joblib reloads or recomputes); a folder that cannot be
written is not an error, the call just runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from medtl.cachekeys import note_cache_use

log = logging.getLogger(__name__)

RESULTS_DIR = "results"  # the subfolder of a project's cache folder that holds memoised results

F = TypeVar("F", bound=Callable[..., Any])


def memoized(fn: F, cache_dir: str | Path | None) -> F:
    """``fn`` memoised under ``<cache_dir>/results``; ``fn`` itself when ``cache_dir`` is None.

    The result is identical to calling ``fn``: tests compare both ways. Each call is counted in the
    current cache ledger (``medtl.cachekeys``: served from the memo or computed).
    """
    if cache_dir is None:
        return fn
    import joblib

    memory = joblib.Memory(Path(cache_dir).expanduser() / RESULTS_DIR, verbose=0)
    cached = memory.cache(fn)

    def call(*args: Any, **kwargs: Any) -> Any:
        joblog = logging.getLogger("joblib")  # joblib's Logger namespace (its default name)
        quiet = _UnreadableEntry(memory.location)
        joblog.addFilter(quiet)
        try:
            served = cached.check_call_in_cache(*args, **kwargs)
            note_cache_use("results", from_cache=int(served), computed=int(not served))
            return cached(*args, **kwargs)
        except OSError as exc:  # an unwritable or full cache folder: compute without it
            log.warning("result cache %s unusable (%s); computing without it", memory.location, exc)
            return fn(*args, **kwargs)
        finally:
            joblog.removeFilter(quiet)

    return call  # type: ignore[return-value]


class _UnreadableEntry(logging.Filter):
    """joblib recomputes a damaged entry but logs the loading traceback (logger ``joblib``); that
    becomes one plain warning line here (no traceback reaches a user)."""

    def __init__(self, location: str) -> None:
        super().__init__()
        self.location = location

    def filter(self, record: logging.LogRecord) -> bool:
        if "Exception while loading results" not in record.getMessage():
            return True
        log.warning("a memoised result under %s was unreadable; recomputed it", self.location)
        return False

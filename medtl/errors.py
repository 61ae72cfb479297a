"""Exception classes used across medtl.

Every error says what went wrong, which parameter/file/field it concerns, the value received and a fix.
Catch :class:`MedtlError` to handle any of them.
"""

from __future__ import annotations


class MedtlError(Exception):
    """Base class of every error raised on purpose by medtl."""


class ImageReadError(MedtlError):
    """A file could not be read as an image (unreadable, truncated, not an image, unsupported).

    Attributes:
        path: the file that failed.
        reason: a short human-readable reason (never contains patient identifiers).
    """

    def __init__(self, path: str, reason: str) -> None:
        import os

        self.path = os.fspath(path) if isinstance(path, str | os.PathLike) else str(path)
        self.reason = reason
        # printable even when the name is not UTF-8 (e.g. a Latin-1 file name from an export)
        shown = os.fsencode(self.path).decode("utf-8", "backslashreplace")
        super().__init__(f"{shown}: {reason}")


class DatasetError(MedtlError):
    """A dataset cannot be used (too few classes or images, bad layout, bad manifest)."""


class ConfigError(MedtlError, ValueError):
    """An invalid option, argument or config field."""


class RunLockedError(MedtlError):
    """Another process is working in this run folder (its ``.lock`` is held)."""


class RecordTamperedError(DatasetError):
    """A run's record (e.g. ``splits.json``) differs from the digest recorded when it was made."""


class WeightsNotFoundError(MedtlError, FileNotFoundError):
    """Pretrained weights are not available offline."""


class NotFittedError(MedtlError, AttributeError):
    """A model was used before `fit` (or `load`)."""

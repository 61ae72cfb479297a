"""Option validation with did-you-mean suggestions (in the spirit of MONAI's ``look_up_option``)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from medtl.errors import ConfigError


def look_up_option(name: str, value: Any, allowed: Iterable[Any]) -> Any:
    """Return ``value`` if it is one of ``allowed``; otherwise raise a ConfigError with a suggestion.

    Args:
        name: parameter name shown in the message (e.g. ``"window"``).
        value: the value received.
        allowed: the accepted values.

    Example:
        >>> look_up_option("window", "header", ["header", "full", "percentile"])
        'header'
    """
    options = list(allowed)
    if value in options:
        return value
    hint = ""
    if isinstance(value, str):
        close = difflib.get_close_matches(value, [str(o) for o in options], n=1)
        if close:
            hint = f" Did you mean {close[0]!r}?"
    raise ConfigError(
        f"The {name!r} parameter must be one of {options}. Got {value!r} instead.{hint}"
    )


def check_range(
    name: str, value: float, low: float | None = None, high: float | None = None
) -> float:
    """Raise a ConfigError unless ``low <= value <= high`` (either bound may be None)."""
    if (low is not None and value < low) or (high is not None and value > high):
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise ConfigError(f"The {name!r} parameter must be in [{lo}, {hi}]. Got {value!r} instead.")
    return value


#: Most epochs a network may be asked to train without a stopping rule (early stopping) or a time
#: box (``max_minutes``): beyond it a run is unbounded for practical purposes.
MAX_EPOCHS_UNBOUNDED = 1000


def check_epochs_bounded(
    epochs: Any, patience: Any, max_minutes: Any, *, field: str = "epochs"
) -> None:
    """Refuse more than :data:`MAX_EPOCHS_UNBOUNDED` epochs when nothing else stops training.

    ``patience=None`` turns early stopping off; ``max_minutes=None`` sets no time box. With both off,
    ``epochs: 1000000000`` would run until the machine is taken away.
    """
    if (
        isinstance(epochs, int)
        and epochs > MAX_EPOCHS_UNBOUNDED
        and patience is None
        and max_minutes is None
    ):
        raise ConfigError(
            f"The {field!r} field is {epochs}, above {MAX_EPOCHS_UNBOUNDED} epochs, with early "
            "stopping off (patience: null) and no time box (max_minutes): the run would not end. "
            f"Lower {field} to at most {MAX_EPOCHS_UNBOUNDED}, set a patience (e.g. 3) or a time "
            "box (max_minutes, e.g. train.max_minutes: 60)."
        )

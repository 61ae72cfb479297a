"""How numbers, intervals, p-values and durations are written, and how results become strict JSON.

The one owner of formatting for every surface (CLI, report, app, advisor text): a number that is shown
in two places is written by the same function in both. Also the one JSON sanitiser (:func:`json_safe`)
and the one float-or-NaN reader (:func:`num`).
"""

from __future__ import annotations

import math
from typing import Any

__all__ = [
    "DURATION_STYLES",
    "P_FLOOR",
    "finite",
    "finite_or_none",
    "format_duration",
    "format_interval",
    "format_number",
    "format_p_value",
    "format_percent",
    "json_safe",
    "num",
]


def num(x: Any) -> float:
    """``x`` as a float; None, text and other non-numbers become NaN."""
    try:
        return float("nan") if x is None else float(x)
    except (TypeError, ValueError):
        return float("nan")


def finite(x: Any) -> bool:
    """True when ``x`` is a finite number."""
    return math.isfinite(num(x))


def finite_or_none(x: Any) -> float | None:
    """``float(x)`` when it is a finite number, else None (None, text, NaN, infinity)."""
    v = num(x)
    return v if math.isfinite(v) else None


def json_safe(obj: Any) -> Any:
    """Recursively convert numpy scalars/arrays to Python, keys to text and NaN/inf to None
    (strict JSON). The one sanitiser: run files, the advisor's profile and the CLI's --json use it."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    try:
        import numpy as np

        if isinstance(obj, np.ndarray):
            return json_safe(obj.tolist())
        if isinstance(obj, np.generic):
            obj = obj.item()
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def format_number(v: Any, digits: int = 3) -> str:
    """A number with ``digits`` decimals; None, NaN and non-numbers become "n/a"."""
    f = num(v)
    if math.isinf(f):
        return "∞" if f > 0 else "−∞"
    return "n/a" if math.isnan(f) else f"{f:.{digits}f}"


def format_interval(
    v: Any, lo: Any, hi: Any, digits: int = 3, label: str = "", sep: str = "–"
) -> str:
    """ "0.912 (0.881–0.940)", or just the value when the CI is unknown.

    ``label`` goes inside the bracket before the interval, e.g. ``"95% CI "``; pass
    ``sep=" to "`` for quantities that can be negative ("-0.86 to 1.67", not "-0.86–1.67").
    """
    s = format_number(v, digits)
    if s == "n/a":
        return s
    lo_s, hi_s = format_number(lo, digits), format_number(hi, digits)
    return s if "n/a" in (lo_s, hi_s) else f"{s} ({label}{lo_s}{sep}{hi_s})"


def format_percent(v: Any, lo: Any = None, hi: Any = None) -> str:
    """A proportion as a whole percent, "87% (81–92%)"; the interval only when both ends are known."""
    f, a, b = finite_or_none(v), finite_or_none(lo), finite_or_none(hi)
    if f is None:
        return "n/a"
    s = f"{100 * f:.0f}%"
    return s if a is None or b is None else f"{s} ({100 * a:.0f}–{100 * b:.0f}%)"


#: how durations are written: a measured time ("3 min 20 s"), time left ("3.0 min", "40 s"),
#: a rough estimate ("~3 min", "~40 s").
DURATION_STYLES = ("measured", "left", "rough")


def format_duration(seconds: Any, style: str = "measured") -> str:
    """A duration in seconds as text in one of :data:`DURATION_STYLES`; "n/a" when unknown.

    - ``measured``: "45.0 s", "3 min 20 s", "1 h 05 min" (a time that was measured);
    - ``left``: "40 s" in 5 s steps, "3.0 min", "12 min" (time left, cost estimates);
    - ``rough``: "~40 s", "~3 min" (an estimate quoted in advice).
    """
    s = finite_or_none(seconds)
    if s is None:
        return "n/a"
    if style == "left":
        if s < 60:
            return f"{max(5, 5 * round(s / 5)):.0f} s"
        return f"{s / 60:.0f} min" if s >= 600 else f"{s / 60:.1f} min"
    if style == "rough":
        return f"~{max(5, 5 * round(s / 5)):.0f} s" if s < 60 else f"~{s / 60:.0f} min"
    if style != "measured":
        raise ValueError(f"style must be one of {DURATION_STYLES}; got {style!r}.")
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


#: below this a p-value is written as "< 0.001": more digits would claim precision the tests lack
P_FLOOR = 0.001


def format_p_value(p: Any, *, prefix: bool = True) -> str:
    """A p-value as text: "p = 0.042", "p < 0.001", or "p n/a" when unknown.

    Never "0.000": a p-value of exactly zero is impossible for these tests, and three decimals of a
    tiny number round to it.

    Args:
        p: the p-value (None, NaN and non-numbers count as unknown).
        prefix: with "p " in front (for sentences); without it for a table column.

    Example:
        >>> format_p_value(0.00002), format_p_value(0.0421, prefix=False)
        ('p < 0.001', '0.042')
    """
    try:
        v = float(p)
    except (TypeError, ValueError):
        v = math.nan
    lead = "p " if prefix else ""
    if not math.isfinite(v):
        return f"{lead}n/a"
    if v < P_FLOOR:
        return f"{lead}< {P_FLOOR:g}"
    return f"{lead}= {v:.3f}" if prefix else f"{v:.3f}"

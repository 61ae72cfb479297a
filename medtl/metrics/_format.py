"""How a p-value is written, everywhere medtl shows one (report, app, CLI sentences)."""

from __future__ import annotations

import math
from typing import Any

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

"""Checks for numeric settings, raising ``ValueError`` that names the field (``Owner.field``) and the value."""

from __future__ import annotations

import math

__all__ = ["check_int", "check_number"]


def check_int(field: str, value: object, *, minimum: int) -> None:
    """``value`` must be an ``int`` (not a ``bool``) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{field} must be an integer >= {minimum}, got {value!r}")


def check_number(field: str, value: object, *, minimum: float, maximum: float = math.inf) -> None:
    """``value`` must be a finite ``int``/``float`` (not a ``bool``) in ``[minimum, maximum]``."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not ok or not minimum <= value <= maximum:
        bounds = f">= {minimum}" if maximum == math.inf else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{field} must be a finite number {bounds}, got {value!r}")

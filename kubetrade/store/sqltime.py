"""SQL fragments converting between int milliseconds (or microseconds) and ``timestamptz``.

The conversion happens in PostgreSQL so bulk loads ship plain integers (no per-row
``datetime`` objects in Python) and nothing depends on the session time zone.
"""

from __future__ import annotations


def ts(expr: str) -> str:
    """SQL for the ``timestamptz`` of an int-milliseconds expression (exact, no float)."""
    return f"(TIMESTAMPTZ 'epoch' + ({expr}) * INTERVAL '1 millisecond')"


def ms(expr: str) -> str:
    """SQL for the int milliseconds of a ``timestamptz`` expression."""
    return f"(extract(epoch FROM {expr}) * 1000)::bigint"


def ts_us(expr: str) -> str:
    """SQL for the ``timestamptz`` of an int-microseconds expression (exact, no float)."""
    return f"(TIMESTAMPTZ 'epoch' + ({expr}) * INTERVAL '1 microsecond')"


def us(expr: str) -> str:
    """SQL for the int microseconds of a ``timestamptz`` expression (its full precision)."""
    return f"(extract(epoch FROM {expr}) * 1000000)::bigint"

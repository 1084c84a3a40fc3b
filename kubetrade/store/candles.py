"""Bulk candle writes from the feed: COPY into a staging table, then insert what is new.

A replay or a restart re-sends candles the database already holds; ``ON CONFLICT DO NOTHING``
on the (bot, symbol, timeframe, open_time) key makes that harmless.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from kubetrade.domain import Candle
from kubetrade.store.sqltime import ts
from kubetrade.store.steps import Atomic, Copy, Execute, Op

log = logging.getLogger(__name__)

_STAGING_COLUMNS = (
    ("symbol", "text"),
    ("timeframe", "text"),
    ("open_time", "int8"),
    ("open", "float8"),
    ("high", "float8"),
    ("low", "float8"),
    ("close", "float8"),
    ("volume", "float8"),
)

# The staging table lives as long as the session (IF NOT EXISTS) and empties itself at
# commit. It has no bot column (bound once per statement) and keeps times as int ms, so COPY
# ships plain integers and PostgreSQL does the conversion.
_CREATE_STAGING = (
    "CREATE TEMP TABLE IF NOT EXISTS kt_in_candles ("
    + ", ".join(f"{column} {kind}" for column, kind in _STAGING_COLUMNS)
    + ") ON COMMIT DELETE ROWS"
)

_MOVE = f"""
INSERT INTO candles (bot, symbol, timeframe, open_time, open, high, low, close, volume)
SELECT %s, symbol, timeframe, {ts("open_time")}, open, high, low, close, volume
FROM kt_in_candles
ON CONFLICT DO NOTHING
"""


def write_candles_op(bot: str, candles: Sequence[Candle]) -> Op[int]:
    """Store candles once each; returns how many were new (the rest were already stored)."""
    if not candles:
        return 0
    inserted: int = yield Atomic(_write(bot, candles))
    return inserted


def _write(bot: str, candles: Sequence[Candle]) -> Op[int]:
    yield Execute(_CREATE_STAGING)
    yield Copy(
        table="kt_in_candles",
        columns=tuple(column for column, _ in _STAGING_COLUMNS),
        types=tuple(kind for _, kind in _STAGING_COLUMNS),
        rows=[
            (c.symbol, c.timeframe, c.open_time, c.open, c.high, c.low, c.close, c.volume)
            for c in candles
        ],
    )
    inserted: int = yield Execute(_MOVE, (bot,))
    log.debug("candles written", extra={"bot": bot, "candles": len(candles), "inserted": inserted})
    return inserted

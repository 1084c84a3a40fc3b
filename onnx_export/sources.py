"""Candles for training from files, the synthetic generator, or the database the feed fills."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from kubetrade.errors import InvalidInputError
from kubetrade.market.frame import sort_frame

CANDLE_QUERY = """
    SELECT symbol, (extract(epoch FROM open_time) * 1000)::bigint AS open_time,
           open, high, low, close, volume
    FROM candles
    WHERE bot = %(bot)s AND timeframe = %(timeframe)s
      AND (%(symbols)s::text[] IS NULL OR symbol = ANY(%(symbols)s::text[]))
    ORDER BY symbol, open_time
"""


def frames_by_symbol(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """One candle frame per symbol of a multi-symbol candle frame, order kept."""
    return {
        str(symbol): part.reset_index(drop=True)
        for symbol, part in frame.groupby("symbol", sort=False)
    }


def file_frames(path: Path, timeframe: str, symbol: str | None = None) -> dict[str, pd.DataFrame]:
    """Candles of a CSV or Parquet file (any layout the loaders know), per symbol; ``symbol``
    names the market of a file without a symbol column, or picks one from a file with several."""
    from kubetrade.market.loaders import load_candles

    return frames_by_symbol(load_candles(path, timeframe=timeframe, symbol=symbol))


def synthetic_frames(
    symbols: Sequence[str], timeframe: str, candles: int, seed: int
) -> dict[str, pd.DataFrame]:
    """Candles of the synthetic generator, per symbol."""
    from kubetrade.market.synthetic import generate

    return frames_by_symbol(generate(list(symbols), timeframe, candles, seed))


def database_frames(
    url: str, bot: str, timeframe: str, symbols: Sequence[str] | None = None
) -> dict[str, pd.DataFrame]:
    """Candles the feed of ``bot`` ("namespace/name") wrote to the ``candles`` table, per
    symbol (all of them, or ``symbols``)."""
    import psycopg

    params = {"bot": bot, "timeframe": timeframe, "symbols": list(symbols) if symbols else None}
    with psycopg.connect(url) as conn, conn.cursor() as cursor:
        cursor.execute(CANDLE_QUERY, params)
        rows = cursor.fetchall()
    if not rows:
        raise InvalidInputError(
            f"no {timeframe} candles of bot {bot!r} in the database"
            + (f" for {list(symbols)}" if symbols else "")
            + "; run the bot's feed first, or check --bot (namespace/name) and --timeframe"
        )
    frame = pd.DataFrame(
        rows, columns=["symbol", "open_time", "open", "high", "low", "close", "volume"]
    )
    frame["open_time"] = frame["open_time"].astype(np.int64)
    return frames_by_symbol(sort_frame(frame))

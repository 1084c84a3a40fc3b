"""The candle frame: the one tabular form of candles, and its conversions to domain Candles.

A candle frame is a pandas DataFrame with exactly the columns of ``CANDLE_COLUMNS``:
``open_time`` (int64, ms since the epoch, UTC), ``open``/``high``/``low``/``close``/``volume``
(float64, volume in the base currency) and ``symbol`` (``BASE/QUOTE``). Frames returned by this
package are sorted by ``open_time`` then ``symbol``, hold one row per symbol and open time and no
gaps (see ``clean``), so a row sequence of one symbol is a gap-free candle series.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt
import pandas as pd

from kubetrade.domain import TIMEFRAME_MS, Candle
from kubetrade.errors import InvalidInputError


class CandleDataError(InvalidInputError):
    """A candle file or frame that cannot be used: the message names the file, row or column."""


CANDLE_COLUMNS: tuple[str, ...] = ("open_time", "open", "high", "low", "close", "volume", "symbol")
PRICE_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close")

# Any epoch timestamp after 1973 in ms exceeds 1e11, and in µs exceeds 1e14 (until year 5138).
_MS_FLOOR = 100_000_000_000
_US_FLOOR = 100_000_000_000_000
# 9999-12-31 in µs: anything larger is not a time this code can hold (int64 ms overflows).
_US_CEILING = 253_402_300_800_000_000


def to_epoch_ms(values: npt.ArrayLike, *, where: str) -> npt.NDArray[np.int64]:
    """Epoch timestamps in s, ms or µs → int64 ms; the unit is read from the magnitude.

    Binance switched its spot archives from ms to µs in 2025 and some CSV exports use seconds,
    so the unit is detected from the values; a column mixing units is refused (``where`` names
    the file or column in the error).
    """
    raw = np.asarray(values, dtype=np.float64)
    if raw.size == 0:
        return raw.astype(np.int64)
    if not np.all(np.isfinite(raw)):
        bad = int(np.flatnonzero(~np.isfinite(raw))[0])
        raise CandleDataError(
            f"{where}: the timestamp of data row {bad + 1} is missing or not a number; fix or "
            "drop that row"
        )
    low, high = float(raw.min()), float(raw.max())
    if low < 0 or high >= _US_CEILING:
        bad = int(np.flatnonzero((raw < 0) | (raw >= _US_CEILING))[0])
        raise CandleDataError(
            f"{where}: timestamp {raw[bad]:.6g} at row {bad} is not an epoch time in seconds, "
            "milliseconds or microseconds between 1970 and 9999"
        )
    if low >= _US_FLOOR:
        return (raw // 1000).astype(np.int64)
    if low >= _MS_FLOOR and high < _US_FLOOR:
        return raw.astype(np.int64)
    if high < _MS_FLOOR:
        return (raw * 1000).astype(np.int64)
    raise CandleDataError(
        f"{where}: timestamps mix units (smallest {low:.0f}, largest {high:.0f}); "
        "expected epoch seconds, milliseconds or microseconds throughout"
    )


def infer_timeframe(open_times: npt.ArrayLike, *, where: str = "candles") -> str:
    """The timeframe whose length equals the median spacing of the (sorted, unique) open times.

    Raises ValueError when there are fewer than two distinct times or the spacing matches no
    timeframe of ``TIMEFRAME_MS``; pass ``timeframe=`` explicitly then.
    """
    times = np.unique(np.asarray(open_times, dtype=np.int64))
    if times.size < 2:
        raise CandleDataError(
            f"{where}: cannot infer the timeframe from {times.size} distinct open time(s); "
            "pass timeframe= explicitly"
        )
    spacing = int(np.median(np.diff(times)))
    for name, length in TIMEFRAME_MS.items():
        if length == spacing:
            return name
    raise CandleDataError(
        f"{where}: median candle spacing is {spacing} ms, which matches no timeframe "
        f"({', '.join(f'{k}={v}' for k, v in TIMEFRAME_MS.items())}); pass timeframe= explicitly "
        "or check that the file holds one candle series"
    )


def infer_frame_timeframe(frame: pd.DataFrame, *, where: str = "candles") -> str:
    """``infer_timeframe`` per symbol of a candle frame; all symbols must agree."""
    found = {
        str(symbol): infer_timeframe(group["open_time"].to_numpy(), where=f"{where} [{symbol}]")
        for symbol, group in frame.groupby("symbol", sort=True)
    }
    if not found:
        raise CandleDataError(f"{where}: no candles, so no timeframe to infer")
    if len(set(found.values())) > 1:
        raise CandleDataError(
            f"{where}: symbols have different timeframes {found}; load them apart"
        )
    return next(iter(found.values()))


def empty_frame() -> pd.DataFrame:
    """A candle frame with no rows and the right dtypes."""
    return pd.DataFrame(
        {
            "open_time": pd.Series([], dtype=np.int64),
            **{c: pd.Series([], dtype=np.float64) for c in (*PRICE_COLUMNS, "volume")},
            "symbol": pd.Series([], dtype=str),
        }
    )


def sort_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows in stream order (open time, then symbol), a fresh 0..n-1 index, canonical dtypes."""
    ordered = frame.sort_values(["open_time", "symbol"], kind="stable")
    result = ordered.loc[:, list(CANDLE_COLUMNS)].reset_index(drop=True)
    return result.astype(
        {
            "open_time": np.int64,
            **dict.fromkeys((*PRICE_COLUMNS, "volume"), np.float64),
            "symbol": str,
        }
    )


def to_candles(frame: pd.DataFrame, timeframe: str) -> list[Candle]:
    """The frame's rows as domain Candles, in the frame's row order."""
    missing = [c for c in CANDLE_COLUMNS if c not in frame.columns]
    if missing:
        raise CandleDataError(
            f"candle frame lacks columns {missing}; expected {list(CANDLE_COLUMNS)}"
        )
    if timeframe not in TIMEFRAME_MS:
        raise CandleDataError(
            f"unknown timeframe {timeframe!r}; use one of {', '.join(TIMEFRAME_MS)}"
        )
    columns = zip(
        frame["symbol"].astype(str).tolist(),
        frame["open_time"].to_numpy(dtype=np.int64).tolist(),
        *(frame[c].to_numpy(dtype=np.float64).tolist() for c in (*PRICE_COLUMNS, "volume")),
        strict=True,
    )
    return [Candle(s, timeframe, t, o, h, lo, c, v) for s, t, o, h, lo, c, v in columns]


def from_candles(candles: Iterable[Candle]) -> pd.DataFrame:
    """A candle frame of domain Candles (sorted into stream order; not cleaned).

    Raises ValueError when the candles mix timeframes: a frame holds one timeframe.
    """
    rows = list(candles)
    if not rows:
        return empty_frame()
    timeframes = {c.timeframe for c in rows}
    if len(timeframes) > 1:
        raise CandleDataError(f"candles mix timeframes {sorted(timeframes)}; build one frame each")
    frame = pd.DataFrame(
        {
            "open_time": np.array([c.open_time for c in rows], dtype=np.int64),
            "open": np.array([c.open for c in rows], dtype=np.float64),
            "high": np.array([c.high for c in rows], dtype=np.float64),
            "low": np.array([c.low for c in rows], dtype=np.float64),
            "close": np.array([c.close for c in rows], dtype=np.float64),
            "volume": np.array([c.volume for c in rows], dtype=np.float64),
            "symbol": [c.symbol for c in rows],
        }
    )
    return sort_frame(frame)

"""Multi-timeframe context: features of a higher timeframe resampled from the bot's candles.

The higher timeframe is ``factor`` times the candles' own, its candles aligned to UTC (a 4h
candle of 1h candles opens at 00:00, 04:00, ...). A higher-timeframe candle counts only once
its last base candle has closed, and only when all ``factor`` of its base candles were seen (the
partial one a series starts in is dropped), so a row never sees a candle still forming.

Features, from the last ``window`` closed higher-timeframe candles and the current close:
``htf{factor}_return`` (log return of the last closed candle's close over the one before),
``htf{factor}_sma_ratio_{window}`` (close / their mean close - 1) and
``htf{factor}_range_pos_{window}`` (where the close sits in their high-low range: 0 at the low,
1 at the high, beyond once the close has left it; 0.5 when the range is flat).
"""

from __future__ import annotations

from collections import deque
from types import MappingProxyType

import numpy as np

from kubetrade.features.indicator import (
    GroupParams,
    Indicator,
    ParamValue,
    check_keys,
    param_int,
)
from kubetrade.features.inputs import NAN, Array, Bars, Tick, logs
from kubetrade.features.series import FLAT, nans, rolling_max, rolling_mean, rolling_min


class HigherTimeframe(Indicator):
    """Return, moving-average ratio and range position of a higher timeframe's closed candles."""

    key = "htf"
    defaults = MappingProxyType({"factor": 4, "window": 20})

    def __init__(self, factor: int, window: int) -> None:
        self.factor, self.window = factor, window
        prefix = f"htf{factor}"
        names = [f"{prefix}_return", f"{prefix}_sma_ratio_{window}", f"{prefix}_range_pos_{window}"]
        # Worst case: the series starts on the second base candle of a higher-timeframe candle.
        super().__init__(names, (factor - 1) + max(window, 2) * factor)
        self._closes: deque[float] = deque()
        self._highs: deque[float] = deque()
        self._lows: deque[float] = deque()
        self._bucket = -1
        self._count = 0
        self._high = self._low = NAN

    @classmethod
    def from_params(cls, params: GroupParams) -> HigherTimeframe:
        check_keys(params, ["factor", "window"], cls.key)
        return cls(
            param_int(params, "factor", cls.key, minimum=2),
            param_int(params, "window", cls.key, minimum=2),
        )

    def params(self) -> dict[str, ParamValue]:
        return {"factor": self.factor, "window": self.window}

    def batch(self, bars: Bars) -> list[Array]:
        n = len(bars)
        out = [nans(n) for _ in self.names]
        if n < 2:
            return out
        step = int(bars.open_time[1] - bars.open_time[0])
        period = step * self.factor
        bucket = bars.open_time // period
        last = (bars.open_time + step) % period == 0
        # Index of each bucket's first base candle; a bucket is whole when its last candle is
        # ``factor - 1`` candles after it.
        first_of: dict[int, int] = {}
        for i, b in enumerate(bucket.tolist()):
            first_of.setdefault(b, i)
        ends = [
            i for i in np.flatnonzero(last).tolist() if i - first_of[bucket[i]] == self.factor - 1
        ]
        if not ends:
            return out
        ends_arr = np.array(ends)
        starts = ends_arr - (self.factor - 1)
        closes = bars.close[ends_arr]
        spans = list(zip(starts.tolist(), ends, strict=True))
        highs = np.array([bars.high[s : e + 1].max() for s, e in spans])
        lows = np.array([bars.low[s : e + 1].min() for s, e in spans])
        w = self.window
        returns = np.concatenate(([NAN], np.log(closes[1:] / closes[:-1])))
        mean = rolling_mean(closes, w)
        top, bottom = rolling_max(highs, w), rolling_min(lows, w)
        # Row i sees the closed candles whose last base candle is at or before i.
        seen = np.searchsorted(ends_arr, np.arange(n), side="right") - 1
        valid = seen >= 0
        rows = np.flatnonzero(valid)
        k = seen[valid]
        close = bars.close[rows]
        out[0][rows] = returns[k]
        out[1][rows] = close / mean[k] - 1.0
        span = top[k] - bottom[k]
        flat = span <= FLAT * top[k]
        out[2][rows] = np.where(flat, 0.5, (close - bottom[k]) / np.where(flat, 1.0, span))
        out[2][rows[np.isnan(span)]] = NAN
        return out

    def start(self, tick: Tick) -> None:
        w = self.window
        self._closes = deque(maxlen=max(w, 2))
        self._highs, self._lows = deque(maxlen=w), deque(maxlen=w)
        self._bucket, self._count = -1, 0

    def step(self, tick: Tick, out: list[float]) -> None:
        period = tick.step * self.factor
        bucket = tick.t // period
        if bucket != self._bucket:
            self._bucket, self._count = bucket, 0
            self._high, self._low = tick.h, tick.l
        else:
            self._high, self._low = max(self._high, tick.h), min(self._low, tick.l)
        self._count += 1
        if (tick.t + tick.step) % period == 0 and self._count == self.factor:
            self._closes.append(tick.c)
            self._highs.append(self._high)
            self._lows.append(self._low)
        closes, c, w, o = self._closes, tick.c, self.window, self.offset
        out[o] = logs([closes[-1] / closes[-2]])[0] if len(closes) >= 2 else NAN
        if len(self._highs) < w:
            out[o + 1] = out[o + 2] = NAN
            return
        recent = list(closes)[-w:]
        out[o + 1] = c / (sum(recent) / w) - 1.0
        top, bottom = max(self._highs), min(self._lows)
        span = top - bottom
        out[o + 2] = 0.5 if span <= FLAT * top else (c - bottom) / span

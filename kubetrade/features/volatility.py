"""Range and band groups: Bollinger bands, average true range, Donchian channel and extremes."""

from __future__ import annotations

import math
from collections import deque
from types import MappingProxyType

import numpy as np

from kubetrade.features.indicator import (
    GroupParams,
    Indicator,
    ParamValue,
    check_keys,
    param_float,
    param_int,
    push_max,
    push_min,
)
from kubetrade.features.inputs import NAN, Array, Bars, Tick
from kubetrade.features.series import (
    FLAT,
    ewm,
    rolling_max,
    rolling_min,
    rolling_std,
    safe_ratio,
    settle,
)


class Bollinger(Indicator):
    """Bollinger %B (position of close in the bands, 0.5 = on the mean) and bandwidth / mean."""

    key = "bollinger"
    defaults = MappingProxyType({"window": 20, "width": 2.0})

    def __init__(self, window: int, width: float) -> None:
        super().__init__([f"bb_pct_b_{window}", f"bb_bandwidth_{window}"], window)
        self.window, self.width = window, width
        self._closes: deque[float] = deque()

    @classmethod
    def from_params(cls, params: GroupParams) -> Bollinger:
        check_keys(params, ["window", "width"], cls.key)
        return cls(
            param_int(params, "window", cls.key, minimum=2),
            param_float(params, "width", cls.key),
        )

    def params(self) -> dict[str, ParamValue]:
        return {"window": self.window, "width": self.width}

    def batch(self, bars: Bars) -> list[Array]:
        mean, std = rolling_std(bars.close, self.window)
        flat = std <= FLAT * mean
        span = 2.0 * self.width * np.where(flat, 1.0, std)
        pct_b = np.where(flat, 0.5, (bars.close - mean) / span + 0.5)
        pct_b[np.isnan(mean)] = NAN
        return [pct_b, 2.0 * self.width * std / mean]

    def start(self, tick: Tick) -> None:
        self._closes = deque([tick.c] * self.window, maxlen=self.window)

    def step(self, tick: Tick, out: list[float]) -> None:
        closes, c, n = self._closes, tick.c, self.window
        closes.append(c)
        mean = sum(closes) / n
        # Each deviation squared as it is made: one list, the same products in the same order.
        std = math.sqrt(sum([(d := x - mean) * d for x in closes]) / n)
        o = self.offset
        out[o] = 0.5 if std <= FLAT * mean else (c - mean) / (2.0 * self.width * std) + 0.5
        out[o + 1] = 2.0 * self.width * std / mean


class AverageTrueRange(Indicator):
    """Wilder ATR / close, true range / previous close, and true range / ATR."""

    key = "atr"
    defaults = MappingProxyType({"window": 14})

    def __init__(self, window: int) -> None:
        self.window = window
        self._alpha = 1.0 / window
        super().__init__(
            [f"atr_pct_{window}", "true_range_pct", f"true_range_atr_ratio_{window}"],
            1 + settle(self._alpha),
        )
        self._coefficients = (1.0 - self._alpha, self._alpha, (1.0 - self._alpha) + self._alpha)
        self._atr = 0.0

    @classmethod
    def from_params(cls, params: GroupParams) -> AverageTrueRange:
        check_keys(params, ["window"], cls.key)
        return cls(param_int(params, "window", cls.key, minimum=2))

    def params(self) -> dict[str, ParamValue]:
        return {"window": self.window}

    def batch(self, bars: Bars) -> list[Array]:
        tr = bars.true_range
        atr = ewm(tr, self._alpha)
        return [atr / bars.close, tr / bars.prev_close, safe_ratio(tr, atr, 1.0)]

    def start(self, tick: Tick) -> None:
        self._atr = tick.tr

    def step(self, tick: Tick, out: list[float]) -> None:
        tr = tick.tr
        keep, alpha, norm = self._coefficients
        atr = self._atr
        atr = self._atr = atr if atr == tr else (keep * atr + alpha * tr) / norm
        o = self.offset
        out[o] = atr / tick.c
        out[o + 1] = tr / tick.pc
        out[o + 2] = tr / atr if atr > 0 else 1.0


class Channel(Indicator):
    """Donchian channel width / close, and distance of the close to the highest high and
    lowest low of a longer window."""

    key = "channel"
    defaults = MappingProxyType({"donchian": 20, "extremes": 50})

    def __init__(self, donchian: int, extremes: int) -> None:
        super().__init__(
            [f"donchian_width_{donchian}", f"dist_high_{extremes}", f"dist_low_{extremes}"],
            max(donchian, extremes),
        )
        self.donchian, self.extremes = donchian, extremes
        self._buffers: tuple[deque[float], ...] = ()
        self._extremes = [0.0, 0.0, 0.0, 0.0]

    @classmethod
    def from_params(cls, params: GroupParams) -> Channel:
        check_keys(params, ["donchian", "extremes"], cls.key)
        return cls(param_int(params, "donchian", cls.key), param_int(params, "extremes", cls.key))

    def params(self) -> dict[str, ParamValue]:
        return {"donchian": self.donchian, "extremes": self.extremes}

    def batch(self, bars: Bars) -> list[Array]:
        h, lo, c = bars.high, bars.low, bars.close
        width = (rolling_max(h, self.donchian) - rolling_min(lo, self.donchian)) / c
        return [
            width,
            c / rolling_max(h, self.extremes) - 1.0,
            c / rolling_min(lo, self.extremes) - 1.0,
        ]

    def start(self, tick: Tick) -> None:
        d, e = self.donchian, self.extremes
        self._buffers = (
            deque([tick.h] * d, maxlen=d),
            deque([tick.l] * d, maxlen=d),
            deque([tick.h] * e, maxlen=e),
            deque([tick.l] * e, maxlen=e),
        )
        self._extremes = [tick.h, tick.l, tick.h, tick.l]

    def step(self, tick: Tick, out: list[float]) -> None:
        highs, lows, long_highs, long_lows = self._buffers
        h, lo, c = tick.h, tick.l, tick.c
        extremes = self._extremes
        highest = extremes[0] = push_max(highs, h, extremes[0])
        lowest = extremes[1] = push_min(lows, lo, extremes[1])
        long_highest = extremes[2] = push_max(long_highs, h, extremes[2])
        long_lowest = extremes[3] = push_min(long_lows, lo, extremes[3])
        o = self.offset
        out[o] = (highest - lowest) / c
        out[o + 1] = c / long_highest - 1.0
        out[o + 2] = c / long_lowest - 1.0

"""Per-candle groups: the candle's shape and its place in the day and the week."""

from __future__ import annotations

import math
from types import MappingProxyType

import numpy as np

from kubetrade.features.indicator import GroupParams, Indicator, ParamValue, check_keys
from kubetrade.features.inputs import NAN, Array, Bars, Tick
from kubetrade.features.series import safe_ratio

_TAU = 2.0 * math.pi
# The sines and cosines of every hour and weekday, computed once and looked up by both paths, so
# they give the same bits (numpy's sin may round differently from the C library's math.sin).
_HOURS = np.arange(24, dtype=np.float64) * (_TAU / 24.0)
_DAYS = np.arange(7, dtype=np.float64) * (_TAU / 7.0)
_HOUR_SIN, _HOUR_COS = np.sin(_HOURS).tolist(), np.cos(_HOURS).tolist()
_DAY_SIN, _DAY_COS = np.sin(_DAYS).tolist(), np.cos(_DAYS).tolist()


class CandleShape(Indicator):
    """Range, close position in range, gap from the previous close, body and wicks."""

    key = "candle"
    defaults = MappingProxyType({})

    def __init__(self) -> None:
        super().__init__(
            [
                "range_pct",
                "close_position",
                "gap_open",
                "body_pct",
                "upper_wick_pct",
                "lower_wick_pct",
            ],
            2,
        )

    @classmethod
    def from_params(cls, params: GroupParams) -> CandleShape:
        check_keys(params, [], cls.key)
        return cls()

    def params(self) -> dict[str, ParamValue]:
        return {}

    def batch(self, bars: Bars) -> list[Array]:
        o, h, lo, c = bars.open, bars.high, bars.low, bars.close
        gap = o / bars.prev_close - 1.0
        gap[0] = NAN  # the first candle has no previous close of its own
        return [
            (h - lo) / c,
            safe_ratio(c - lo, h - lo, 0.5),
            gap,
            c / o - 1.0,
            (h - np.maximum(o, c)) / c,
            (np.minimum(o, c) - lo) / c,
        ]

    def start(self, tick: Tick) -> None:
        """Stateless: everything comes from the tick."""

    def step(self, tick: Tick, out: list[float]) -> None:
        o, h, lo, c = tick.o, tick.h, tick.l, tick.c
        span = h - lo
        top, bottom = (o, c) if o > c else (c, o)  # max(o, c), min(o, c) without two calls
        i = self.offset
        out[i] = span / c
        out[i + 1] = (c - lo) / span if span > 0 else 0.5
        out[i + 2] = o / tick.pc - 1.0
        out[i + 3] = c / o - 1.0
        out[i + 4] = (h - top) / c
        out[i + 5] = (bottom - lo) / c


class Calendar(Indicator):
    """UTC hour of day and day of week of the candle's open, as points on the unit circle."""

    key = "calendar"
    defaults = MappingProxyType({})

    def __init__(self) -> None:
        super().__init__(["hour_sin", "hour_cos", "weekday_sin", "weekday_cos"], 1)

    @classmethod
    def from_params(cls, params: GroupParams) -> Calendar:
        check_keys(params, [], cls.key)
        return cls()

    def params(self) -> dict[str, ParamValue]:
        return {}

    def batch(self, bars: Bars) -> list[Array]:
        hour = (bars.open_time // 3_600_000) % 24
        # The epoch was a Thursday: +3 makes Monday 0.
        weekday = (bars.open_time // 86_400_000 + 3) % 7
        return [
            np.take(_HOUR_SIN, hour),
            np.take(_HOUR_COS, hour),
            np.take(_DAY_SIN, weekday),
            np.take(_DAY_COS, weekday),
        ]

    def start(self, tick: Tick) -> None:
        """Stateless: everything comes from the open time."""

    def step(self, tick: Tick, out: list[float]) -> None:
        hour = (tick.t // 3_600_000) % 24
        weekday = (tick.t // 86_400_000 + 3) % 7
        o = self.offset
        out[o : o + 4] = [_HOUR_SIN[hour], _HOUR_COS[hour], _DAY_SIN[weekday], _DAY_COS[weekday]]

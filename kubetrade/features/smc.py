"""Smart-money concepts: fair-value gaps, order blocks, liquidity sweeps, break of structure and
change of character, each counted over the last ``window`` candles.

A pattern is only known once the candle that confirms it has closed: a fair-value gap at the
close of its third candle, an order block at the close of the candle that displaces away from
it, a swing point ``swing`` candles after its extreme, a sweep or a break at the close that
makes it. Everything is computed from the last ``window`` candles alone, by one function both
paths call on the same numbers (so they agree exactly and a restart that replays ``window``
candles is exact), and from comparisons of prices only (so it is scale-free).

Definitions, on candles ``m`` of the window (``o, h, l, c``):

- bullish fair-value gap at ``m``: ``l[m] > h[m-2]`` (bearish: ``h[m] < l[m-2]``); still open
  while no later low of the window reaches ``h[m-2]`` (bearish: no later high reaches
  ``l[m-2]``). Features: open gaps of each side.
- bullish order block: a down candle ``m-1`` (``c < o``) whose next candle closes above its
  high; it holds while no later low breaks its low (bearish mirrored). Features: holding blocks
  of each side.
- swing high at ``j``: ``h[j]`` above the ``swing`` highs on each side (swing low mirrored),
  confirmed at ``j + swing``.
- liquidity sweep: a candle whose low trades below the last confirmed swing low and closes back
  above it (bullish; bearish mirrored at the swing high). Features: sweeps of each side.
- break of structure / change of character: a close beyond the last confirmed swing high
  (bullish) or low (bearish), each swing broken once; a break in the direction of the previous
  break (or the first) is a BOS, against it a CHoCH. Features: the direction (+1, -1, 0 for
  none) of the window's last BOS and of its last CHoCH.
"""

from __future__ import annotations

import math
from collections import deque
from types import MappingProxyType

from kubetrade.features.indicator import (
    GroupParams,
    Indicator,
    ParamValue,
    check_keys,
    param_int,
)
from kubetrade.features.inputs import Array, Bars, Tick
from kubetrade.features.series import nans


def smc_window(
    o: list[float], h: list[float], lo: list[float], c: list[float], swing: int
) -> tuple[float, ...]:
    """The eight SMC features of the window's last candle (see the module docstring)."""
    n = len(c)
    # Lows and highs after each candle (suffix extremes), for "filled"/"broken later" checks.
    later_low = [math.inf] * (n + 1)
    later_high = [-math.inf] * (n + 1)
    for m in range(n - 1, -1, -1):
        low, high = lo[m], h[m]
        later_low[m] = low if low < later_low[m + 1] else later_low[m + 1]
        later_high[m] = high if high > later_high[m + 1] else later_high[m + 1]
    fvg_bull = fvg_bear = ob_bull = ob_bear = 0
    for m in range(2, n):
        if lo[m] > h[m - 2] and later_low[m + 1] > h[m - 2]:
            fvg_bull += 1
        if h[m] < lo[m - 2] and later_high[m + 1] < lo[m - 2]:
            fvg_bear += 1
    for m in range(1, n):
        if c[m - 1] < o[m - 1] and c[m] > h[m - 1] and later_low[m + 1] >= lo[m - 1]:
            ob_bull += 1
        if c[m - 1] > o[m - 1] and c[m] < lo[m - 1] and later_high[m + 1] <= h[m - 1]:
            ob_bear += 1
    # Swings confirmed by candle m: extremes at j = m - swing.
    swing_high = swing_low = math.nan
    high_broken = low_broken = True
    sweep_bull = sweep_bear = 0
    trend = 0
    last_bos = last_choch = 0
    for m in range(n):
        j = m - swing
        if j >= swing:
            if h[j] > max(h[j - swing : j]) and h[j] > max(h[j + 1 : m + 1]):
                swing_high, high_broken = h[j], False
            if lo[j] < min(lo[j - swing : j]) and lo[j] < min(lo[j + 1 : m + 1]):
                swing_low, low_broken = lo[j], False
        if lo[m] < swing_low < c[m]:
            sweep_bull += 1
        if h[m] > swing_high > c[m]:
            sweep_bear += 1
        if not high_broken and c[m] > swing_high:
            high_broken = True
            if trend < 0:
                last_choch = 1
            else:
                last_bos = 1
            trend = 1
        if not low_broken and c[m] < swing_low:
            low_broken = True
            if trend > 0:
                last_choch = -1
            else:
                last_bos = -1
            trend = -1
    return (
        float(fvg_bull),
        float(fvg_bear),
        float(ob_bull),
        float(ob_bear),
        float(sweep_bull),
        float(sweep_bear),
        float(last_bos),
        float(last_choch),
    )


class SmartMoney(Indicator):
    """Fair-value gaps, order blocks, liquidity sweeps, BOS and CHoCH over a window."""

    key = "smc"
    defaults = MappingProxyType({"window": 50, "swing": 3})

    def __init__(self, window: int, swing: int) -> None:
        if window < 2 * swing + 3:
            raise ValueError(
                f"feature group 'smc': window ({window}) must be at least 2 * swing + 3 "
                f"({2 * swing + 3}) to hold a confirmed swing and a candle after it"
            )
        kinds = ("fvg_bull", "fvg_bear", "ob_bull", "ob_bear", "sweep_bull", "sweep_bear")
        names = [f"smc_{k}_{window}" for k in kinds]
        names += [f"smc_bos_{window}_{swing}", f"smc_choch_{window}_{swing}"]
        super().__init__(names, window)
        self.window, self.swing = window, swing
        self._candles: deque[tuple[float, float, float, float]] = deque(maxlen=window)

    @classmethod
    def from_params(cls, params: GroupParams) -> SmartMoney:
        check_keys(params, ["window", "swing"], cls.key)
        return cls(
            param_int(params, "window", cls.key, minimum=5),
            param_int(params, "swing", cls.key, minimum=1),
        )

    def params(self) -> dict[str, ParamValue]:
        return {"window": self.window, "swing": self.swing}

    def batch(self, bars: Bars) -> list[Array]:
        n, w = len(bars), self.window
        out = [nans(n) for _ in self.names]
        o, h = bars.open.tolist(), bars.high.tolist()
        lo, c = bars.low.tolist(), bars.close.tolist()
        for i in range(w - 1, n):
            start = i - w + 1
            values = smc_window(
                o[start : i + 1], h[start : i + 1], lo[start : i + 1], c[start : i + 1], self.swing
            )
            for column, value in zip(out, values, strict=True):
                column[i] = value
        return out

    def start(self, tick: Tick) -> None:
        self._candles = deque(maxlen=self.window)

    def step(self, tick: Tick, out: list[float]) -> None:
        candles = self._candles
        candles.append((tick.o, tick.h, tick.l, tick.c))
        if len(candles) < self.window:
            return
        o, h, lo, c = (list(x) for x in zip(*candles, strict=True))
        values = smc_window(o, h, lo, c, self.swing)
        out[self.offset : self.offset + len(values)] = values

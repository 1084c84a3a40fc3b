"""Bounded oscillators: RSI, stochastic, Williams %R, commodity channel index."""

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
    param_windows,
    push_max,
    push_min,
)
from kubetrade.features.inputs import Array, Bars, Tick
from kubetrade.features.series import (
    FLAT,
    ewm,
    nans,
    placed,
    rolling_max,
    rolling_mean,
    rolling_min,
    safe_ratio,
    settle,
    sliding_windows,
    window_sums,
    window_sums_of,
)


class Rsi(Indicator):
    """Wilder's RSI scaled to [0, 1]: avg gain / (avg gain + avg loss)."""

    key = "rsi"
    defaults = MappingProxyType({"windows": (7, 14)})

    def __init__(self, windows: tuple[int, ...]) -> None:
        super().__init__([f"rsi_{w}" for w in windows], 1 + settle(1.0 / max(windows)))
        self.windows = windows
        self._coefficients = [(1.0 - 1.0 / w, 1.0 / w, (1.0 - 1.0 / w) + 1.0 / w) for w in windows]
        self._averages: list[list[float]] = []

    @classmethod
    def from_params(cls, params: GroupParams) -> Rsi:
        check_keys(params, ["windows"], cls.key)
        return cls(param_windows(params, "windows", cls.key, minimum=2))

    def params(self) -> dict[str, ParamValue]:
        return {"windows": self.windows}

    def batch(self, bars: Bars) -> list[Array]:
        change = bars.close - bars.prev_close
        gains, losses = np.maximum(change, 0.0), np.maximum(-change, 0.0)
        values = []
        for w in self.windows:
            gain, loss = ewm(gains, 1.0 / w), ewm(losses, 1.0 / w)
            values.append(safe_ratio(gain, gain + loss, 0.5))
        return values

    def start(self, tick: Tick) -> None:
        change = tick.c - tick.pc
        self._averages = [[max(change, 0.0), max(-change, 0.0)] for _ in self.windows]

    def step(self, tick: Tick, out: list[float]) -> None:
        change = tick.c - tick.pc
        gain, loss = max(change, 0.0), max(-change, 0.0)
        o = self.offset
        for i, (keep, alpha, norm) in enumerate(self._coefficients):
            average = self._averages[i]
            g, lo = average
            g = g if g == gain else (keep * g + alpha * gain) / norm
            lo = lo if lo == loss else (keep * lo + alpha * loss) / norm
            average[0], average[1] = g, lo
            total = g + lo
            out[o + i] = g / total if total > 0 else 0.5


class Stochastic(Indicator):
    """Stochastic %K (close in the high-low range of k candles, 0..1) and %D (mean of d %K)."""

    key = "stochastic"
    defaults = MappingProxyType({"k": 14, "d": 3})

    def __init__(self, k: int, d: int) -> None:
        super().__init__([f"stoch_k_{k}", f"stoch_d_{k}_{d}"], k + d - 1)
        self.k, self.d = k, d
        self._highs: deque[float] = deque()
        self._lows: deque[float] = deque()
        self._ks: deque[float] = deque()
        self._highest = self._lowest = 0.0

    @classmethod
    def from_params(cls, params: GroupParams) -> Stochastic:
        check_keys(params, ["k", "d"], cls.key)
        return cls(param_int(params, "k", cls.key), param_int(params, "d", cls.key))

    def params(self) -> dict[str, ParamValue]:
        return {"k": self.k, "d": self.d}

    def batch(self, bars: Bars) -> list[Array]:
        highest, lowest = rolling_max(bars.high, self.k), rolling_min(bars.low, self.k)
        pct_k = safe_ratio(bars.close - lowest, highest - lowest, 0.5)
        pct_d = nans(len(bars))
        pct_d[self.k - 1 :] = rolling_mean(pct_k[self.k - 1 :], self.d)
        return [pct_k, pct_d]

    def start(self, tick: Tick) -> None:
        self._highs = deque([tick.h] * self.k, maxlen=self.k)
        self._lows = deque([tick.l] * self.k, maxlen=self.k)
        self._ks = deque([0.5] * self.d, maxlen=self.d)
        self._highest, self._lowest = tick.h, tick.l

    def step(self, tick: Tick, out: list[float]) -> None:
        highest = self._highest = push_max(self._highs, tick.h, self._highest)
        lowest = self._lowest = push_min(self._lows, tick.l, self._lowest)
        pct_k = (tick.c - lowest) / (highest - lowest) if highest > lowest else 0.5
        self._ks.append(pct_k)
        out[self.offset] = pct_k
        out[self.offset + 1] = sum(self._ks) / self.d


class WilliamsR(Indicator):
    """Williams %R in [-1, 0]: -(highest high - close) / (highest high - lowest low)."""

    key = "williams_r"
    defaults = MappingProxyType({"window": 28})

    def __init__(self, window: int) -> None:
        super().__init__([f"williams_r_{window}"], window)
        self.window = window
        self._highs: deque[float] = deque()
        self._lows: deque[float] = deque()
        self._highest = self._lowest = 0.0

    @classmethod
    def from_params(cls, params: GroupParams) -> WilliamsR:
        check_keys(params, ["window"], cls.key)
        return cls(param_int(params, "window", cls.key))

    def params(self) -> dict[str, ParamValue]:
        return {"window": self.window}

    def batch(self, bars: Bars) -> list[Array]:
        highest = rolling_max(bars.high, self.window)
        lowest = rolling_min(bars.low, self.window)
        return [-safe_ratio(highest - bars.close, highest - lowest, 0.5)]

    def start(self, tick: Tick) -> None:
        self._highs = deque([tick.h] * self.window, maxlen=self.window)
        self._lows = deque([tick.l] * self.window, maxlen=self.window)
        self._highest, self._lowest = tick.h, tick.l

    def step(self, tick: Tick, out: list[float]) -> None:
        highest = self._highest = push_max(self._highs, tick.h, self._highest)
        lowest = self._lowest = push_min(self._lows, tick.l, self._lowest)
        out[self.offset] = -((highest - tick.c) / (highest - lowest)) if highest > lowest else -0.5


class CommodityChannel(Indicator):
    """CCI / 100: (typical - its mean) / (0.015 * mean absolute deviation) / 100."""

    key = "cci"
    defaults = MappingProxyType({"window": 20})

    def __init__(self, window: int) -> None:
        super().__init__([f"cci_{window}"], window)
        self.window = window
        self._typical: deque[float] = deque()

    @classmethod
    def from_params(cls, params: GroupParams) -> CommodityChannel:
        check_keys(params, ["window"], cls.key)
        return cls(param_int(params, "window", cls.key, minimum=2))

    def params(self) -> dict[str, ParamValue]:
        return {"window": self.window}

    def batch(self, bars: Bars) -> list[Array]:
        tp, w = bars.typical, self.window
        view = sliding_windows(tp, w)
        if view is None:
            return [nans(len(bars))]
        mean = window_sums(view) / w
        deviation = window_sums_of(view, lambda column: np.abs(column - mean)) / w
        flat = ~(deviation > FLAT * mean)
        cci = np.where(flat, 0.0, (tp[w - 1 :] - mean) / (1.5 * np.where(flat, 1.0, deviation)))
        return [placed(cci, len(bars), w)]

    def start(self, tick: Tick) -> None:
        typical = (tick.h + tick.l + tick.c) / 3.0
        self._typical = deque([typical] * self.window, maxlen=self.window)

    def step(self, tick: Tick, out: list[float]) -> None:
        typical = (tick.h + tick.l + tick.c) / 3.0
        buffer, n = self._typical, self.window
        buffer.append(typical)
        mean = sum(buffer) / n
        deviation = sum([abs(x - mean) for x in buffer]) / n
        out[self.offset] = (typical - mean) / (1.5 * deviation) if deviation > FLAT * mean else 0.0

"""Return-based groups: log returns, realized volatility, rate of change, efficiency."""

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
    param_windows,
)
from kubetrade.features.inputs import Array, Bars, Tick, logs
from kubetrade.features.series import lagged, rolling_sum, safe_ratio


class LogReturns(Indicator):
    """ln(close / close k candles ago)."""

    key = "log_return"
    defaults = MappingProxyType({"windows": (1, 2, 4, 8, 24)})

    def __init__(self, windows: tuple[int, ...]) -> None:
        super().__init__([f"log_return_{w}" for w in windows], max(windows) + 1)
        self.windows = windows
        self._closes: deque[float] = deque()
        self._lags = tuple(-1 - w for w in windows)

    @classmethod
    def from_params(cls, params: GroupParams) -> LogReturns:
        check_keys(params, ["windows"], cls.key)
        return cls(param_windows(params, "windows", cls.key))

    def params(self) -> dict[str, ParamValue]:
        return {"windows": self.windows}

    def batch(self, bars: Bars) -> list[Array]:
        return [np.log(bars.close / lagged(bars.close, w)) for w in self.windows]

    def start(self, tick: Tick) -> None:
        self._closes = deque([tick.c] * (max(self.windows) + 1), maxlen=max(self.windows) + 1)

    def step(self, tick: Tick, out: list[float]) -> None:
        closes, c = self._closes, tick.c
        closes.append(c)
        o = self.offset
        out[o : o + len(self._lags)] = logs([c / closes[k] for k in self._lags])


class RealizedVolatility(Indicator):
    """sqrt(mean of squared 1-candle log returns) per window, and short/long window ratio."""

    key = "realized_vol"
    defaults = MappingProxyType({"windows": (6, 12, 24, 48)})

    def __init__(self, windows: tuple[int, ...]) -> None:
        ordered = tuple(sorted(windows))
        names = [f"realized_vol_{w}" for w in windows]
        if len(windows) > 1:
            names.append(f"realized_vol_ratio_{ordered[0]}_{ordered[-1]}")
        super().__init__(names, max(windows) + 1)
        self.windows = windows
        self._short = windows.index(ordered[0])
        self._long = windows.index(ordered[-1])
        self._squares: list[deque[float]] = []

    @classmethod
    def from_params(cls, params: GroupParams) -> RealizedVolatility:
        check_keys(params, ["windows"], cls.key)
        return cls(param_windows(params, "windows", cls.key))

    def params(self) -> dict[str, ParamValue]:
        return {"windows": self.windows}

    def batch(self, bars: Bars) -> list[Array]:
        squares = bars.log_return * bars.log_return
        vols = [np.sqrt(rolling_sum(squares, w) / w) for w in self.windows]
        if len(self.windows) > 1:
            vols.append(safe_ratio(vols[self._short], vols[self._long], 1.0))
        return vols

    def start(self, tick: Tick) -> None:
        self._squares = [deque([0.0] * w, maxlen=w) for w in self.windows]

    def step(self, tick: Tick, out: list[float]) -> None:
        square = tick.r1 * tick.r1
        vols = []
        for buffer in self._squares:
            buffer.append(square)
            vols.append(math.sqrt(sum(buffer) / len(buffer)))
        if len(vols) > 1:
            long = vols[self._long]
            vols.append(vols[self._short] / long if long > 0 else 1.0)
        out[self.offset : self.offset + len(vols)] = vols


class RateOfChange(Indicator):
    """close / close k candles ago - 1."""

    key = "roc"
    defaults = MappingProxyType({"windows": (3, 6, 12, 48)})

    def __init__(self, windows: tuple[int, ...]) -> None:
        super().__init__([f"roc_{w}" for w in windows], max(windows) + 1)
        self.windows = windows
        self._closes: deque[float] = deque()
        self._lags = tuple(-1 - w for w in windows)

    @classmethod
    def from_params(cls, params: GroupParams) -> RateOfChange:
        check_keys(params, ["windows"], cls.key)
        return cls(param_windows(params, "windows", cls.key))

    def params(self) -> dict[str, ParamValue]:
        return {"windows": self.windows}

    def batch(self, bars: Bars) -> list[Array]:
        return [bars.close / lagged(bars.close, w) - 1.0 for w in self.windows]

    def start(self, tick: Tick) -> None:
        self._closes = deque([tick.c] * (max(self.windows) + 1), maxlen=max(self.windows) + 1)

    def step(self, tick: Tick, out: list[float]) -> None:
        closes, c = self._closes, tick.c
        closes.append(c)
        o = self.offset
        for i, k in enumerate(self._lags):
            out[o + i] = c / closes[k] - 1.0


class Efficiency(Indicator):
    """Kaufman efficiency ratio: |net close change| / sum of |close changes| over a window."""

    key = "efficiency"
    defaults = MappingProxyType({"windows": (10, 30)})

    def __init__(self, windows: tuple[int, ...]) -> None:
        super().__init__([f"efficiency_{w}" for w in windows], max(windows) + 1)
        self.windows = windows
        self._pairs: list[tuple[deque[float], deque[float]]] = []

    @classmethod
    def from_params(cls, params: GroupParams) -> Efficiency:
        check_keys(params, ["windows"], cls.key)
        return cls(param_windows(params, "windows", cls.key))

    def params(self) -> dict[str, ParamValue]:
        return {"windows": self.windows}

    def batch(self, bars: Bars) -> list[Array]:
        change = bars.close - bars.prev_close
        distance = np.abs(change)
        return [
            safe_ratio(np.abs(rolling_sum(change, w)), rolling_sum(distance, w), 0.0)
            for w in self.windows
        ]

    def start(self, tick: Tick) -> None:
        # (changes, distances) per window, paired once rather than zipped per candle.
        self._pairs = [
            (deque([0.0] * w, maxlen=w), deque([0.0] * w, maxlen=w)) for w in self.windows
        ]

    def step(self, tick: Tick, out: list[float]) -> None:
        change = tick.c - tick.pc
        distance = abs(change)
        o = self.offset
        for i, (changes, paths) in enumerate(self._pairs):
            changes.append(change)
            paths.append(distance)
            path = sum(paths)
            out[o + i] = abs(sum(changes)) / path if path > 0 else 0.0

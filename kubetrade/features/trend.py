"""Trend groups: price against moving averages (simple, exponential, MACD) and directional
movement."""

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
)
from kubetrade.features.inputs import Array, Bars, Tick
from kubetrade.features.series import ewm, rolling_mean, safe_ratio, settle


class SmaRatio(Indicator):
    """close / simple moving average of close - 1."""

    key = "sma_ratio"
    defaults = MappingProxyType({"windows": (5, 10, 20, 50, 100)})

    def __init__(self, windows: tuple[int, ...]) -> None:
        super().__init__([f"sma_ratio_{w}" for w in windows], max(windows))
        self.windows = windows
        self._buffers: list[deque[float]] = []

    @classmethod
    def from_params(cls, params: GroupParams) -> SmaRatio:
        check_keys(params, ["windows"], cls.key)
        return cls(param_windows(params, "windows", cls.key))

    def params(self) -> dict[str, ParamValue]:
        return {"windows": self.windows}

    def batch(self, bars: Bars) -> list[Array]:
        return [bars.close / rolling_mean(bars.close, w) - 1.0 for w in self.windows]

    def start(self, tick: Tick) -> None:
        self._buffers = [deque([tick.c] * w, maxlen=w) for w in self.windows]

    def step(self, tick: Tick, out: list[float]) -> None:
        c = tick.c
        values = []
        for buffer in self._buffers:
            buffer.append(c)
            values.append(c / (sum(buffer) / len(buffer)) - 1.0)
        out[self.offset : self.offset + len(values)] = values


class EmaRatio(Indicator):
    """close / exponential moving average of close (alpha = 2 / (span + 1)) - 1."""

    key = "ema_ratio"
    defaults = MappingProxyType({"spans": (9, 12, 26)})

    def __init__(self, spans: tuple[int, ...]) -> None:
        self.alphas = tuple(2.0 / (s + 1.0) for s in spans)
        super().__init__([f"ema_ratio_{s}" for s in spans], 1 + max(map(settle, self.alphas)))
        self.spans = spans
        self._emas: list[float] = []
        self._coefficients = [(1.0 - a, a, (1.0 - a) + a) for a in self.alphas]

    @classmethod
    def from_params(cls, params: GroupParams) -> EmaRatio:
        check_keys(params, ["spans"], cls.key)
        return cls(param_windows(params, "spans", cls.key))

    def params(self) -> dict[str, ParamValue]:
        return {"spans": self.spans}

    def batch(self, bars: Bars) -> list[Array]:
        return [bars.close / ewm(bars.close, a) - 1.0 for a in self.alphas]

    def start(self, tick: Tick) -> None:
        self._emas = [tick.c] * len(self.alphas)

    def step(self, tick: Tick, out: list[float]) -> None:
        c = tick.c
        emas = self._emas
        o = self.offset
        for i, (keep, alpha, norm) in enumerate(self._coefficients):
            e = emas[i]
            e = emas[i] = e if e == c else (keep * e + alpha * c) / norm
            out[o + i] = c / e - 1.0


class Macd(Indicator):
    """MACD line, signal and histogram, each divided by the close."""

    key = "macd"
    defaults = MappingProxyType({"fast": 12, "slow": 26, "signal": 9})

    def __init__(self, fast: int, slow: int, signal: int) -> None:
        if fast >= slow:
            raise ValueError(f"feature group 'macd': fast ({fast}) must be below slow ({slow})")
        self.fast, self.slow, self.signal = fast, slow, signal
        self._alphas = (2.0 / (fast + 1.0), 2.0 / (slow + 1.0), 2.0 / (signal + 1.0))
        suffix = f"{fast}_{slow}_{signal}"
        super().__init__(
            [f"macd_line_{suffix}", f"macd_signal_{suffix}", f"macd_hist_{suffix}"],
            1 + settle(self._alphas[1]) + settle(self._alphas[2]),
        )
        self._state = [0.0, 0.0, 0.0]
        self._coefficients = [(1.0 - a, a, (1.0 - a) + a) for a in self._alphas]

    @classmethod
    def from_params(cls, params: GroupParams) -> Macd:
        check_keys(params, ["fast", "slow", "signal"], cls.key)
        return cls(*(param_int(params, k, cls.key) for k in ("fast", "slow", "signal")))

    def params(self) -> dict[str, ParamValue]:
        return {"fast": self.fast, "slow": self.slow, "signal": self.signal}

    def batch(self, bars: Bars) -> list[Array]:
        c = bars.close
        line = ewm(c, self._alphas[0]) - ewm(c, self._alphas[1])
        signal = ewm(line, self._alphas[2])
        return [line / c, signal / c, (line - signal) / c]

    def start(self, tick: Tick) -> None:
        self._state = [tick.c, tick.c, 0.0]

    def step(self, tick: Tick, out: list[float]) -> None:
        c = tick.c
        state = self._state
        (kf, af, nf), (ks, as_, ns), (kg, ag, ng) = self._coefficients
        fast, slow, signal = state
        fast = fast if fast == c else (kf * fast + af * c) / nf
        slow = slow if slow == c else (ks * slow + as_ * c) / ns
        line = fast - slow
        signal = signal if signal == line else (kg * signal + ag * line) / ng
        state[0], state[1], state[2] = fast, slow, signal
        o = self.offset
        out[o] = line / c
        out[o + 1] = signal / c
        out[o + 2] = (line - signal) / c


class DirectionalMovement(Indicator):
    """(+DI - -DI) / (+DI + -DI) with Wilder smoothing, in [-1, 1] (the signed DX)."""

    key = "dmi"
    defaults = MappingProxyType({"window": 14})

    def __init__(self, window: int) -> None:
        self.window = window
        alpha = 1.0 / window
        super().__init__([f"dmi_{window}"], 1 + settle(alpha))
        self._coefficients = (1.0 - alpha, alpha, (1.0 - alpha) + alpha)
        self._plus = self._minus = 0.0

    @classmethod
    def from_params(cls, params: GroupParams) -> DirectionalMovement:
        check_keys(params, ["window"], cls.key)
        return cls(param_int(params, "window", cls.key, minimum=2))

    def params(self) -> dict[str, ParamValue]:
        return {"window": self.window}

    def batch(self, bars: Bars) -> list[Array]:
        up, down = bars.high - bars.prev_high, bars.prev_low - bars.low
        plus = np.where((up > down) & (up > 0), up, 0.0)
        minus = np.where((down > up) & (down > 0), down, 0.0)
        alpha = self._coefficients[1]
        smooth_plus, smooth_minus = ewm(plus, alpha), ewm(minus, alpha)
        total = smooth_plus + smooth_minus
        return [safe_ratio(smooth_plus - smooth_minus, total, 0.0)]

    def start(self, tick: Tick) -> None:
        self._plus = self._minus = 0.0

    def step(self, tick: Tick, out: list[float]) -> None:
        up, down = tick.h - tick.ph, tick.pl - tick.l
        plus = up if up > down and up > 0 else 0.0
        minus = down if down > up and down > 0 else 0.0
        keep, alpha, norm = self._coefficients
        p, m = self._plus, self._minus
        p = self._plus = p if p == plus else (keep * p + alpha * plus) / norm
        m = self._minus = m if m == minus else (keep * m + alpha * minus) / norm
        total = p + m
        out[self.offset] = (p - m) / total if total > 0 else 0.0

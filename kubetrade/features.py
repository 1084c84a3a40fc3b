"""Features: one definition, two paths (vectorized for training, incremental for streaming).

Every indicator group is one class with ``batch`` (numpy/pandas over a whole series, for
training and backtests) and ``start``/``step`` (one candle at a time with ring buffers and
recursive state, for the inference worker). Groups are registered in one ordered registry;
a ``FeatureSpec`` names the groups' parameters, and the feature names, their order and the
warm-up follow from it. Both paths agree to ``1e-9 * max(1, |value|)`` (tested on real data).

All features are scale-free (returns, ratios to price, normalized oscillators), so a model
trained at one price level works at another.

Warm-up: ``spec.warmup`` candles make every feature defined *and settled*: windowed features
need their window, and recursive ones (EMA, Wilder smoothing) run until the influence of the
series start has decayed below ``SETTLE_TOLERANCE``. So from candle ``warmup`` on, a row depends
only on the last ``warmup`` candles (up to that tolerance): training rows, backtest rows and
the rows of an inference worker that replayed just ``warmup`` candles are the same numbers.
``compute_features`` returns NaN rows before index ``warmup - 1``; ``FeatureEngine.update``
returns None for the first ``warmup - 1`` candles.

Restarting a ``FeatureEngine``: replay the last ``spec.warmup`` candles (``warm_up``); there is
no state serialization, as the replay reproduces the state to the tolerance above.

Conventions: the candle before the first one is taken to close at the first open (so the first
candle has a return, a true range and a gap of its own; these feed only the settling part).
Series must be gap-free (the cleaner fills gaps with flat zero-volume candles; the engine does
the same for gaps in a stream), so features see the same candles in training and serving.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from kubetrade.domain import Candle, timeframe_ms

log = logging.getLogger(__name__)

FEATURE_VERSION = "1"
# A recursive filter counts as settled once the weight left on its seed is below this.
SETTLE_TOLERANCE = 1e-10
# Dispersions below this fraction of the level are rounding noise: treat the window as flat.
_FLAT = 1e-12

Array = npt.NDArray[np.float64]
ParamValue = int | float | tuple[int, ...]
GroupParams = Mapping[str, ParamValue]
_NAN = math.nan
_TAU = 2.0 * math.pi


class FeatureMismatchError(ValueError):
    """The features a model expects differ from the features this code computes."""


# --------------------------------------------------------------------------------------------
# Inputs of the two paths


@dataclass(frozen=True)
class Bars:
    """A gap-free candle series of one symbol as float64 arrays (the batch input)."""

    open_time: npt.NDArray[np.int64]
    open: Array
    high: Array
    low: Array
    close: Array
    volume: Array

    def __len__(self) -> int:
        return int(self.close.shape[0])

    @cached_property
    def prev_close(self) -> Array:
        """Close of the previous candle; the first candle's own open stands in for it."""
        return np.concatenate((self.open[:1], self.close[:-1]))

    @cached_property
    def prev_high(self) -> Array:
        """High of the previous candle (the first candle's own high for the first)."""
        return np.concatenate((self.high[:1], self.high[:-1]))

    @cached_property
    def prev_low(self) -> Array:
        """Low of the previous candle (the first candle's own low for the first)."""
        return np.concatenate((self.low[:1], self.low[:-1]))

    @cached_property
    def log_return(self) -> Array:
        """ln(close / previous close)."""
        return np.log(self.close / self.prev_close)

    @cached_property
    def true_range(self) -> Array:
        """max(high, previous close) - min(low, previous close)."""
        pc = self.prev_close
        return np.maximum(self.high, pc) - np.minimum(self.low, pc)

    @cached_property
    def typical(self) -> Array:
        """(high + low + close) / 3."""
        return (self.high + self.low + self.close) / 3.0


class Tick:
    """The current candle and its derived values (the incremental input), reused per candle."""

    __slots__ = ("c", "h", "l", "o", "pc", "ph", "pl", "r1", "t", "tr", "v")

    def __init__(self) -> None:
        self.t = 0
        self.o = self.h = self.l = self.c = self.v = _NAN
        self.pc = self.ph = self.pl = self.r1 = self.tr = _NAN


# --------------------------------------------------------------------------------------------
# Batch helpers: every windowed value sits at the window's last row; rows before are NaN.


def _nan(n: int) -> Array:
    return np.full(n, _NAN)


def _windows(x: Array, w: int) -> Array | None:
    """Rolling windows of x as rows (a view), or None when x is shorter than w."""
    return sliding_window_view(x, w) if x.shape[0] >= w else None


def _place(values: Array, n: int, w: int) -> Array:
    out = _nan(n)
    out[w - 1 :] = values
    return out


def _rolling(x: Array, w: int, reduce: Callable[[Array], Array]) -> Array:
    view = _windows(x, w)
    return _nan(x.shape[0]) if view is None else _place(reduce(view), x.shape[0], w)


def _rolling_sum(x: Array, w: int) -> Array:
    return _rolling(x, w, lambda v: v.sum(axis=1))


def _rolling_mean(x: Array, w: int) -> Array:
    return _rolling(x, w, lambda v: v.sum(axis=1) / w)


def _rolling_max(x: Array, w: int) -> Array:
    return _rolling(x, w, lambda v: v.max(axis=1))


def _rolling_min(x: Array, w: int) -> Array:
    return _rolling(x, w, lambda v: v.min(axis=1))


def _rolling_std(x: Array, w: int) -> tuple[Array, Array]:
    """Rolling mean and population standard deviation, two-pass per window."""
    view = _windows(x, w)
    if view is None:
        return _nan(x.shape[0]), _nan(x.shape[0])
    mean = view.sum(axis=1) / w
    deviation = view - mean[:, None]
    std = np.sqrt((deviation * deviation).sum(axis=1) / w)
    return _place(mean, x.shape[0], w), _place(std, x.shape[0], w)


def _lag(x: Array, k: int) -> Array:
    out = _nan(x.shape[0])
    out[k:] = x[: x.shape[0] - k]
    return out


def _ewm(x: Array, alpha: float) -> Array:
    """y[0] = x[0]; y[t] = ((1-a) y[t-1] + a x[t]) / ((1-a) + a): pandas' adjust=False EWM."""
    smoothed: Array = pd.Series(x).ewm(alpha=alpha, adjust=False).mean().to_numpy(np.float64)
    return smoothed


def _settle(alpha: float) -> int:
    """Candles until a recursive filter's seed weight (1-alpha)^k is below the tolerance."""
    return math.ceil(math.log(SETTLE_TOLERANCE) / math.log(1.0 - alpha))


def _safe_ratio(num: Array, den: Array, fallback: float) -> Array:
    """num/den where den > 0, else fallback (NaN stays NaN)."""
    ratio = np.where(den > 0, num / np.where(den > 0, den, 1.0), fallback)
    ratio[np.isnan(den) | np.isnan(num)] = _NAN
    return ratio


# --------------------------------------------------------------------------------------------
# Indicator groups


class Indicator(ABC):
    """One group of features: names, warm-up, and its batch and incremental computations."""

    key: ClassVar[str]
    defaults: ClassVar[Mapping[str, ParamValue]]

    def __init__(self, names: Sequence[str], warmup: int) -> None:
        self.names = tuple(names)
        self.warmup = warmup
        self.offset = 0

    @classmethod
    @abstractmethod
    def from_params(cls, params: GroupParams) -> Indicator:
        """Build from validated-or-not parameters; raise ValueError naming a bad one."""

    @abstractmethod
    def params(self) -> dict[str, ParamValue]:
        """The normalized parameters (what the spec stores and hashes)."""

    @abstractmethod
    def batch(self, bars: Bars) -> list[Array]:
        """One array per name over the whole series (NaN where undefined)."""

    @abstractmethod
    def start(self, tick: Tick) -> None:
        """Reset the incremental state on the first candle (buffers are filled with it)."""

    @abstractmethod
    def step(self, tick: Tick, out: list[float]) -> None:
        """Consume one candle; write this group's values at ``out[offset:]``."""


def _param_windows(params: GroupParams, name: str, group: str, minimum: int = 1) -> tuple[int, ...]:
    value = params.get(name)
    items = value if isinstance(value, list | tuple) else None
    if (
        not items
        or not all(isinstance(w, int) and not isinstance(w, bool) for w in items)
        or min(items) < minimum
        or len(set(items)) != len(items)
    ):
        raise ValueError(
            f"feature group {group!r}: {name!r} must be a list of distinct integers >= {minimum}, "
            f"got {value!r}"
        )
    return tuple(int(w) for w in items)


def _param_int(params: GroupParams, name: str, group: str, minimum: int = 1) -> int:
    value = params.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(
            f"feature group {group!r}: {name!r} must be an integer >= {minimum}, got {value!r}"
        )
    return value


def _param_float(params: GroupParams, name: str, group: str) -> float:
    value = params.get(name)
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
        raise ValueError(
            f"feature group {group!r}: {name!r} must be a positive number, got {value!r}"
        )
    return float(value)


def _check_keys(params: GroupParams, allowed: Iterable[str], group: str) -> None:
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(
            f"feature group {group!r}: unknown parameters {unknown}; known: {sorted(allowed)}"
        )


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
        _check_keys(params, ["windows"], cls.key)
        return cls(_param_windows(params, "windows", cls.key))

    def params(self) -> dict[str, ParamValue]:
        return {"windows": self.windows}

    def batch(self, bars: Bars) -> list[Array]:
        return [np.log(bars.close / _lag(bars.close, w)) for w in self.windows]

    def start(self, tick: Tick) -> None:
        self._closes = deque([tick.c] * (max(self.windows) + 1), maxlen=max(self.windows) + 1)

    def step(self, tick: Tick, out: list[float]) -> None:
        closes, c, log = self._closes, tick.c, math.log
        closes.append(c)
        out[self.offset : self.offset + len(self._lags)] = [log(c / closes[k]) for k in self._lags]


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
        _check_keys(params, ["windows"], cls.key)
        return cls(_param_windows(params, "windows", cls.key))

    def params(self) -> dict[str, ParamValue]:
        return {"windows": self.windows}

    def batch(self, bars: Bars) -> list[Array]:
        squares = bars.log_return * bars.log_return
        vols = [np.sqrt(_rolling_sum(squares, w) / w) for w in self.windows]
        if len(self.windows) > 1:
            vols.append(_safe_ratio(vols[self._short], vols[self._long], 1.0))
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
        _check_keys(params, ["windows"], cls.key)
        return cls(_param_windows(params, "windows", cls.key))

    def params(self) -> dict[str, ParamValue]:
        return {"windows": self.windows}

    def batch(self, bars: Bars) -> list[Array]:
        return [bars.close / _rolling_mean(bars.close, w) - 1.0 for w in self.windows]

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
        super().__init__([f"ema_ratio_{s}" for s in spans], 1 + max(map(_settle, self.alphas)))
        self.spans = spans
        self._emas: list[float] = []
        self._coefficients = [(1.0 - a, a, (1.0 - a) + a) for a in self.alphas]

    @classmethod
    def from_params(cls, params: GroupParams) -> EmaRatio:
        _check_keys(params, ["spans"], cls.key)
        return cls(_param_windows(params, "spans", cls.key))

    def params(self) -> dict[str, ParamValue]:
        return {"spans": self.spans}

    def batch(self, bars: Bars) -> list[Array]:
        return [bars.close / _ewm(bars.close, a) - 1.0 for a in self.alphas]

    def start(self, tick: Tick) -> None:
        self._emas = [tick.c] * len(self.alphas)

    def step(self, tick: Tick, out: list[float]) -> None:
        c = tick.c
        emas = self._emas
        for i, (keep, alpha, norm) in enumerate(self._coefficients):
            e = emas[i]
            emas[i] = e if e == c else (keep * e + alpha * c) / norm
        out[self.offset : self.offset + len(emas)] = [c / e - 1.0 for e in emas]


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
            1 + _settle(self._alphas[1]) + _settle(self._alphas[2]),
        )
        self._state = [0.0, 0.0, 0.0]
        self._coefficients = [(1.0 - a, a, (1.0 - a) + a) for a in self._alphas]

    @classmethod
    def from_params(cls, params: GroupParams) -> Macd:
        _check_keys(params, ["fast", "slow", "signal"], cls.key)
        return cls(*(_param_int(params, k, cls.key) for k in ("fast", "slow", "signal")))

    def params(self) -> dict[str, ParamValue]:
        return {"fast": self.fast, "slow": self.slow, "signal": self.signal}

    def batch(self, bars: Bars) -> list[Array]:
        c = bars.close
        line = _ewm(c, self._alphas[0]) - _ewm(c, self._alphas[1])
        signal = _ewm(line, self._alphas[2])
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


class Rsi(Indicator):
    """Wilder's RSI scaled to [0, 1]: avg gain / (avg gain + avg loss)."""

    key = "rsi"
    defaults = MappingProxyType({"windows": (7, 14)})

    def __init__(self, windows: tuple[int, ...]) -> None:
        super().__init__([f"rsi_{w}" for w in windows], 1 + _settle(1.0 / max(windows)))
        self.windows = windows
        self._coefficients = [(1.0 - 1.0 / w, 1.0 / w, (1.0 - 1.0 / w) + 1.0 / w) for w in windows]
        self._averages: list[list[float]] = []

    @classmethod
    def from_params(cls, params: GroupParams) -> Rsi:
        _check_keys(params, ["windows"], cls.key)
        return cls(_param_windows(params, "windows", cls.key, minimum=2))

    def params(self) -> dict[str, ParamValue]:
        return {"windows": self.windows}

    def batch(self, bars: Bars) -> list[Array]:
        change = bars.close - bars.prev_close
        gains, losses = np.maximum(change, 0.0), np.maximum(-change, 0.0)
        values = []
        for w in self.windows:
            gain, loss = _ewm(gains, 1.0 / w), _ewm(losses, 1.0 / w)
            values.append(_safe_ratio(gain, gain + loss, 0.5))
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
        _check_keys(params, ["window", "width"], cls.key)
        return cls(
            _param_int(params, "window", cls.key, minimum=2),
            _param_float(params, "width", cls.key),
        )

    def params(self) -> dict[str, ParamValue]:
        return {"window": self.window, "width": self.width}

    def batch(self, bars: Bars) -> list[Array]:
        mean, std = _rolling_std(bars.close, self.window)
        flat = std <= _FLAT * mean
        span = 2.0 * self.width * np.where(flat, 1.0, std)
        pct_b = np.where(flat, 0.5, (bars.close - mean) / span + 0.5)
        pct_b[np.isnan(mean)] = _NAN
        return [pct_b, 2.0 * self.width * std / mean]

    def start(self, tick: Tick) -> None:
        self._closes = deque([tick.c] * self.window, maxlen=self.window)

    def step(self, tick: Tick, out: list[float]) -> None:
        closes, c, n = self._closes, tick.c, self.window
        closes.append(c)
        mean = sum(closes) / n
        deviations = [x - mean for x in closes]
        std = math.sqrt(sum([d * d for d in deviations]) / n)
        o = self.offset
        out[o] = 0.5 if std <= _FLAT * mean else (c - mean) / (2.0 * self.width * std) + 0.5
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
            1 + _settle(self._alpha),
        )
        self._coefficients = (1.0 - self._alpha, self._alpha, (1.0 - self._alpha) + self._alpha)
        self._atr = 0.0

    @classmethod
    def from_params(cls, params: GroupParams) -> AverageTrueRange:
        _check_keys(params, ["window"], cls.key)
        return cls(_param_int(params, "window", cls.key, minimum=2))

    def params(self) -> dict[str, ParamValue]:
        return {"window": self.window}

    def batch(self, bars: Bars) -> list[Array]:
        tr = bars.true_range
        atr = _ewm(tr, self._alpha)
        return [atr / bars.close, tr / bars.prev_close, _safe_ratio(tr, atr, 1.0)]

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

    @classmethod
    def from_params(cls, params: GroupParams) -> Stochastic:
        _check_keys(params, ["k", "d"], cls.key)
        return cls(_param_int(params, "k", cls.key), _param_int(params, "d", cls.key))

    def params(self) -> dict[str, ParamValue]:
        return {"k": self.k, "d": self.d}

    def batch(self, bars: Bars) -> list[Array]:
        highest, lowest = _rolling_max(bars.high, self.k), _rolling_min(bars.low, self.k)
        pct_k = _safe_ratio(bars.close - lowest, highest - lowest, 0.5)
        pct_d = _nan(len(bars))
        pct_d[self.k - 1 :] = _rolling_mean(pct_k[self.k - 1 :], self.d)
        return [pct_k, pct_d]

    def start(self, tick: Tick) -> None:
        self._highs = deque([tick.h] * self.k, maxlen=self.k)
        self._lows = deque([tick.l] * self.k, maxlen=self.k)
        self._ks = deque([0.5] * self.d, maxlen=self.d)

    def step(self, tick: Tick, out: list[float]) -> None:
        self._highs.append(tick.h)
        self._lows.append(tick.l)
        highest, lowest = max(self._highs), min(self._lows)
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

    @classmethod
    def from_params(cls, params: GroupParams) -> WilliamsR:
        _check_keys(params, ["window"], cls.key)
        return cls(_param_int(params, "window", cls.key))

    def params(self) -> dict[str, ParamValue]:
        return {"window": self.window}

    def batch(self, bars: Bars) -> list[Array]:
        highest = _rolling_max(bars.high, self.window)
        lowest = _rolling_min(bars.low, self.window)
        return [-_safe_ratio(highest - bars.close, highest - lowest, 0.5)]

    def start(self, tick: Tick) -> None:
        self._highs = deque([tick.h] * self.window, maxlen=self.window)
        self._lows = deque([tick.l] * self.window, maxlen=self.window)

    def step(self, tick: Tick, out: list[float]) -> None:
        self._highs.append(tick.h)
        self._lows.append(tick.l)
        highest, lowest = max(self._highs), min(self._lows)
        out[self.offset] = -((highest - tick.c) / (highest - lowest)) if highest > lowest else -0.5


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
        _check_keys(params, ["windows"], cls.key)
        return cls(_param_windows(params, "windows", cls.key))

    def params(self) -> dict[str, ParamValue]:
        return {"windows": self.windows}

    def batch(self, bars: Bars) -> list[Array]:
        return [bars.close / _lag(bars.close, w) - 1.0 for w in self.windows]

    def start(self, tick: Tick) -> None:
        self._closes = deque([tick.c] * (max(self.windows) + 1), maxlen=max(self.windows) + 1)

    def step(self, tick: Tick, out: list[float]) -> None:
        closes, c = self._closes, tick.c
        closes.append(c)
        out[self.offset : self.offset + len(self._lags)] = [c / closes[k] - 1.0 for k in self._lags]


class VolumeFlow(Indicator):
    """Windowed OBV: sum(sign(close change) * volume) / sum(volume), in [-1, 1].

    The classic OBV is a cumulative sum whose level depends on where the series starts and on
    the volume unit; its change over a window, normalized by the window's volume, is neither.
    """

    key = "obv"
    defaults = MappingProxyType({"windows": (20, 50)})

    def __init__(self, windows: tuple[int, ...]) -> None:
        super().__init__([f"obv_flow_{w}" for w in windows], max(windows) + 1)
        self.windows = windows
        self._signed: list[deque[float]] = []
        self._volumes: list[deque[float]] = []

    @classmethod
    def from_params(cls, params: GroupParams) -> VolumeFlow:
        _check_keys(params, ["windows"], cls.key)
        return cls(_param_windows(params, "windows", cls.key))

    def params(self) -> dict[str, ParamValue]:
        return {"windows": self.windows}

    def batch(self, bars: Bars) -> list[Array]:
        signed = np.sign(bars.close - bars.prev_close) * bars.volume
        return [
            _safe_ratio(_rolling_sum(signed, w), _rolling_sum(bars.volume, w), 0.0)
            for w in self.windows
        ]

    def start(self, tick: Tick) -> None:
        self._signed = [deque([0.0] * w, maxlen=w) for w in self.windows]
        self._volumes = [deque([0.0] * w, maxlen=w) for w in self.windows]

    def step(self, tick: Tick, out: list[float]) -> None:
        c, pc, v = tick.c, tick.pc, tick.v
        signed = v if c > pc else (-v if c < pc else 0.0)
        o = self.offset
        for i, (flows, volumes) in enumerate(zip(self._signed, self._volumes, strict=True)):
            flows.append(signed)
            volumes.append(v)
            total = sum(volumes)
            out[o + i] = sum(flows) / total if total > 0 else 0.0


class VwapDistance(Indicator):
    """close / rolling VWAP (typical price weighted by volume) - 1; 0 without volume."""

    key = "vwap"
    defaults = MappingProxyType({"windows": (24, 72)})

    def __init__(self, windows: tuple[int, ...]) -> None:
        super().__init__([f"vwap_dist_{w}" for w in windows], max(windows))
        self.windows = windows
        self._values: list[deque[float]] = []
        self._volumes: list[deque[float]] = []

    @classmethod
    def from_params(cls, params: GroupParams) -> VwapDistance:
        _check_keys(params, ["windows"], cls.key)
        return cls(_param_windows(params, "windows", cls.key))

    def params(self) -> dict[str, ParamValue]:
        return {"windows": self.windows}

    def batch(self, bars: Bars) -> list[Array]:
        traded = bars.typical * bars.volume
        values = []
        for w in self.windows:
            volume = _rolling_sum(bars.volume, w)
            vwap = _safe_ratio(_rolling_sum(traded, w), volume, _NAN)
            values.append(np.where(volume > 0, bars.close / vwap - 1.0, 0.0))
            values[-1][np.isnan(volume)] = _NAN
        return values

    def start(self, tick: Tick) -> None:
        self._values = [deque([0.0] * w, maxlen=w) for w in self.windows]
        self._volumes = [deque([0.0] * w, maxlen=w) for w in self.windows]

    def step(self, tick: Tick, out: list[float]) -> None:
        c, v = tick.c, tick.v
        traded = (tick.h + tick.l + c) / 3.0 * v
        o = self.offset
        for i, (values, volumes) in enumerate(zip(self._values, self._volumes, strict=True)):
            values.append(traded)
            volumes.append(v)
            total = sum(volumes)
            out[o + i] = c / (sum(values) / total) - 1.0 if total > 0 else 0.0


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
        _check_keys(params, [], cls.key)
        return cls()

    def params(self) -> dict[str, ParamValue]:
        return {}

    def batch(self, bars: Bars) -> list[Array]:
        o, h, lo, c = bars.open, bars.high, bars.low, bars.close
        gap = o / bars.prev_close - 1.0
        gap[0] = _NAN  # the first candle has no previous close of its own
        return [
            (h - lo) / c,
            _safe_ratio(c - lo, h - lo, 0.5),
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
        out[self.offset : self.offset + 6] = [
            span / c,
            (c - lo) / span if span > 0 else 0.5,
            o / tick.pc - 1.0,
            c / o - 1.0,
            (h - max(o, c)) / c,
            (min(o, c) - lo) / c,
        ]


class VolumeStats(Indicator):
    """Volume z-score and volume / mean volume over a window; short/long mean volume ratio."""

    key = "volume"
    defaults = MappingProxyType({"window": 24, "short": 6, "long": 48})

    def __init__(self, window: int, short: int, long: int) -> None:
        if short >= long:
            raise ValueError(f"feature group 'volume': short ({short}) must be below long ({long})")
        super().__init__(
            [f"volume_z_{window}", f"volume_rel_{window}", f"volume_trend_{short}_{long}"],
            max(window, long),
        )
        self.window, self.short, self.long = window, short, long
        self._window: deque[float] = deque()
        self._short: deque[float] = deque()
        self._long: deque[float] = deque()

    @classmethod
    def from_params(cls, params: GroupParams) -> VolumeStats:
        _check_keys(params, ["window", "short", "long"], cls.key)
        return cls(
            _param_int(params, "window", cls.key, minimum=2),
            _param_int(params, "short", cls.key),
            _param_int(params, "long", cls.key),
        )

    def params(self) -> dict[str, ParamValue]:
        return {"window": self.window, "short": self.short, "long": self.long}

    def batch(self, bars: Bars) -> list[Array]:
        v = bars.volume
        mean, std = _rolling_std(v, self.window)
        flat = ~(std > _FLAT * mean)
        z = np.where(flat, 0.0, (v - mean) / np.where(flat, 1.0, std))
        z[np.isnan(mean)] = _NAN
        trend = _safe_ratio(_rolling_mean(v, self.short), _rolling_mean(v, self.long), 1.0)
        return [z, _safe_ratio(v, mean, 1.0), trend]

    def start(self, tick: Tick) -> None:
        self._window = deque([tick.v] * self.window, maxlen=self.window)
        self._short = deque([tick.v] * self.short, maxlen=self.short)
        self._long = deque([tick.v] * self.long, maxlen=self.long)

    def step(self, tick: Tick, out: list[float]) -> None:
        v = tick.v
        window = self._window
        window.append(v)
        self._short.append(v)
        self._long.append(v)
        mean = sum(window) / self.window
        deviations = [x - mean for x in window]
        std = math.sqrt(sum([d * d for d in deviations]) / self.window)
        long = sum(self._long) / self.long
        o = self.offset
        out[o] = (v - mean) / std if std > _FLAT * mean else 0.0
        out[o + 1] = v / mean if mean > 0 else 1.0
        out[o + 2] = (sum(self._short) / self.short) / long if long > 0 else 1.0


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

    @classmethod
    def from_params(cls, params: GroupParams) -> Channel:
        _check_keys(params, ["donchian", "extremes"], cls.key)
        return cls(_param_int(params, "donchian", cls.key), _param_int(params, "extremes", cls.key))

    def params(self) -> dict[str, ParamValue]:
        return {"donchian": self.donchian, "extremes": self.extremes}

    def batch(self, bars: Bars) -> list[Array]:
        h, lo, c = bars.high, bars.low, bars.close
        width = (_rolling_max(h, self.donchian) - _rolling_min(lo, self.donchian)) / c
        return [
            width,
            c / _rolling_max(h, self.extremes) - 1.0,
            c / _rolling_min(lo, self.extremes) - 1.0,
        ]

    def start(self, tick: Tick) -> None:
        d, e = self.donchian, self.extremes
        self._buffers = (
            deque([tick.h] * d, maxlen=d),
            deque([tick.l] * d, maxlen=d),
            deque([tick.h] * e, maxlen=e),
            deque([tick.l] * e, maxlen=e),
        )

    def step(self, tick: Tick, out: list[float]) -> None:
        highs, lows, long_highs, long_lows = self._buffers
        h, lo, c = tick.h, tick.l, tick.c
        highs.append(h)
        lows.append(lo)
        long_highs.append(h)
        long_lows.append(lo)
        o = self.offset
        out[o] = (max(highs) - min(lows)) / c
        out[o + 1] = c / max(long_highs) - 1.0
        out[o + 2] = c / min(long_lows) - 1.0


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
        _check_keys(params, ["window"], cls.key)
        return cls(_param_int(params, "window", cls.key, minimum=2))

    def params(self) -> dict[str, ParamValue]:
        return {"window": self.window}

    def batch(self, bars: Bars) -> list[Array]:
        tp, w = bars.typical, self.window
        view = _windows(tp, w)
        if view is None:
            return [_nan(len(bars))]
        mean = view.sum(axis=1) / w
        deviation = np.abs(view - mean[:, None]).sum(axis=1) / w
        flat = ~(deviation > _FLAT * mean)
        cci = np.where(flat, 0.0, (tp[w - 1 :] - mean) / (1.5 * np.where(flat, 1.0, deviation)))
        return [_place(cci, len(bars), w)]

    def start(self, tick: Tick) -> None:
        typical = (tick.h + tick.l + tick.c) / 3.0
        self._typical = deque([typical] * self.window, maxlen=self.window)

    def step(self, tick: Tick, out: list[float]) -> None:
        typical = (tick.h + tick.l + tick.c) / 3.0
        buffer, n = self._typical, self.window
        buffer.append(typical)
        mean = sum(buffer) / n
        deviation = sum([abs(x - mean) for x in buffer]) / n
        out[self.offset] = (typical - mean) / (1.5 * deviation) if deviation > _FLAT * mean else 0.0


class DirectionalMovement(Indicator):
    """(+DI - -DI) / (+DI + -DI) with Wilder smoothing, in [-1, 1] (the signed DX)."""

    key = "dmi"
    defaults = MappingProxyType({"window": 14})

    def __init__(self, window: int) -> None:
        self.window = window
        alpha = 1.0 / window
        super().__init__([f"dmi_{window}"], 1 + _settle(alpha))
        self._coefficients = (1.0 - alpha, alpha, (1.0 - alpha) + alpha)
        self._plus = self._minus = 0.0

    @classmethod
    def from_params(cls, params: GroupParams) -> DirectionalMovement:
        _check_keys(params, ["window"], cls.key)
        return cls(_param_int(params, "window", cls.key, minimum=2))

    def params(self) -> dict[str, ParamValue]:
        return {"window": self.window}

    def batch(self, bars: Bars) -> list[Array]:
        up, down = bars.high - bars.prev_high, bars.prev_low - bars.low
        plus = np.where((up > down) & (up > 0), up, 0.0)
        minus = np.where((down > up) & (down > 0), down, 0.0)
        alpha = self._coefficients[1]
        smooth_plus, smooth_minus = _ewm(plus, alpha), _ewm(minus, alpha)
        total = smooth_plus + smooth_minus
        return [_safe_ratio(smooth_plus - smooth_minus, total, 0.0)]

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


class Efficiency(Indicator):
    """Kaufman efficiency ratio: |net close change| / sum of |close changes| over a window."""

    key = "efficiency"
    defaults = MappingProxyType({"windows": (10, 30)})

    def __init__(self, windows: tuple[int, ...]) -> None:
        super().__init__([f"efficiency_{w}" for w in windows], max(windows) + 1)
        self.windows = windows
        self._changes: list[deque[float]] = []
        self._paths: list[deque[float]] = []

    @classmethod
    def from_params(cls, params: GroupParams) -> Efficiency:
        _check_keys(params, ["windows"], cls.key)
        return cls(_param_windows(params, "windows", cls.key))

    def params(self) -> dict[str, ParamValue]:
        return {"windows": self.windows}

    def batch(self, bars: Bars) -> list[Array]:
        change = bars.close - bars.prev_close
        distance = np.abs(change)
        return [
            _safe_ratio(np.abs(_rolling_sum(change, w)), _rolling_sum(distance, w), 0.0)
            for w in self.windows
        ]

    def start(self, tick: Tick) -> None:
        self._changes = [deque([0.0] * w, maxlen=w) for w in self.windows]
        self._paths = [deque([0.0] * w, maxlen=w) for w in self.windows]

    def step(self, tick: Tick, out: list[float]) -> None:
        change = tick.c - tick.pc
        distance = abs(change)
        o = self.offset
        for i, (changes, paths) in enumerate(zip(self._changes, self._paths, strict=True)):
            changes.append(change)
            paths.append(distance)
            path = sum(paths)
            out[o + i] = abs(sum(changes)) / path if path > 0 else 0.0


class Calendar(Indicator):
    """UTC hour of day and day of week of the candle's open, as points on the unit circle."""

    key = "calendar"
    defaults = MappingProxyType({})

    def __init__(self) -> None:
        super().__init__(["hour_sin", "hour_cos", "weekday_sin", "weekday_cos"], 1)

    @classmethod
    def from_params(cls, params: GroupParams) -> Calendar:
        _check_keys(params, [], cls.key)
        return cls()

    def params(self) -> dict[str, ParamValue]:
        return {}

    def batch(self, bars: Bars) -> list[Array]:
        hour = ((bars.open_time // 3_600_000) % 24).astype(np.float64) * (_TAU / 24.0)
        # The epoch was a Thursday: +3 makes Monday 0.
        weekday = ((bars.open_time // 86_400_000 + 3) % 7).astype(np.float64) * (_TAU / 7.0)
        return [np.sin(hour), np.cos(hour), np.sin(weekday), np.cos(weekday)]

    def start(self, tick: Tick) -> None:
        """Stateless: everything comes from the open time."""

    def step(self, tick: Tick, out: list[float]) -> None:
        hour = float((tick.t // 3_600_000) % 24) * (_TAU / 24.0)
        weekday = float((tick.t // 86_400_000 + 3) % 7) * (_TAU / 7.0)
        o = self.offset
        out[o : o + 4] = [math.sin(hour), math.cos(hour), math.sin(weekday), math.cos(weekday)]


# The order of this registry is the order of the feature columns.
REGISTRY: tuple[type[Indicator], ...] = (
    LogReturns,
    RealizedVolatility,
    SmaRatio,
    EmaRatio,
    Macd,
    Rsi,
    Bollinger,
    AverageTrueRange,
    Stochastic,
    WilliamsR,
    RateOfChange,
    VolumeFlow,
    VwapDistance,
    CandleShape,
    VolumeStats,
    Channel,
    CommodityChannel,
    DirectionalMovement,
    Efficiency,
    Calendar,
)
_BY_KEY = {group.key: group for group in REGISTRY}


# --------------------------------------------------------------------------------------------
# The spec


def _freeze(params: Mapping[str, Mapping[str, Any]]) -> Mapping[str, GroupParams]:
    return MappingProxyType(
        {
            group: MappingProxyType(
                {k: tuple(v) if isinstance(v, list | tuple) else v for k, v in values.items()}
            )
            for group, values in params.items()
        }
    )


def _jsonable(params: Mapping[str, GroupParams]) -> dict[str, dict[str, Any]]:
    return {
        group: {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
        for group, values in params.items()
    }


@dataclass(frozen=True)
class FeatureSpec:
    """Which features, in which order, with which parameters: what a model is trained on.

    ``hash`` is a sha256 over names, params and version (canonical JSON), stable across runs
    and machines; it travels in model metadata and in every signal.
    """

    names: tuple[str, ...]
    params: Mapping[str, GroupParams]
    version: str
    warmup: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(self.names))
        object.__setattr__(self, "params", _freeze(self.params))

    def __hash__(self) -> int:
        return hash(self.hash)

    @cached_property
    def hash(self) -> str:
        """sha256 hex digest of the canonical JSON of names, params and version (computed once:
        every signal carries it)."""
        canonical = json.dumps(
            {"names": list(self.names), "params": _jsonable(self.params), "version": self.version},
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (names, params, version, warmup, hash) for model metadata."""
        return {
            "names": list(self.names),
            "params": _jsonable(self.params),
            "version": self.version,
            "warmup": self.warmup,
            "hash": self.hash,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSpec:
        """Inverse of ``to_dict``; a stored hash that does not match the content is refused."""
        try:
            names, params = data["names"], data["params"]
            version, warmup = str(data["version"]), int(data["warmup"])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(
                f"feature spec needs names, params, version and warmup; got {data!r} ({error})"
            ) from None
        if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"feature spec names must be a list of strings, got {names!r}")
        if not isinstance(params, Mapping) or not all(
            isinstance(v, Mapping) for v in params.values()
        ):
            raise ValueError(f"feature spec params must map group -> parameters, got {params!r}")
        spec = cls(tuple(names), params, version, warmup)
        stored = data.get("hash")
        if stored is not None and stored != spec.hash:
            raise ValueError(
                f"feature spec hash {stored} does not match its content (recomputed "
                f"{spec.hash}); the model metadata was altered or corrupted"
            )
        return spec


def _build(params: Mapping[str, Mapping[str, Any]]) -> list[Indicator]:
    unknown = sorted(set(params) - set(_BY_KEY))
    if unknown:
        raise ValueError(f"unknown feature groups {unknown}; this code knows {sorted(_BY_KEY)}")
    indicators = [group.from_params(params[group.key]) for group in REGISTRY if group.key in params]
    if not indicators:
        raise ValueError("a feature spec needs at least one feature group")
    offset = 0
    for indicator in indicators:
        indicator.offset = offset
        offset += len(indicator.names)
    return indicators


def feature_spec(params: Mapping[str, Mapping[str, Any]] | None = None) -> FeatureSpec:
    """The spec of the given groups' parameters (default: every group with its defaults).

    Names, order and warm-up follow from the code; raises ValueError for an unknown group or
    a bad parameter, naming it.
    """
    chosen = params if params is not None else {g.key: dict(g.defaults) for g in REGISTRY}
    indicators = _build(chosen)
    return FeatureSpec(
        names=tuple(n for i in indicators for n in i.names),
        params={i.key: i.params() for i in indicators},
        version=FEATURE_VERSION,
        warmup=max(i.warmup for i in indicators),
    )


def default_feature_spec() -> FeatureSpec:
    """Every registered feature group with its default parameters."""
    return feature_spec()


def check_feature_spec(expected: FeatureSpec, actual: FeatureSpec) -> None:
    """Raise FeatureMismatchError unless ``actual`` computes what ``expected`` describes.

    ``expected`` is what a model was trained with, ``actual`` what this code computes; the
    message names both lists and the first difference.
    """
    advice = "Retrain the model or pin kubetrade to the version it was trained with."
    if expected.names != actual.names:
        index = next(
            (
                i
                for i, (a, b) in enumerate(zip(expected.names, actual.names, strict=False))
                if a != b
            ),
            min(len(expected.names), len(actual.names)),
        )
        left = repr(expected.names[index]) if index < len(expected.names) else "(none)"
        right = repr(actual.names[index]) if index < len(actual.names) else "(none)"
        raise FeatureMismatchError(
            f"model expects {len(expected.names)} features {list(expected.names)}, this code "
            f"computes {len(actual.names)} {list(actual.names)}; first difference at index "
            f"{index}: {left} vs {right}. {advice}"
        )
    if expected.version != actual.version:
        raise FeatureMismatchError(
            f"model expects feature definitions version {expected.version!r}, this code computes "
            f"version {actual.version!r} (same {len(actual.names)} names, changed formulas). "
            f"{advice}"
        )
    if expected.hash != actual.hash:
        groups = sorted(
            g
            for g in set(expected.params) | set(actual.params)
            if dict(expected.params.get(g, {})) != dict(actual.params.get(g, {}))
        )
        detail = "; ".join(
            f"{g}: {dict(expected.params.get(g, {}))} vs {dict(actual.params.get(g, {}))}"
            for g in groups
        )
        raise FeatureMismatchError(
            f"model expects feature parameters that differ from this code's ({detail}; "
            f"hash {expected.hash[:12]} vs {actual.hash[:12]}). {advice}"
        )


def _indicators_for(spec: FeatureSpec) -> list[Indicator]:
    """Indicators computing exactly ``spec``, or FeatureMismatchError."""
    try:
        built = feature_spec(spec.params)
    except ValueError as error:
        raise FeatureMismatchError(
            f"this code cannot compute the feature spec {spec.hash[:12]}: {error}. "
            "Retrain the model or pin kubetrade to the version it was trained with."
        ) from None
    check_feature_spec(spec, built)
    return _build(spec.params)


# --------------------------------------------------------------------------------------------
# The two paths


def _bars(data: pd.DataFrame | Mapping[str, npt.ArrayLike]) -> Bars:
    columns = ("open_time", "open", "high", "low", "close", "volume")
    if isinstance(data, pd.DataFrame) and "symbol" in data.columns:
        symbols = data["symbol"].unique()
        if len(symbols) > 1:
            raise ValueError(
                f"features are per symbol, the frame holds {sorted(map(str, symbols))}; "
                "compute them for each symbol's rows"
            )
    missing = [c for c in columns if c not in data]
    if missing:
        raise ValueError(f"candles lack {missing}; need {list(columns)} (open_time in ms UTC)")
    arrays = {c: np.asarray(data[c], dtype=np.float64) for c in columns[1:]}
    times = np.asarray(data["open_time"], dtype=np.int64)
    prices = np.stack([arrays[c] for c in ("open", "high", "low", "close")])
    if not (np.isfinite(prices).all() and (prices > 0).all()):
        bad = int(np.flatnonzero(~(np.isfinite(prices) & (prices > 0)).all(axis=0))[0])
        raise ValueError(f"candle {bad} has a missing or non-positive price; clean the candles")
    volume_ok = np.isfinite(arrays["volume"]) & (arrays["volume"] >= 0)
    if not volume_ok.all():
        bad = int(np.flatnonzero(~volume_ok)[0])
        raise ValueError(f"candle {bad} has a missing or negative volume; clean the candles")
    if times.shape[0] > 1:
        spacing = np.diff(times)
        breaks = np.flatnonzero((spacing != spacing[0]) | (spacing <= 0))
        if breaks.size:
            raise ValueError(
                f"candles are not evenly spaced in open_time (first break at row "
                f"{int(breaks[0]) + 1}); features need a sorted, gap-free series: clean it with "
                "kubetrade.market.clean_candles"
            )
    return Bars(open_time=times, **arrays)


def compute_features(
    data: pd.DataFrame | Mapping[str, npt.ArrayLike], spec: FeatureSpec | None = None
) -> Array:
    """The feature matrix [n candles, n features] (float64) of one symbol's candles.

    ``data`` is a candle frame or a mapping with ``open_time, open, high, low, close, volume``.
    Rows before ``spec.warmup - 1`` are NaN; every later row is finite.
    """
    chosen = spec or default_feature_spec()
    indicators = _indicators_for(chosen)
    bars = _bars(data)
    result = np.empty((len(bars), len(chosen.names)))
    with np.errstate(divide="ignore", invalid="ignore"):
        for indicator in indicators:
            for j, column in enumerate(indicator.batch(bars)):
                result[:, indicator.offset + j] = column
    result[: chosen.warmup - 1] = _NAN
    return result


class FeatureEngine:
    """The incremental path: one engine per symbol, fed closed candles in order.

    ``update`` returns None while warming up (the first ``spec.warmup - 1`` candles), then the
    candle's feature row, equal to ``compute_features`` on the same series. A gap in the stream
    is filled with flat zero-volume candles (as the cleaner does for files); a candle that is
    not after the last one, or of another symbol or timeframe, is refused with ValueError and
    changes nothing. To restart, replay the last ``spec.warmup`` candles with ``warm_up``.
    """

    def __init__(self, spec: FeatureSpec | None = None) -> None:
        self.spec = spec or default_feature_spec()
        self._indicators = _indicators_for(self.spec)
        self._out = [_NAN] * len(self.spec.names)
        self._tick = Tick()
        self._seen = 0
        self._symbol = ""
        self._timeframe = ""
        self._step = 0
        self._last_time = 0
        self.gaps_filled = 0

    @property
    def candles_seen(self) -> int:
        """Candles consumed so far, including gap fills."""
        return self._seen

    @property
    def is_warm(self) -> bool:
        """True once ``update`` returns feature rows."""
        return self._seen >= self.spec.warmup

    def warm_up(self, candles: Iterable[Candle]) -> Array | None:
        """Feed candles in order; return the last feature row (None if still warming up)."""
        row = None
        for candle in candles:
            row = self.update(candle)
        return row

    def update(self, candle: Candle) -> Array | None:
        """Consume one closed candle; its feature row once warm, else None."""
        if self._seen == 0:
            self._symbol, self._timeframe = candle.symbol, candle.timeframe
            self._step = timeframe_ms(candle.timeframe)
            self._check_values(candle)
        else:
            self._check_next(candle)
            missing = (candle.open_time - self._last_time) // self._step - 1
            if missing:
                self._fill(missing)
        self._advance(
            candle.open_time, candle.open, candle.high, candle.low, candle.close, candle.volume
        )
        return np.array(self._out) if self._seen >= self.spec.warmup else None

    def _check_values(self, candle: Candle) -> None:
        o, h, lo, c, v = candle.open, candle.high, candle.low, candle.close, candle.volume
        if not (
            o > 0
            and h > 0
            and lo > 0
            and c > 0
            and v >= 0
            and h >= max(o, c, lo)
            and lo <= min(o, c)
        ):
            raise ValueError(
                f"feature engine {self._symbol}: refusing invalid candle {candle} (prices must be "
                "positive with low <= open, close <= high, volume non-negative)"
            )

    def _check_next(self, candle: Candle) -> None:
        if candle.symbol != self._symbol or candle.timeframe != self._timeframe:
            raise ValueError(
                f"feature engine of {self._symbol} {self._timeframe} got a candle of "
                f"{candle.symbol} {candle.timeframe}; use one engine per symbol and timeframe"
            )
        if candle.open_time <= self._last_time or (candle.open_time - self._last_time) % self._step:
            raise ValueError(
                f"feature engine {self._symbol}: candle at {candle.open_time} does not follow the "
                f"last one at {self._last_time} on the {self._timeframe} grid (duplicate or out "
                "of order); dropped it"
            )
        self._check_values(candle)

    def _fill(self, missing: int) -> None:
        close = self._tick.c
        log.warning(
            "gap in candle stream filled with flat candles",
            extra={"symbol": self._symbol, "missing": missing, "after": self._last_time},
        )
        for _ in range(missing):
            self._advance(self._last_time + self._step, close, close, close, close, 0.0)
        self.gaps_filled += missing

    def _advance(self, t: int, o: float, h: float, lo: float, c: float, v: float) -> None:
        tick = self._tick
        first = self._seen == 0
        if first:
            tick.pc, tick.ph, tick.pl = o, h, lo
        else:
            tick.pc, tick.ph, tick.pl = tick.c, tick.h, tick.l
        tick.t, tick.o, tick.h, tick.l, tick.c, tick.v = t, o, h, lo, c, v
        pc = tick.pc
        tick.r1 = math.log(c / pc)
        tick.tr = (h if h > pc else pc) - (lo if lo < pc else pc)
        out = self._out
        if first:
            for indicator in self._indicators:
                indicator.start(tick)
        for indicator in self._indicators:
            indicator.step(tick, out)
        self._seen += 1
        self._last_time = t

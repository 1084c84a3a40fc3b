"""Volume groups: windowed on-balance flow, distance to VWAP, volume statistics."""

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
    param_int,
    param_windows,
)
from kubetrade.features.inputs import NAN, Array, Bars, Tick
from kubetrade.features.series import (
    FLAT,
    rolling_mean,
    rolling_std,
    rolling_sum,
    safe_ratio,
)


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
        self._pairs: list[tuple[deque[float], deque[float]]] = []

    @classmethod
    def from_params(cls, params: GroupParams) -> VolumeFlow:
        check_keys(params, ["windows"], cls.key)
        return cls(param_windows(params, "windows", cls.key))

    def params(self) -> dict[str, ParamValue]:
        return {"windows": self.windows}

    def batch(self, bars: Bars) -> list[Array]:
        signed = np.sign(bars.close - bars.prev_close) * bars.volume
        return [
            safe_ratio(rolling_sum(signed, w), rolling_sum(bars.volume, w), 0.0)
            for w in self.windows
        ]

    def start(self, tick: Tick) -> None:
        # (signed volumes, volumes) per window, paired once rather than zipped per candle.
        self._pairs = [
            (deque([0.0] * w, maxlen=w), deque([0.0] * w, maxlen=w)) for w in self.windows
        ]

    def step(self, tick: Tick, out: list[float]) -> None:
        c, pc, v = tick.c, tick.pc, tick.v
        signed = v if c > pc else (-v if c < pc else 0.0)
        o = self.offset
        for i, (flows, volumes) in enumerate(self._pairs):
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
        self._pairs: list[tuple[deque[float], deque[float]]] = []

    @classmethod
    def from_params(cls, params: GroupParams) -> VwapDistance:
        check_keys(params, ["windows"], cls.key)
        return cls(param_windows(params, "windows", cls.key))

    def params(self) -> dict[str, ParamValue]:
        return {"windows": self.windows}

    def batch(self, bars: Bars) -> list[Array]:
        traded = bars.typical * bars.volume
        values = []
        for w in self.windows:
            volume = rolling_sum(bars.volume, w)
            vwap = safe_ratio(rolling_sum(traded, w), volume, NAN)
            values.append(np.where(volume > 0, bars.close / vwap - 1.0, 0.0))
            values[-1][np.isnan(volume)] = NAN
        return values

    def start(self, tick: Tick) -> None:
        # (traded values, volumes) per window, paired once rather than zipped per candle.
        self._pairs = [
            (deque([0.0] * w, maxlen=w), deque([0.0] * w, maxlen=w)) for w in self.windows
        ]

    def step(self, tick: Tick, out: list[float]) -> None:
        c, v = tick.c, tick.v
        traded = (tick.h + tick.l + c) / 3.0 * v
        o = self.offset
        for i, (values, volumes) in enumerate(self._pairs):
            values.append(traded)
            volumes.append(v)
            total = sum(volumes)
            out[o + i] = c / (sum(values) / total) - 1.0 if total > 0 else 0.0


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
        check_keys(params, ["window", "short", "long"], cls.key)
        return cls(
            param_int(params, "window", cls.key, minimum=2),
            param_int(params, "short", cls.key),
            param_int(params, "long", cls.key),
        )

    def params(self) -> dict[str, ParamValue]:
        return {"window": self.window, "short": self.short, "long": self.long}

    def batch(self, bars: Bars) -> list[Array]:
        v = bars.volume
        mean, std = rolling_std(v, self.window)
        flat = ~(std > FLAT * mean)
        z = np.where(flat, 0.0, (v - mean) / np.where(flat, 1.0, std))
        z[np.isnan(mean)] = NAN
        trend = safe_ratio(rolling_mean(v, self.short), rolling_mean(v, self.long), 1.0)
        return [z, safe_ratio(v, mean, 1.0), trend]

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
        # Each deviation squared as it is made: one list, the same products in the same order.
        std = math.sqrt(sum([(d := x - mean) * d for x in window]) / self.window)
        long = sum(self._long) / self.long
        o = self.offset
        out[o] = (v - mean) / std if std > FLAT * mean else 0.0
        out[o + 1] = v / mean if mean > 0 else 1.0
        out[o + 2] = (sum(self._short) / self.short) / long if long > 0 else 1.0

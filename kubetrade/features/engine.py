"""The incremental path: one candle at a time with ring buffers and recursive state (inference)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np

from kubetrade.domain import Candle, timeframe_ms
from kubetrade.features.inputs import NAN, Array, Tick, logs
from kubetrade.features.spec import FeatureSpec, default_feature_spec, indicators_for

# The package's logger, as before the split into modules: what log filters name stays the same.
log = logging.getLogger("kubetrade.features")


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
        self._indicators = indicators_for(self.spec)
        # Bound once: looking the methods up per candle and indicator costs more than the
        # cheapest indicators' steps.
        self._starts = [indicator.start for indicator in self._indicators]
        self._steps = [indicator.step for indicator in self._indicators]
        self._out = [NAN] * len(self.spec.names)
        self._width = len(self._out)
        self._warmup = self.spec.warmup
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
            self._step = self._tick.step = timeframe_ms(candle.timeframe)
            self._check_values(candle)
        else:
            self._check_next(candle)
            missing = (candle.open_time - self._last_time) // self._step - 1
            if missing:
                self._fill(missing)
        self._advance(
            candle.open_time, candle.open, candle.high, candle.low, candle.close, candle.volume
        )
        if self._seen < self._warmup:
            return None
        # ``fromiter`` with the dtype and length given skips the type inference of
        # ``np.array(list)``: the same float64 row in half the time.
        return np.fromiter(self._out, np.float64, self._width)

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
        (tick.r1,) = logs([c / pc])
        tick.tr = (h if h > pc else pc) - (lo if lo < pc else pc)
        out = self._out
        if first:
            for start in self._starts:
                start(tick)
        for step in self._steps:
            step(tick, out)
        self._seen += 1
        self._last_time = t

"""Average True Range with Wilder's smoothing, one candle at a time.

True range is ``max(high - low, |high - previous close|, |low - previous close|)``; the first
candle has no previous close, so its true range is ``high - low``. The first ATR is the simple
mean of the first ``period`` true ranges; after that ``ATR = (ATR * (period - 1) + TR) / period``.
The ATR is ready once ``period`` candles have been seen.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubetrade.domain import Candle


# Updated in place, one per symbol: it runs on every candle, and a new state per candle
# (or a frozen one, see kubetrade.domain) is an allocation per candle for nothing kept.
@dataclass(slots=True)
class AtrState:
    """Running ATR of one symbol; ``value`` is None while warming up."""

    period: int
    count: int = 0
    warmup_sum: float = 0.0
    value: float | None = None
    previous_close: float | None = None

    def update(self, candle: Candle) -> None:
        """Take ``candle`` into the ATR."""
        # One method with locals, not a true-range helper: this runs once per candle.
        high, low, previous_close = candle.high, candle.low, self.previous_close
        tr = high - low
        if previous_close is not None:
            tr = max(tr, abs(high - previous_close), abs(low - previous_close))
        self.count += 1
        self.previous_close = candle.close
        period = self.period
        if self.value is not None:
            self.value = (self.value * (period - 1) + tr) / period
            return
        self.warmup_sum += tr
        if self.count >= period:
            self.value = self.warmup_sum / period

"""Average True Range with Wilder's smoothing, one candle at a time.

True range is ``max(high - low, |high - previous close|, |low - previous close|)``; the first
candle has no previous close, so its true range is ``high - low``. The first ATR is the simple
mean of the first ``period`` true ranges; after that ``ATR = (ATR * (period - 1) + TR) / period``.
The ATR is ready once ``period`` candles have been seen.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubetrade.domain import Candle


# Not frozen: one is made per candle, and a frozen dataclass's __init__ costs several times a
# plain one's (see kubetrade.domain). ``update_atr`` makes a new one; nothing assigns to it.
@dataclass(slots=True)
class AtrState:
    """Running ATR of one symbol; ``value`` is None while warming up."""

    period: int
    count: int = 0
    warmup_sum: float = 0.0
    value: float | None = None
    previous_close: float | None = None


def update_atr(state: AtrState, candle: Candle) -> AtrState:
    """The ATR state after ``candle``."""
    # One function with locals, not a true-range helper: this runs once per candle.
    high, low, previous_close = candle.high, candle.low, state.previous_close
    tr = high - low
    if previous_close is not None:
        tr = max(tr, abs(high - previous_close), abs(low - previous_close))
    count = state.count + 1
    period = state.period
    if state.value is not None:
        value: float | None = (state.value * (period - 1) + tr) / period
        return AtrState(period, count, state.warmup_sum, value, candle.close)
    warmup_sum = state.warmup_sum + tr
    value = warmup_sum / period if count >= period else None
    return AtrState(period, count, warmup_sum, value, candle.close)

"""The inputs of the two paths: a whole series as arrays (batch), one candle at a time
(incremental)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]
NAN = math.nan


def logs(values: list[float]) -> list[float]:
    """Natural logarithms of ``values`` taken by numpy, as the batch path takes a column's.

    Not ``math.log``: numpy computes logs with its own SIMD code where the CPU has it
    (AVX-512), which rounds about one value in twenty-five differently from the C library.
    Each value's log does not depend on its neighbours, so the incremental path gets the batch
    path's bits on every CPU by taking its few logs through the same function.
    """
    result: list[float] = np.log(values).tolist()
    return result


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

    __slots__ = ("c", "h", "l", "o", "pc", "ph", "pl", "r1", "step", "t", "tr", "v")

    def __init__(self) -> None:
        self.t = 0
        # The candles' spacing in ms (their timeframe), set by the engine before the first.
        self.step = 0
        self.o = self.h = self.l = self.c = self.v = NAN
        self.pc = self.ph = self.pl = self.r1 = self.tr = NAN

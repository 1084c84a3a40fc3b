"""Vectorized helpers of the batch path: every windowed value sits at the window's last row,
rows before are NaN; and the settling length of a recursive filter.

Window sums add a window's values one at a time, oldest first, from 0.0: the additions the
incremental path's ``sum(buffer)`` makes (Python 3.11's ``sum`` of floats is plain sequential
addition), so both paths give the same bits and a backtest may use either (numpy's own ``sum``
adds pairwise, which differs in the last bits)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from kubetrade.features.inputs import NAN, Array

# A recursive filter counts as settled once the weight left on its seed is below this.
SETTLE_TOLERANCE = 1e-10
# Dispersions below this fraction of the level are rounding noise: treat the window as flat.
FLAT = 1e-12


def nans(n: int) -> Array:
    """An all-NaN array of length n."""
    return np.full(n, NAN)


def sliding_windows(x: Array, w: int) -> Array | None:
    """Rolling windows of x as rows (a view), or None when x is shorter than w."""
    return sliding_window_view(x, w) if x.shape[0] >= w else None


def placed(values: Array, n: int, w: int) -> Array:
    """``values`` of each w-window placed at the window's last row of an n-row NaN array."""
    out = nans(n)
    out[w - 1 :] = values
    return out


def rolling(x: Array, w: int, reduce: Callable[[Array], Array]) -> Array:
    """``reduce`` over the rows of x's w-windows, placed at each window's last row."""
    view = sliding_windows(x, w)
    return nans(x.shape[0]) if view is None else placed(reduce(view), x.shape[0], w)


def window_sums(view: Array) -> Array:
    """The sum of each row of ``view`` (windows as rows), added left to right from 0.0."""
    return window_sums_of(view, _unchanged)


def window_sums_of(view: Array, term: Callable[[Array], Array]) -> Array:
    """The sum of ``term`` of each row's values, added left to right from 0.0, a column at a
    time: no windows-sized temporary for the terms (a million candles' 20-candle windows are
    160 MB each)."""
    total = 0.0 + term(view[:, 0])
    for k in range(1, view.shape[1]):
        total += term(view[:, k])
    return total


def _unchanged(column: Array) -> Array:
    return column


def rolling_sum(x: Array, w: int) -> Array:
    """Rolling sum over w rows."""
    return rolling(x, w, window_sums)


def rolling_mean(x: Array, w: int) -> Array:
    """Rolling mean over w rows."""
    return rolling(x, w, lambda v: window_sums(v) / w)


def rolling_max(x: Array, w: int) -> Array:
    """Rolling maximum over w rows (of prices: no signed zeros, NaN propagates)."""
    return rolling(x, w, lambda v: _column_fold(v, np.maximum))


def rolling_min(x: Array, w: int) -> Array:
    """Rolling minimum over w rows (of prices: no signed zeros, NaN propagates)."""
    return rolling(x, w, lambda v: _column_fold(v, np.minimum))


def _column_fold(view: Array, op: np.ufunc) -> Array:
    """``op`` folded over the columns of ``view`` (windows as rows): a row's maximum or minimum
    with contiguous column reads, several times faster than a reduction along strided rows."""
    out: Array = view[:, 0].copy()
    for k in range(1, view.shape[1]):
        op(out, view[:, k], out=out)
    return out


def rolling_std(x: Array, w: int) -> tuple[Array, Array]:
    """Rolling mean and population standard deviation, two-pass per window."""
    view = sliding_windows(x, w)
    if view is None:
        return nans(x.shape[0]), nans(x.shape[0])
    mean = window_sums(view) / w
    std = np.sqrt(window_sums_of(view, lambda column: _squared(column - mean)) / w)
    return placed(mean, x.shape[0], w), placed(std, x.shape[0], w)


def _squared(deviation: Array) -> Array:
    squared: Array = deviation * deviation
    return squared


def lagged(x: Array, k: int) -> Array:
    """x shifted k rows later (the first k rows NaN)."""
    out = nans(x.shape[0])
    out[k:] = x[: x.shape[0] - k]
    return out


def ewm(x: Array, alpha: float) -> Array:
    """y[0] = x[0]; y[t] = ((1-a) y[t-1] + a x[t]) / ((1-a) + a): pandas' adjust=False EWM."""
    smoothed: Array = pd.Series(x).ewm(alpha=alpha, adjust=False).mean().to_numpy(np.float64)
    return smoothed


def settle(alpha: float) -> int:
    """Candles until a recursive filter's seed weight (1-alpha)^k is below the tolerance."""
    return math.ceil(math.log(SETTLE_TOLERANCE) / math.log(1.0 - alpha))


def safe_ratio(num: Array, den: Array, fallback: float) -> Array:
    """num/den where den > 0, else fallback (NaN stays NaN)."""
    ratio = np.where(den > 0, num / np.where(den > 0, den, 1.0), fallback)
    ratio[np.isnan(den) | np.isnan(num)] = NAN
    return ratio

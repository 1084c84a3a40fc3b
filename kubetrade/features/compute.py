"""The vectorized path: the feature matrix of a whole candle series (training, backtests)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
import pandas as pd

from kubetrade.features.inputs import NAN, Array, Bars
from kubetrade.features.spec import FeatureSpec, default_feature_spec, indicators_for


def bars_of(data: pd.DataFrame | Mapping[str, npt.ArrayLike]) -> Bars:
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
    indicators = indicators_for(chosen)
    bars = bars_of(data)
    # Filled a column at a time, so laid out by columns, then copied once to the row order the
    # model reads: writing columns into rows strides across the whole matrix (twice as slow).
    result = np.empty((len(bars), len(chosen.names)), order="F")
    with np.errstate(divide="ignore", invalid="ignore"):
        for indicator in indicators:
            for j, column in enumerate(indicator.batch(bars)):
                result[:, indicator.offset + j] = column
    result[: chosen.warmup - 1] = NAN
    return np.ascontiguousarray(result)

"""Resampling a candle frame to a coarser timeframe (e.g. 1h → 4h), closed candles only."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from kubetrade.domain import timeframe_ms
from kubetrade.market.frame import CandleDataError, infer_frame_timeframe, sort_frame

log = logging.getLogger(__name__)


def resample(
    frame: pd.DataFrame, timeframe: str, *, source_timeframe: str | None = None
) -> pd.DataFrame:
    """Aggregate a cleaned candle frame into ``timeframe`` buckets aligned to the UTC epoch.

    open = first open, high = max, low = min, close = last close, volume = sum, per symbol.
    Buckets missing candles at either end (the data starts mid-bucket, or the last bucket has
    not closed yet) are dropped, so every output candle is complete and closed; a partial
    bucket inside the series means the frame has gaps and is refused (clean it first).
    ``source_timeframe`` is inferred from the spacing when not given.
    Raises ValueError for a finer target, or one that is not a whole multiple of the source.
    """
    source = source_timeframe or infer_frame_timeframe(frame, where="resample input")
    step, target = timeframe_ms(source), timeframe_ms(timeframe)
    if target < step:
        raise CandleDataError(
            f"cannot resample {source} candles to the finer {timeframe}: the data does not hold "
            f"what happened inside a {source} candle; load {timeframe} data instead"
        )
    if target % step:
        raise CandleDataError(
            f"cannot resample {source} to {timeframe}: {timeframe} is not a whole number of "
            f"{source} candles"
        )
    if target == step:
        return sort_frame(frame)
    per_bucket = target // step
    bucketed = frame.assign(bucket=frame["open_time"] // target * target).sort_values(
        ["symbol", "open_time"], kind="stable"
    )
    grouped = bucketed.groupby(["symbol", "bucket"], sort=True)
    result = grouped.agg(
        open=("open", "first"),
        high=("high", "max"),
        low=("low", "min"),
        close=("close", "last"),
        volume=("volume", "sum"),
        count=("open_time", "count"),
    ).reset_index()
    partial = result["count"].to_numpy() < per_bucket
    buckets = result["bucket"].to_numpy()
    first = result.groupby("symbol")["bucket"].transform("min").to_numpy() == buckets
    last = result.groupby("symbol")["bucket"].transform("max").to_numpy() == buckets
    interior = partial & ~first & ~last
    if interior.any():
        where = result.loc[interior].iloc[0]
        raise CandleDataError(
            f"cannot resample to {timeframe}: {int(interior.sum())} buckets inside the series "
            f"miss candles (first: {where['symbol']} at {int(where['bucket'])} ms); the frame has "
            "gaps, clean it with kubetrade.market.clean_candles first"
        )
    if partial.any():
        log.info(
            "dropped incomplete edge buckets",
            extra={"timeframe": timeframe, "dropped_buckets": int(partial.sum())},
        )
    complete = result.loc[~partial].rename(columns={"bucket": "open_time"})
    return sort_frame(complete.astype({"open_time": np.int64}))

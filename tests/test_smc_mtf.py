"""Smart-money and multi-timeframe features mean what they say, and know a pattern only once the
candle that confirms it has closed (the agreement, warm-up and perturbation checks of every
registered group are in tests/test_features.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from kubetrade.features import FeatureEngine, HigherTimeframe, compute_features, feature_spec
from kubetrade.features.compute import bars_of
from kubetrade.features.smc import smc_window
from kubetrade.market import clean_candles, generate, to_candles

H = 3_600_000
FVG_BULL, FVG_BEAR, OB_BULL, OB_BEAR, SWEEP_BULL, SWEEP_BEAR, BOS, CHOCH = range(8)


def frame(bars: list[tuple[float, float, float, float]], start: int = 0) -> pd.DataFrame:
    o, h, lo, c = zip(*bars, strict=True)
    return pd.DataFrame(
        {
            "open_time": [start + i * H for i in range(len(bars))],
            "open": o,
            "high": h,
            "low": lo,
            "close": c,
            "volume": [1.0] * len(bars),
        }
    )


def window(bars: list[tuple[float, float, float, float]], swing: int = 1) -> tuple[float, ...]:
    o, h, lo, c = (list(x) for x in zip(*bars, strict=True))
    return smc_window(o, h, lo, c, swing)


QUIET = [(100.0, 101.0, 99.0, 100.0)] * 3


def test_a_fair_value_gap_is_known_at_the_close_of_its_third_candle_and_closes_when_filled() -> (
    None
):
    first, displacement = (100.0, 101.0, 99.0, 100.5), (100.5, 106.0, 100.5, 105.5)
    third = (105.5, 107.0, 102.0, 106.0)
    assert window([*QUIET, first, displacement])[FVG_BULL] == 0
    assert window([*QUIET, first, displacement, third])[FVG_BULL] == 1  # low 102 > high 101
    partial = (106, 106, 101.5, 102)  # back into the gap, above its bottom (101)
    assert window([*QUIET, first, displacement, third, partial])[FVG_BULL] == 1
    through = (102, 102, 100.9, 101)  # down to the gap's bottom: filled
    assert window([*QUIET, first, displacement, third, through])[FVG_BULL] == 0


def test_an_order_block_needs_the_displacing_close_and_dies_when_its_low_breaks() -> None:
    down = (101, 101.5, 99.5, 100)  # a down candle
    assert window([*QUIET, down])[OB_BULL] == 0
    up = (100, 103, 100, 102.5)  # closes above the down candle's high
    assert window([*QUIET, down, up])[OB_BULL] == 1
    assert window([*QUIET, down, up, (102.5, 102.5, 99.4, 100)])[OB_BULL] == 0


def test_swings_confirm_late_then_breaks_are_bos_or_choch_and_wicks_through_are_sweeps() -> None:
    rise = [(100 + i, 101 + i, 99 + i, 100.5 + i) for i in range(4)]
    top = (104, 110, 103, 104)  # swing high 110 at index 4 ...
    after = (104, 105, 102, 103)  # ... confirmed by this lower high (swing = 1)
    assert window([*rise, top])[BOS] == 0
    sweep = (103, 111, 102.5, 108)  # wicks above 110, closes back below: bearish sweep
    assert window([*rise, top, after, sweep])[SWEEP_BEAR] == 1
    assert window([*rise, top, after, sweep])[BOS] == 0
    breakout = (108, 113, 107, 112)  # closes above 110: a break of structure up
    assert window([*rise, top, after, breakout])[BOS] == 1
    assert window([*rise, top, after, breakout])[CHOCH] == 0


def test_smc_rows_change_only_from_the_candle_that_confirms_the_pattern() -> None:
    spec = feature_spec({"smc": {"window": 20, "swing": 2}})
    base = generate(["BTC/USDT"], "1h", 200, seed=3)
    features = compute_features(base, spec)
    for t in (60, 120, 180):
        changed = base.copy()
        changed.loc[t, "high"] *= 1.2  # a new extreme at t: a swing, a sweep, a gap ...
        changed.loc[t, "close"] = changed.loc[t, "high"]
        after = compute_features(changed, spec)
        np.testing.assert_array_equal(features[:t], after[:t])


def test_the_higher_timeframe_uses_only_closed_higher_candles() -> None:
    base = generate(["BTC/USDT"], "1h", 120, seed=9, start_ms=1_704_067_200_000 + H)  # 01:00
    group = HigherTimeframe(factor=4, window=3)
    values = np.column_stack(group.batch(bars_of(base)))
    times = base["open_time"].to_numpy()
    closes_bucket = (times + H) % (4 * H) == 0
    ret = values[:, 0]
    warm = ~np.isnan(ret)
    # The last closed 4h candle's return moves only on a candle that closes a 4h candle.
    moved = np.flatnonzero(warm[1:] & warm[:-1] & (ret[1:] != ret[:-1])) + 1
    assert moved.size and closes_bucket[moved].all()
    # The first 4h candle (00:00-04:00) is partial in this series, so it never counts: the first
    # return needs the closes of the 04:00 and 08:00 candles, known at the close of 11:00's.
    first = int(np.flatnonzero(warm)[0])
    assert pd.Timestamp(times[first], unit="ms").hour == 11

    # A base candle of a 4h candle still forming changes no higher-timeframe value but those
    # read from the current close, until its 4h candle closes.
    t = int(np.flatnonzero(closes_bucket)[10]) - 2
    changed = base.copy()
    changed.loc[t, ["high", "close"]] = changed.loc[t, "close"] * 1.05
    after = np.column_stack(group.batch(bars_of(changed)))
    np.testing.assert_array_equal(values[:t], after[:t])
    assert values[t, 0] == after[t, 0]
    np.testing.assert_array_equal(values[t + 1], after[t + 1])
    assert after[t + 2, 2] != values[t + 2, 2]  # its 4h candle closed: the new high counts


def test_the_engine_tracks_higher_candles_across_a_gap_fill() -> None:
    spec = feature_spec({"htf": {"factor": 4, "window": 5}})
    base = generate(["BTC/USDT"], "1h", 200, seed=2)
    candles = to_candles(base, "1h")
    holed = candles[:100] + candles[103:]
    engine = FeatureEngine(spec)
    last = engine.warm_up(holed)
    cleaned, _ = clean_candles(base.drop(index=[100, 101, 102]), "1h")
    expected = compute_features(cleaned, spec)[-1]
    assert last is not None
    np.testing.assert_allclose(last, expected, rtol=1e-9)

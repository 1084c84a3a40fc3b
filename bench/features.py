"""Feature benchmark: incremental µs per candle (all features) and vectorized rows per second.

Runs on the real BTC/USD hourly file when ``../shared/data`` has it, else on synthetic candles.
Prints the median of several repeats, plus the slowest feature groups of the incremental path.

    .venv/bin/python bench/features.py
    .venv/bin/python bench/features.py --repeats 7 --synthetic 50000
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import pandas as pd

from kubetrade.features import FeatureEngine, compute_features, default_feature_spec, feature_spec
from kubetrade.market import generate, load_candles, to_candles

BTC_FILE = Path(__file__).resolve().parents[2] / "shared/data/coinbase_btcusd_1h.csv"


def candles_frame(synthetic: int | None) -> tuple[pd.DataFrame, str]:
    """The real BTC series, or ``synthetic`` synthetic candles when asked or when it is absent."""
    if synthetic is None and BTC_FILE.exists():
        return load_candles(BTC_FILE), f"{BTC_FILE.name}"
    n = synthetic or 20_000
    return generate(["BTC/USDT"], "1h", n, seed=1), f"synthetic BTC/USDT 1h x {n}"


def incremental_us_per_candle(frame: pd.DataFrame, repeats: int) -> float:
    """Median over repeats of the mean time of ``FeatureEngine.update`` per candle."""
    candles = to_candles(frame, "1h")
    spec = default_feature_spec()
    timings = []
    for _ in range(repeats):
        engine = FeatureEngine(spec)
        start = time.perf_counter()
        for candle in candles:
            engine.update(candle)
        timings.append((time.perf_counter() - start) / len(candles) * 1e6)
    return statistics.median(timings)


def group_us_per_candle(frame: pd.DataFrame) -> list[tuple[str, float]]:
    """``update`` time per candle of an engine computing one group only, slowest first.

    Each figure includes the engine's own per-candle work (validation, derived values).
    """
    candles = to_candles(frame, "1h")
    spec = default_feature_spec()
    costs = []
    for key, params in spec.params.items():
        engine = FeatureEngine(feature_spec({key: params}))
        start = time.perf_counter()
        for candle in candles:
            engine.update(candle)
        costs.append((key, (time.perf_counter() - start) / len(candles) * 1e6))
    return sorted(costs, key=lambda item: -item[1])


def vectorized_rows_per_s(frame: pd.DataFrame, repeats: int) -> float:
    """Median over repeats of rows per second of ``compute_features`` on the whole frame."""
    spec = default_feature_spec()
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        compute_features(frame, spec)
        timings.append(time.perf_counter() - start)
    return len(frame) / statistics.median(timings)


def main() -> None:
    """Print the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--synthetic", type=int, default=None, help="use N synthetic candles")
    args = parser.parse_args()
    frame, source = candles_frame(args.synthetic)
    spec = default_feature_spec()
    print(f"data: {source}, {len(frame)} candles; {len(spec.names)} features, warmup {spec.warmup}")
    print(
        f"incremental: {incremental_us_per_candle(frame, args.repeats):.1f} µs/candle "
        f"(FeatureEngine.update, all features, median of {args.repeats})"
    )
    print(
        f"vectorized:  {vectorized_rows_per_s(frame, args.repeats):,.0f} rows/s "
        f"(compute_features, median of {args.repeats})"
    )
    print("incremental cost by group (µs/candle, one-group engine, engine overhead included):")
    for key, cost in group_us_per_candle(frame):
        print(f"  {key:<14} {cost:6.2f}")


if __name__ == "__main__":
    main()

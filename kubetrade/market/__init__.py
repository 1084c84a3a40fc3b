"""Market data: candle files, cleaning, resampling, the synthetic market and exchange polling.

The candle frame (see ``kubetrade.market.frame``) is the tabular form shared by training,
backtests and replay; ``to_candles`` turns it into the domain Candles the feed publishes.
"""

from kubetrade.market.clean import CleaningReport, clean_candles
from kubetrade.market.frame import (
    CANDLE_COLUMNS,
    from_candles,
    infer_frame_timeframe,
    infer_timeframe,
    to_candles,
)
from kubetrade.market.loaders import (
    LAYOUTS,
    LoadedCandles,
    detect_layout,
    load_candles,
    load_candles_with_report,
)
from kubetrade.market.resample import resample
from kubetrade.market.symbols import normalize_symbol
from kubetrade.market.synthetic import REGIMES, generate, iter_candles, simulate

__all__ = [
    "CANDLE_COLUMNS",
    "LAYOUTS",
    "REGIMES",
    "CleaningReport",
    "LoadedCandles",
    "clean_candles",
    "detect_layout",
    "from_candles",
    "generate",
    "infer_frame_timeframe",
    "infer_timeframe",
    "iter_candles",
    "load_candles",
    "load_candles_with_report",
    "normalize_symbol",
    "resample",
    "simulate",
    "to_candles",
]

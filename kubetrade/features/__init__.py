"""Features: one definition, two paths (vectorized for training, incremental for streaming).

Every indicator group is one class with ``batch`` (numpy/pandas over a whole series, for
training and backtests) and ``start``/``step`` (one candle at a time with ring buffers and
recursive state, for the inference worker). Groups are registered in one ordered registry;
a ``FeatureSpec`` names the groups' parameters, and the feature names, their order and the
warm-up follow from it. Both paths agree to ``1e-9 * max(1, |value|)`` (tested on real data).

All features are scale-free (returns, ratios to price, normalized oscillators), so a model
trained at one price level works at another.

Warm-up: ``spec.warmup`` candles make every feature defined *and settled*: windowed features
need their window, and recursive ones (EMA, Wilder smoothing) run until the influence of the
series start has decayed below ``SETTLE_TOLERANCE``. So from candle ``warmup`` on, a row depends
only on the last ``warmup`` candles (up to that tolerance): training rows, backtest rows and
the rows of an inference worker that replayed just ``warmup`` candles are the same numbers.
``compute_features`` returns NaN rows before index ``warmup - 1``; ``FeatureEngine.update``
returns None for the first ``warmup - 1`` candles.

Restarting a ``FeatureEngine``: replay the last ``spec.warmup`` candles (``warm_up``); there is
no state serialization, as the replay reproduces the state to the tolerance above.

Layout: ``inputs`` (the two paths' inputs), ``indicator`` (the group base class), the groups by
family (``returns``, ``trend``, ``oscillators``, ``volatility``, ``volume``, ``candle``), ``spec``
(registry, ``FeatureSpec`` and its hash), ``choice`` (a spec from a list such as
``sma(window=30),rsi`` or a file: ``kubetrade train --features``), ``compute`` (vectorized
path) and ``engine`` (incremental path). Import from this package: the names below are its
public surface.

Conventions: the candle before the first one is taken to close at the first open (so the first
candle has a return, a true range and a gap of its own; these feed only the settling part).
Series must be gap-free (the cleaner fills gaps with flat zero-volume candles; the engine does
the same for gaps in a stream), so features see the same candles in training and serving.
"""

from __future__ import annotations

from kubetrade.features.candle import Calendar, CandleShape
from kubetrade.features.compute import compute_features
from kubetrade.features.engine import FeatureEngine
from kubetrade.features.indicator import GroupParams, Indicator, ParamValue
from kubetrade.features.inputs import Array, Bars, Tick
from kubetrade.features.mtf import HigherTimeframe
from kubetrade.features.oscillators import CommodityChannel, Rsi, Stochastic, WilliamsR
from kubetrade.features.returns import Efficiency, LogReturns, RateOfChange, RealizedVolatility
from kubetrade.features.series import SETTLE_TOLERANCE
from kubetrade.features.smc import SmartMoney
from kubetrade.features.spec import (
    DEFAULT_GROUPS,
    FEATURE_VERSION,
    REGISTRY,
    FeatureMismatchError,
    FeatureSpec,
    check_computable,
    check_feature_spec,
    default_feature_spec,
    feature_spec,
)
from kubetrade.features.trend import DirectionalMovement, EmaRatio, Macd, SmaRatio
from kubetrade.features.volatility import AverageTrueRange, Bollinger, Channel
from kubetrade.features.volume import VolumeFlow, VolumeStats, VwapDistance

__all__ = [
    "DEFAULT_GROUPS",
    "FEATURE_VERSION",
    "REGISTRY",
    "SETTLE_TOLERANCE",
    "Array",
    "AverageTrueRange",
    "Bars",
    "Bollinger",
    "Calendar",
    "CandleShape",
    "Channel",
    "CommodityChannel",
    "DirectionalMovement",
    "Efficiency",
    "EmaRatio",
    "FeatureEngine",
    "FeatureMismatchError",
    "FeatureSpec",
    "GroupParams",
    "HigherTimeframe",
    "Indicator",
    "LogReturns",
    "Macd",
    "ParamValue",
    "RateOfChange",
    "RealizedVolatility",
    "Rsi",
    "SmaRatio",
    "SmartMoney",
    "Stochastic",
    "Tick",
    "VolumeFlow",
    "VolumeStats",
    "VwapDistance",
    "WilliamsR",
    "check_computable",
    "check_feature_spec",
    "compute_features",
    "default_feature_spec",
    "feature_spec",
]

"""Strategies: small pure classes from a candle's features and prediction to an intent.

``spec.strategy.type`` chooses one: a built-in (``builtin``) or one an installed package
registers under the entry-point group ``kubetrade.strategies`` (``registry``). The signal
worker computes the features a strategy declares (and the model's prediction when it needs
one); the trading engine asks it for an intent on every candle and applies risk, sizing and the
broker itself.

Writing one::

    from kubetrade.features import FeatureSpec, feature_spec
    from kubetrade.strategies import Intent, Strategy, StrategyInputs, StrategyParams

    class BreakoutParams(StrategyParams):
        window: int = 20

    class Breakout(Strategy[BreakoutParams]):
        \"\"\"Long on a close above the channel, exit below its middle.\"\"\"

        params_model = BreakoutParams

        def features(self) -> FeatureSpec:
            return feature_spec({"channel": {"window": self.params.window}})

        def decide(self, inputs, holding):
            ...
"""

from kubetrade.strategies.base import (
    Intent,
    PositionSide,
    Strategy,
    StrategyInputs,
    StrategyParams,
)
from kubetrade.strategies.registry import (
    ENTRY_POINT_GROUP,
    StrategyError,
    StrategyInfo,
    available,
    make_strategy,
    strategy_class,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "Intent",
    "PositionSide",
    "Strategy",
    "StrategyError",
    "StrategyInfo",
    "StrategyInputs",
    "StrategyParams",
    "available",
    "make_strategy",
    "strategy_class",
]

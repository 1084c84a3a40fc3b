"""The built-in strategies: the model threshold, moving-average crossovers, momentum, mean
reversion on Bollinger or RSI bands, and a hybrid whose rule entries need the model's agreement.

Rule strategies read registry features (scale-free ratios, so the rules are the textbook ones in
other words): ``sma_ratio_w = close / SMA(w) - 1``, so the fast average is above the slow one
exactly when ``sma_ratio_fast < sma_ratio_slow`` (likewise ``ema_ratio``); ``roc_w`` is
``close / close w candles ago - 1``; ``bb_pct_b_w`` is Bollinger %B (0 on the lower band, 1 on
the upper); ``rsi_w`` is RSI / 100.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, model_validator

from kubetrade.features import FeatureSpec, feature_spec
from kubetrade.strategies.base import (
    Intent,
    PositionSide,
    Strategy,
    StrategyInputs,
    StrategyParams,
)

# Enum members read once: in Python 3.11 reading one through its class goes through
# EnumType.__getattr__ (about 0.15 us more than a module global), and ``decide`` runs on every
# candle of every backtest.
_HOLD, _EXIT = Intent.HOLD, Intent.EXIT
_ENTER_LONG, _ENTER_SHORT = Intent.ENTER_LONG, Intent.ENTER_SHORT
_LONG, _SHORT = PositionSide.LONG, PositionSide.SHORT


class ThresholdParams(StrategyParams):
    """Thresholds on the model's probability that the price goes up."""

    long_above: float = Field(default=0.6, ge=0, le=1)
    exit_below: float = Field(default=0.5, ge=0, le=1)
    allow_short: bool = False
    short_below: float = Field(default=0.4, ge=0, le=1)
    exit_above: float = Field(default=0.5, ge=0, le=1)
    min_confidence: float = Field(default=0.0, ge=0, le=1)

    @model_validator(mode="after")
    def _ordered(self) -> ThresholdParams:
        if self.exit_below > self.long_above:
            raise ValueError("exitBelow must not exceed longAbove")
        if self.allow_short and self.exit_above < self.short_below:
            raise ValueError("exitAbove must not be below shortBelow")
        return self


class Threshold(Strategy[ThresholdParams]):
    """Model threshold: long above longAbove, exit below exitBelow (shorts mirrored).

    No prediction, or ``confidence < minConfidence``: hold (exits included). Comparisons are
    strict.
    """

    params_model = ThresholdParams
    needs_model = True

    def decide(self, inputs: StrategyInputs, holding: PositionSide | None) -> Intent:
        """The threshold rules on ``prediction.prob_up``."""
        prediction, rule = inputs.prediction, self.params
        if prediction is None or prediction.confidence < rule.min_confidence:
            return _HOLD
        p = prediction.prob_up
        if holding is _LONG:
            return _EXIT if p < rule.exit_below else _HOLD
        if holding is _SHORT:
            return _EXIT if p > rule.exit_above else _HOLD
        if p > rule.long_above:
            return _ENTER_LONG
        if rule.allow_short and p < rule.short_below:
            return _ENTER_SHORT
        return _HOLD


class CrossoverParams(StrategyParams):
    """Two moving averages: a fast and a slow window (candles)."""

    fast: int = Field(default=10, ge=1, le=10_000)
    slow: int = Field(default=30, ge=2, le=10_000)
    allow_short: bool = False
    entry_on_cross: bool = Field(
        default=True,
        description="Enter only on the candle of a cross (as backtesting.py's SmaCross); false "
        "enters whenever flat on the right side, e.g. again after a stop-loss.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> CrossoverParams:
        if self.fast >= self.slow:
            raise ValueError(f"fast ({self.fast}) must be below slow ({self.slow})")
        return self


def _crossover(
    params: CrossoverParams,
    inputs: StrategyInputs,
    holding: PositionSide | None,
    fast: str,
    slow: str,
) -> Intent:
    """Crossover rules on ratio features ``close / MA - 1`` (smaller ratio = higher average)."""
    now, before = inputs.features, inputs.previous
    if now is None or before is None:
        return _HOLD
    above = now[fast] < now[slow]
    below = now[fast] > now[slow]
    if holding is _LONG:
        return _EXIT if below else _HOLD
    if holding is _SHORT:
        return _EXIT if above else _HOLD
    was_above = before[fast] < before[slow]
    was_below = before[fast] > before[slow]
    if above and not (params.entry_on_cross and was_above):
        return _ENTER_LONG
    if below and params.allow_short and not (params.entry_on_cross and was_below):
        return _ENTER_SHORT
    return _HOLD


class _Crossover(Strategy[CrossoverParams]):
    """The crossover rules on two ratio features of one family (``family``)."""

    params_model = CrossoverParams
    family: ClassVar[str]

    def __init__(self, params: CrossoverParams) -> None:
        super().__init__(params)
        # The two feature names, once: decide runs on every candle.
        self._averages = f"{self.family}_{params.fast}", f"{self.family}_{params.slow}"

    def decide(self, inputs: StrategyInputs, holding: PositionSide | None) -> Intent:
        """Cross up: enter long; fast below slow: exit (shorts mirrored with allowShort)."""
        return _crossover(self.params, inputs, holding, *self._averages)


class SmaCrossover(_Crossover):
    """SMA crossover: long when the fast SMA crosses above the slow one, exit when below."""

    family = "sma_ratio"

    def features(self) -> FeatureSpec:
        """``sma_ratio`` at the fast and slow windows."""
        return feature_spec({"sma_ratio": {"windows": [self.params.fast, self.params.slow]}})


class EmaCrossover(_Crossover):
    """EMA crossover: long when the fast EMA crosses above the slow one, exit when below."""

    family = "ema_ratio"

    def features(self) -> FeatureSpec:
        """``ema_ratio`` at the fast and slow spans."""
        return feature_spec({"ema_ratio": {"spans": [self.params.fast, self.params.slow]}})


class MomentumParams(StrategyParams):
    """Rate of change over ``window`` candles against an entry and an exit threshold."""

    window: int = Field(default=12, ge=1, le=10_000)
    enter_above: float = Field(
        default=0.02, gt=0, le=10, description="Enter long when ROC > this (short: < -this)."
    )
    exit_below: float = Field(
        default=0.0, ge=-10, le=10, description="Exit a long when ROC < this (short: > -this)."
    )
    allow_short: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> MomentumParams:
        if self.exit_below > self.enter_above:
            raise ValueError("exitBelow must not exceed enterAbove")
        return self


class Momentum(Strategy[MomentumParams]):
    """Momentum: long while the rate of change is above a threshold, exit when it fades."""

    params_model = MomentumParams

    def features(self) -> FeatureSpec:
        """``roc`` at the window."""
        return feature_spec({"roc": {"windows": [self.params.window]}})

    def decide(self, inputs: StrategyInputs, holding: PositionSide | None) -> Intent:
        """ROC > enterAbove: long; ROC < exitBelow: exit (shorts mirrored)."""
        if inputs.features is None:
            return _HOLD
        p = self.params
        roc = inputs.features[f"roc_{p.window}"]
        if holding is _LONG:
            return _EXIT if roc < p.exit_below else _HOLD
        if holding is _SHORT:
            return _EXIT if roc > -p.exit_below else _HOLD
        if roc > p.enter_above:
            return _ENTER_LONG
        if p.allow_short and roc < -p.enter_above:
            return _ENTER_SHORT
        return _HOLD


class BollingerParams(StrategyParams):
    """Bollinger bands of ``window`` candles at ``width`` standard deviations; levels in %B."""

    window: int = Field(default=20, ge=2, le=10_000)
    width: float = Field(default=2.0, gt=0, le=10)
    enter_below: float = Field(default=0.0, ge=-10, le=10, description="Long when %B < this.")
    exit_at: float = Field(default=0.5, ge=-10, le=10, description="Exit when %B crosses this.")
    enter_above: float = Field(default=1.0, ge=-10, le=10, description="Short when %B > this.")
    allow_short: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> BollingerParams:
        if not self.enter_below < self.exit_at < self.enter_above:
            raise ValueError("levels must be ordered: enterBelow < exitAt < enterAbove")
        return self

    def levels(self) -> tuple[float, float, float]:
        """The %B levels."""
        return self.enter_below, self.exit_at, self.enter_above


class RsiParams(StrategyParams):
    """RSI of ``window`` candles (Wilder); levels on the usual 0-100 scale."""

    window: int = Field(default=14, ge=2, le=10_000)
    oversold: float = Field(default=30, gt=0, lt=100, description="Long when RSI < this.")
    exit_at: float = Field(default=50, gt=0, lt=100, description="Exit when RSI crosses this.")
    overbought: float = Field(default=70, gt=0, lt=100, description="Short when RSI > this.")
    allow_short: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> RsiParams:
        if not self.oversold < self.exit_at < self.overbought:
            raise ValueError("levels must be ordered: oversold < exitAt < overbought")
        return self

    def levels(self) -> tuple[float, float, float]:
        """The levels on the feature's 0-1 scale."""
        return self.oversold / 100, self.exit_at / 100, self.overbought / 100


def _bands(
    levels: tuple[float, float, float],
    allow_short: bool,
    value: float | None,
    holding: PositionSide | None,
) -> Intent:
    """Band rules: (long entry below, exit at, short entry above) in the feature's units."""
    if value is None:
        return _HOLD
    low, middle, high = levels
    if holding is _LONG:
        return _EXIT if value > middle else _HOLD
    if holding is _SHORT:
        return _EXIT if value < middle else _HOLD
    if value < low:
        return _ENTER_LONG
    if allow_short and value > high:
        return _ENTER_SHORT
    return _HOLD


class BollingerReversion(Strategy[BollingerParams]):
    """Mean reversion on Bollinger bands: long below the lower band, exit at the mean."""

    params_model = BollingerParams

    def features(self) -> FeatureSpec:
        """``bollinger`` at the window and width."""
        p = self.params
        return feature_spec({"bollinger": {"window": p.window, "width": p.width}})

    def decide(self, inputs: StrategyInputs, holding: PositionSide | None) -> Intent:
        """%B < enterBelow: long; %B > exitAt: exit (shorts mirrored above enterAbove)."""
        value = (
            None if inputs.features is None else inputs.features[f"bb_pct_b_{self.params.window}"]
        )
        return _bands(self.params.levels(), self.params.allow_short, value, holding)


class RsiReversion(Strategy[RsiParams]):
    """Mean reversion on RSI bands: long when oversold, exit at the middle."""

    params_model = RsiParams

    def features(self) -> FeatureSpec:
        """``rsi`` at the window."""
        return feature_spec({"rsi": {"windows": [self.params.window]}})

    def decide(self, inputs: StrategyInputs, holding: PositionSide | None) -> Intent:
        """RSI < oversold: long; RSI > exitAt: exit (shorts mirrored above overbought)."""
        value = None if inputs.features is None else inputs.features[f"rsi_{self.params.window}"]
        return _bands(self.params.levels(), self.params.allow_short, value, holding)


class HybridParams(StrategyParams):
    """A rule strategy whose entries need the model's agreement."""

    rule: str = Field(
        default="sma-crossover",
        min_length=1,
        max_length=63,
        pattern=r"^[a-z][a-z0-9-]*$",
        description="Type of the rule strategy (one that needs no model).",
    )
    rule_params: dict[str, Any] = Field(
        default_factory=dict, description="Parameters of the rule strategy."
    )
    prob_above: float = Field(
        default=0.55,
        ge=0,
        le=1,
        description="A long entry needs the probability above this.",
    )
    prob_below: float = Field(
        default=0.45, ge=0, le=1, description="A short entry needs the probability below this."
    )


class Hybrid(Strategy[HybridParams]):
    """Hybrid: a rule's entries, taken only when the model agrees; the rule's exits."""

    params_model = HybridParams
    needs_model = True

    def __init__(self, params: HybridParams) -> None:
        # The rule is resolved through the registry (built-ins and installed plugins).
        from kubetrade.strategies.registry import rule_strategy

        self.rule = rule_strategy(params.rule, params.rule_params)
        super().__init__(params)

    def features(self) -> FeatureSpec | None:
        """The rule's features."""
        return self.rule.feature_spec

    def decide(self, inputs: StrategyInputs, holding: PositionSide | None) -> Intent:
        """The rule's intent; an entry is held back unless the probability agrees."""
        intent = self.rule.decide(inputs, holding)
        p = None if inputs.prediction is None else inputs.prediction.prob_up
        if intent is _ENTER_LONG and (p is None or not p > self.params.prob_above):
            return _HOLD
        if intent is _ENTER_SHORT and (p is None or not p < self.params.prob_below):
            return _HOLD
        return intent


BUILTINS: dict[str, type[Strategy[Any]]] = {
    "threshold": Threshold,
    "sma-crossover": SmaCrossover,
    "ema-crossover": EmaCrossover,
    "momentum": Momentum,
    "bollinger-reversion": BollingerReversion,
    "rsi-reversion": RsiReversion,
    "hybrid": Hybrid,
}

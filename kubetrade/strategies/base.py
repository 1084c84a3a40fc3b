"""What a strategy is: a small pure class from one candle's inputs to an intent.

A strategy declares the features it reads (a :class:`~kubetrade.features.FeatureSpec` the signal
worker computes with the shared feature code, both paths) and whether it needs a model's
prediction; on every candle it turns those inputs and the side held into an :class:`Intent`.
It never touches I/O, risk, sizing or the broker: the trading engine applies the intent through
its gates, sizing and the paper (or live) broker, and never reverses a position in one step.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from kubetrade.domain import Prediction
from kubetrade.features import FeatureSpec


class PositionSide(StrEnum):
    """Direction of a position."""

    LONG = "long"
    SHORT = "short"

    @property
    def sign(self) -> int:
        """+1 for long, -1 for short: quantity times sign is the signed exposure."""
        return 1 if self is _LONG else -1


# Read once: in Python 3.11 reading a member through its class costs about 0.15 us more
# (EnumType.__getattr__), and ``sign`` values a position on every candle.
_LONG = PositionSide.LONG


class Intent(StrEnum):
    """What the strategy wants on this candle."""

    HOLD = "hold"
    ENTER_LONG = "enter_long"
    ENTER_SHORT = "enter_short"
    EXIT = "exit"


class StrategyParams(BaseModel):
    """Base of a strategy's parameters: camelCase in manifests, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        allow_inf_nan=False,
    )


# Not frozen: one is made per candle, and a frozen dataclass's __init__ costs several times a
# plain one's (see kubetrade.domain). Nothing assigns to it after creation.
@dataclass(slots=True)
class StrategyInputs:
    """What a strategy sees on one closed candle.

    ``features`` are this candle's values of the strategy's declared features and ``previous``
    those of the candle before (None while the features warm up); ``prediction`` is the model's
    (None without a model or while it warms up).
    """

    prediction: Prediction | None = None
    features: Mapping[str, float] | None = None
    previous: Mapping[str, float] | None = None


P = TypeVar("P", bound=StrategyParams)


class Strategy(ABC, Generic[P]):
    """A trading rule: inputs of one candle and the side held -> intent.

    Subclasses set ``params_model`` (their Pydantic parameters, validated from
    ``spec.strategy.params``), ``needs_model`` and, when they read features, return them from
    ``features``. The first line of the class docstring is what ``kubetrade strategies`` shows.
    """

    params_model: ClassVar[type[StrategyParams]] = StrategyParams
    needs_model: ClassVar[bool] = False

    def __init__(self, params: P) -> None:
        self.params = params
        self.feature_spec = self.features()

    def __eq__(self, other: object) -> bool:
        # The same class with the same parameters is the same rule (specs compare equal).
        return type(other) is type(self) and getattr(other, "params", None) == self.params

    def __hash__(self) -> int:
        return hash((type(self), self.params))

    def __reduce__(self) -> tuple[Any, ...]:
        # Copied or pickled (with the spec that holds it) by rebuilding from the parameters:
        # a FeatureSpec's read-only mappings cannot be pickled.
        return (type(self), (self.params,))

    def features(self) -> FeatureSpec | None:
        """The features this strategy reads (None: it reads none); called once, at creation."""
        return None

    def ready(self, inputs: StrategyInputs) -> bool:
        """True when ``inputs`` hold what ``decide`` needs (a warm model and warm features)."""
        if self.needs_model and inputs.prediction is None:
            return False
        return self.feature_spec is None or (
            inputs.features is not None and inputs.previous is not None
        )

    @abstractmethod
    def decide(self, inputs: StrategyInputs, holding: PositionSide | None) -> Intent:
        """The intent on this candle given its inputs and the side held (None when flat)."""


def build(strategy: type[Strategy[Any]], params: Mapping[str, Any]) -> Strategy[Any]:
    """An instance of ``strategy`` with ``params`` validated by its ``params_model``
    (raises pydantic's ValidationError naming every bad field)."""
    return strategy(
        strategy.params_model.model_validate(dict(params), by_alias=True, by_name=False)
    )

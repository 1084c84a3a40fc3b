"""The threshold strategy: what the model's probability asks for, before risk has its say.

Rules, on ``prediction.prob_up`` (``p``):

- no prediction (the model is warming up), or ``confidence < minConfidence``: hold. A
  low-confidence prediction is ignored entirely, for exits as well as entries.
- flat: enter long when ``p > longAbove``; with ``allowShort``, enter short when
  ``p < shortBelow``. Comparisons are strict.
- long: exit when ``p < exitBelow``.  Short: exit when ``p > exitAbove``.
- a position is never reversed in one step: an exit signal closes it, and a later candle's
  signal may open the other side once flat.
"""

from __future__ import annotations

from enum import StrEnum

from kubetrade.domain import Prediction
from kubetrade.spec import StrategySpec


class PositionSide(StrEnum):
    """Direction of a position."""

    LONG = "long"
    SHORT = "short"

    @property
    def sign(self) -> int:
        """+1 for long, -1 for short: quantity times sign is the signed exposure."""
        return 1 if self is PositionSide.LONG else -1


class Intent(StrEnum):
    """What the strategy wants on this candle."""

    HOLD = "hold"
    ENTER_LONG = "enter_long"
    ENTER_SHORT = "enter_short"
    EXIT = "exit"


def decide(
    strategy: StrategySpec, prediction: Prediction | None, holding: PositionSide | None
) -> Intent:
    """The strategy's intent given the prediction and the side held (None when flat)."""
    if prediction is None or prediction.confidence < strategy.min_confidence:
        return Intent.HOLD
    p = prediction.prob_up
    if holding is PositionSide.LONG:
        return Intent.EXIT if p < strategy.exit_below else Intent.HOLD
    if holding is PositionSide.SHORT:
        return Intent.EXIT if p > strategy.exit_above else Intent.HOLD
    if p > strategy.long_above:
        return Intent.ENTER_LONG
    if strategy.allow_short and p < strategy.short_below:
        return Intent.ENTER_SHORT
    return Intent.HOLD

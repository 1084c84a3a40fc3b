"""Protective exits: ATR stop-loss, take-profit, trailing stop, time exit.

Levels are fixed when the entry fills:

- stop distance = ``atrMultiplier * ATR(atrPeriod)``, the ATR as of the candle whose close
  decided the entry; the stop sits that far below a long's fill price (above a short's).
- take-profit sits ``riskReward`` stop distances beyond the fill price. Without ``stopLoss``
  there is no stop distance, hence no take-profit either.
- trailing stop: armed once the best price since entry (highest high of a long, lowest low of a
  short) is ``activationPct`` beyond the fill price; it then sits ``trailPct`` behind the best
  price. The effective stop is the tighter of the ATR stop and the armed trail.

On each candle, with the levels as they stood at its open (the candle's own high and low only
move the trail for the *next* candle, since the order of the high and the low inside a candle is
unknown):

1. the open beyond the stop (gap): the stop fills at the open;
2. the open beyond the take-profit: the take-profit fills at the open (a better price);
3. the low (long) / high (short) touches the stop: the stop fills at the stop price;
4. the high (long) / low (short) touches the take-profit: it fills at the take-profit price.

When both the stop and the take-profit lie inside one candle, the stop is assumed to have fired
first: the conservative reading of a candle whose path is unknown. Stop fills are stop-market
orders and pay slippage; take-profits are limit orders and do not (see ``broker``).

The time exit (``maxHolding``, counted from the entry fill to the candle's close) does not fill
inside the candle: it creates a market order for the next open, like a signal exit.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubetrade.domain import Candle, OrderReason
from kubetrade.spec import RiskSpec, TrailingStopSpec
from kubetrade.trading.portfolio import Position
from kubetrade.trading.strategy import PositionSide


@dataclass(frozen=True, slots=True)
class ProtectiveLevels:
    """Stop and take-profit prices of a new position (None when not configured)."""

    stop_price: float | None
    take_profit_price: float | None


@dataclass(frozen=True, slots=True)
class ExitHit:
    """An exit that fired inside a candle: why, at what base price, and if it is a limit."""

    reason: OrderReason
    price: float
    is_limit: bool


def stop_distance(risk: RiskSpec, atr: float | None) -> float | None:
    """``atrMultiplier * ATR``, or None without a stop-loss or before the ATR is ready."""
    if risk.stop_loss is None or atr is None:
        return None
    return risk.stop_loss.atr_multiplier * atr


def protective_levels(
    risk: RiskSpec, side: PositionSide, entry_price: float, distance: float | None
) -> ProtectiveLevels:
    """Stop and take-profit prices around a fill at ``entry_price``."""
    if distance is None:
        return ProtectiveLevels(None, None)
    stop = entry_price - side.sign * distance
    take_profit = None
    if risk.take_profit is not None:
        take_profit = entry_price + side.sign * risk.take_profit.risk_reward * distance
    return ProtectiveLevels(stop, take_profit)


def trailing_level(position: Position, trailing: TrailingStopSpec | None) -> float | None:
    """The armed trailing stop price, or None."""
    if trailing is None or not position.trailing_armed:
        return None
    return position.best_price * (1 - position.side.sign * trailing.trail_pct / 100)


def _effective_stop(
    position: Position, trailing: TrailingStopSpec | None
) -> tuple[float, OrderReason] | None:
    """The stop in force (price, and whether the ATR stop or the trail), or None. A tuple, not a
    dataclass: it is made on every candle a position is open."""
    stop = position.stop_price
    trail = trailing_level(position, trailing)
    if trail is None:
        return None if stop is None else (stop, OrderReason.STOP_LOSS)
    if stop is None or position.side.sign * (trail - stop) > 0:
        return trail, OrderReason.TRAILING_STOP
    return stop, OrderReason.STOP_LOSS


def _adverse(side: PositionSide, price: float, level: float) -> bool:
    """True when ``price`` is at or beyond ``level`` against the position."""
    return price <= level if side is PositionSide.LONG else price >= level


def _favourable(side: PositionSide, price: float, level: float) -> bool:
    """True when ``price`` is at or beyond ``level`` in the position's favour."""
    return price >= level if side is PositionSide.LONG else price <= level


def intrabar_exit(
    position: Position, candle: Candle, trailing: TrailingStopSpec | None
) -> ExitHit | None:
    """The stop or take-profit that fires inside ``candle``, if any (rules in the module doc)."""
    side = position.side
    stop = _effective_stop(position, trailing)
    take_profit = position.take_profit_price
    worst = candle.low if side is PositionSide.LONG else candle.high
    best = candle.high if side is PositionSide.LONG else candle.low
    if stop is not None and _adverse(side, candle.open, stop[0]):
        return ExitHit(stop[1], candle.open, is_limit=False)
    if take_profit is not None and _favourable(side, candle.open, take_profit):
        return ExitHit(OrderReason.TAKE_PROFIT, candle.open, is_limit=True)
    if stop is not None and _adverse(side, worst, stop[0]):
        return ExitHit(stop[1], stop[0], is_limit=False)
    if take_profit is not None and _favourable(side, best, take_profit):
        return ExitHit(OrderReason.TAKE_PROFIT, take_profit, is_limit=True)
    return None


def advance_trailing(
    position: Position, candle: Candle, trailing: TrailingStopSpec | None
) -> tuple[float, bool]:
    """Best price and armed flag after ``candle`` (the candle's own extreme is included)."""
    if position.side is PositionSide.LONG:
        best = max(position.best_price, candle.high)
    else:
        best = min(position.best_price, candle.low)
    armed = position.trailing_armed
    if trailing is not None and not armed:
        profit_pct = position.side.sign * (best / position.entry_price - 1) * 100
        armed = profit_pct >= trailing.activation_pct
    return best, armed


def time_exit_due(position: Position, now: int, max_holding_seconds: int | None) -> bool:
    """True once the position has been held ``maxHolding`` or longer at time ``now`` (ms)."""
    if max_holding_seconds is None:
        return False
    return now - position.entry_time >= max_holding_seconds * 1000

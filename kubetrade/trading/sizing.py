"""Position sizing: how much to buy or sell short on an entry signal.

All methods size a notional in quote currency at the reference price (the signal candle's
close), from the account equity at that close:

- ``kelly``: ``f* = p - (1 - p) / b`` with ``p = prob_up`` for a long, ``1 - prob_up`` for a
  short, and ``b = payoffRatio``; the bet is ``kellyFraction * f*`` of equity. No bet when
  ``f* <= 0`` (the model sees no edge at that payoff).
- ``fixed-fraction``: ``fractionPct`` of equity.
- ``volatility``: risk ``riskPerTradePct`` of equity over the stop distance, i.e. a quantity of
  ``equity * riskPerTradePct / 100 / stop distance``. Needs ``risk.stopLoss``.

Then two caps: ``maxPositionPct`` of equity, and buying power (see ``portfolio``) divided by the
worst-case cost factor (slippage and fee), so the fill can be paid for. The quantity is rounded
down by ``quantity.round_quantity``.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubetrade.spec import SizingSpec
from kubetrade.trading.outputs import Rejection
from kubetrade.trading.quantity import round_quantity
from kubetrade.trading.strategy import PositionSide


@dataclass(frozen=True, slots=True)
class SizingRequest:
    """What sizing needs to know about one entry."""

    side: PositionSide
    # None when the strategy uses no model (the spec refuses kelly sizing for those).
    prob_up: float | None
    price: float
    equity: float
    buying_power: float
    stop_distance: float | None
    cost_factor: float


@dataclass(frozen=True, slots=True)
class Sized:
    """A sized entry: the quantity and which cap, if any, bound it."""

    quantity: float
    capped_by: str | None


def kelly_fraction(win_probability: float, payoff_ratio: float) -> float:
    """Full Kelly fraction ``p - (1 - p) / b``."""
    return win_probability - (1 - win_probability) / payoff_ratio


def _target_notional(sizing: SizingSpec, request: SizingRequest) -> float | Rejection:
    equity = request.equity
    if sizing.method == "kelly":
        if request.prob_up is None:
            return Rejection("no_probability", "kelly sizing needs the model's probability")
        p = request.prob_up if request.side is PositionSide.LONG else 1 - request.prob_up
        full = kelly_fraction(p, sizing.payoff_ratio)
        if full <= 0:
            return Rejection(
                "no_edge",
                f"Kelly f* = {full:.4f} <= 0 at win probability {p:.4f} and payoff ratio "
                f"{sizing.payoff_ratio:g}: no bet",
            )
        return full * sizing.kelly_fraction * equity
    if sizing.method == "fixed-fraction":
        return sizing.fraction_pct / 100 * equity
    distance = request.stop_distance
    if distance is None:
        return Rejection(
            "no_stop_distance",
            "volatility sizing risks a share of equity down to the stop: set risk.stopLoss",
        )
    if distance <= 0:
        return Rejection("zero_volatility", "ATR is 0, so the stop distance is 0: no size")
    return sizing.risk_per_trade_pct / 100 * equity / distance * request.price


def size_entry(sizing: SizingSpec, request: SizingRequest) -> Sized | Rejection:
    """The quantity to enter, or why there is none."""
    if request.equity <= 0:
        return Rejection("no_equity", f"equity is {request.equity:.2f}: nothing to size from")
    target = _target_notional(sizing, request)
    if isinstance(target, Rejection):
        return target
    notional, capped_by = target, None
    position_cap = sizing.max_position_pct / 100 * request.equity
    if position_cap < notional:
        notional, capped_by = position_cap, "max_position_pct"
    cash_cap = request.buying_power / request.cost_factor
    if cash_cap < notional:
        notional, capped_by = cash_cap, "buying_power"
    quantity = round_quantity(notional / request.price)
    if quantity <= 0:
        if capped_by == "buying_power":
            return Rejection(
                "no_buying_power",
                f"buying power {request.buying_power:.2f} cannot pay for any quantity",
            )
        return Rejection("size_zero", f"sized notional {notional:.8f} rounds to quantity 0")
    return Sized(quantity, capped_by)

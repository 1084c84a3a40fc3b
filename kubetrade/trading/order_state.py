"""Live orders as a state machine, and their fills applied exactly once.

::

    new ──▶ open ──▶ partially_filled ──▶ filled
     │        │              │
     │        └──────────────┴──▶ cancelled | expired
     └──▶ rejected (refused by the validator or the exchange; or never reached it)

``new`` is the journaled intent: committed before the request is sent, so a crash after the
send leaves a record to resolve against the exchange by client id. Exchange answers can arrive
late or twice (a poll racing an acknowledgement): :func:`advance` only moves forward (status by
the order above, filled amount never down) and applies each trade once, by trade id.

Fees are kept per currency as the exchange charged them; :func:`fee_in_quote` converts them for
equity.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from kubetrade.domain import Side


class LiveStatus(StrEnum):
    """Where a live order is in its life."""

    NEW = "new"
    OPEN = "open"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    EXPIRED = "expired"


TERMINAL = frozenset(
    {LiveStatus.FILLED, LiveStatus.CANCELLED, LiveStatus.REJECTED, LiveStatus.EXPIRED}
)
_RANK = {
    LiveStatus.NEW: 0,
    LiveStatus.OPEN: 1,
    LiveStatus.PARTIALLY_FILLED: 2,
}
# ccxt's unified order statuses.
_CCXT_STATUS = {
    "open": LiveStatus.OPEN,
    "closed": LiveStatus.FILLED,
    "canceled": LiveStatus.CANCELLED,
    "cancelled": LiveStatus.CANCELLED,
    "expired": LiveStatus.EXPIRED,
    "rejected": LiveStatus.REJECTED,
}


@dataclass(frozen=True, slots=True)
class ExchangeTrade:
    """One execution of an order, as the exchange reports it."""

    trade_id: str
    price: float
    amount: float
    fee: float
    fee_currency: str | None
    time: int

    @classmethod
    def from_ccxt(cls, trade: Mapping[str, Any]) -> ExchangeTrade:
        """A ccxt unified trade."""
        fee = trade.get("fee") or {}
        return cls(
            trade_id=str(trade["id"]),
            price=float(trade["price"]),
            amount=float(trade["amount"]),
            fee=float(fee.get("cost") or 0.0),
            fee_currency=fee.get("currency"),
            time=int(trade["timestamp"]),
        )


@dataclass(frozen=True, slots=True)
class OrderUpdate:
    """What the exchange says of an order now (from a ccxt unified order)."""

    status: LiveStatus
    exchange_id: str | None
    filled: float

    @classmethod
    def from_ccxt(cls, order: Mapping[str, Any]) -> OrderUpdate:
        """A ccxt unified order; an open order with fills is partially filled."""
        filled = float(order.get("filled") or 0.0)
        status = _CCXT_STATUS.get(str(order.get("status")), LiveStatus.OPEN)
        if status is LiveStatus.OPEN and filled > 0:
            status = LiveStatus.PARTIALLY_FILLED
        exchange_id = order.get("id")
        return cls(status, None if exchange_id is None else str(exchange_id), filled)


@dataclass(frozen=True, slots=True)
class LiveOrder:
    """One order sent (or about to be sent) to an exchange, and what became of it.

    ``decision_id`` is the engine's id of the decision (``Order.client_order_id``); ``client_id``
    what the exchange knows it by (``client_ids.exchange_client_id``); ``reason`` says why it
    was rejected, cancelled or is unresolved.
    """

    client_id: str
    decision_id: str
    leg: int
    symbol: str
    side: Side
    kind: str
    amount: float
    price: float | None
    status: LiveStatus = LiveStatus.NEW
    exchange_id: str | None = None
    filled: float = 0.0
    cost: float = 0.0
    fees: dict[str, float] = field(default_factory=dict)
    trade_ids: tuple[str, ...] = ()
    reason: str = ""

    @property
    def is_terminal(self) -> bool:
        """True once nothing more can happen to the order."""
        return self.status in TERMINAL

    @property
    def average_price(self) -> float | None:
        """Volume-weighted fill price, None before the first fill."""
        return self.cost / self.filled if self.filled > 0 else None

    @property
    def remaining(self) -> float:
        """Amount not filled."""
        return max(self.amount - self.filled, 0.0)


def advance(
    order: LiveOrder, update: OrderUpdate | None, trades: tuple[ExchangeTrade, ...] = ()
) -> tuple[LiveOrder, tuple[ExchangeTrade, ...]]:
    """The order after ``update`` and ``trades``, and the trades that were new to it.

    Trades already applied (by id) are skipped; a status that would move backwards (a stale
    answer) is ignored; a terminal order keeps its status but still takes trades reported late.
    """
    fresh = tuple(t for t in trades if t.trade_id not in order.trade_ids)
    fees = dict(order.fees)
    filled, cost = order.filled, order.cost
    for trade in fresh:
        filled += trade.amount
        cost += trade.amount * trade.price
        if trade.fee and trade.fee_currency:
            fees[trade.fee_currency] = fees.get(trade.fee_currency, 0.0) + trade.fee
    status, exchange_id = order.status, order.exchange_id
    if update is not None:
        exchange_id = exchange_id or update.exchange_id
        status = _next_status(order.status, update.status)
    if status in (LiveStatus.NEW, LiveStatus.OPEN) and filled > 0:
        status = LiveStatus.PARTIALLY_FILLED
    return (
        replace(
            order,
            status=status,
            exchange_id=exchange_id,
            filled=filled,
            cost=cost,
            fees=fees,
            trade_ids=order.trade_ids + tuple(t.trade_id for t in fresh),
        ),
        fresh,
    )


def _next_status(current: LiveStatus, reported: LiveStatus) -> LiveStatus:
    if current in TERMINAL:
        return current
    if reported in TERMINAL:
        return reported
    return reported if _RANK[reported] >= _RANK[current] else current


def reject(order: LiveOrder, reason: str) -> LiveOrder:
    """The order refused (by the validator, the exchange, or because it never arrived)."""
    return replace(order, status=LiveStatus.REJECTED, reason=reason)


def fee_in_quote(
    fees: Mapping[str, float],
    *,
    base: str,
    quote: str,
    price: float,
    rates: Mapping[str, float] | None = None,
) -> float | None:
    """The fees in the quote currency: base-currency fees at ``price``, others at ``rates``
    (quote per unit); None when a currency cannot be converted."""
    total = 0.0
    for currency, amount in fees.items():
        if currency == quote:
            total += amount
        elif currency == base:
            total += amount * price
        elif rates is not None and currency in rates:
            total += amount * rates[currency]
        else:
            return None
    return total

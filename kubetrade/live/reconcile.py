"""Reconciliation: a live executor is disarmed until the exchange agrees with its journal.

At start, before any new order:

1. every journaled order not yet terminal is looked up on the exchange by client id and
   completed (fills that happened while the executor was down are applied, once); one the
   exchange does not know never arrived and is rejected (it is not resent);
2. the account's open orders on the bot's symbols must all be journaled: an order the bot did
   not send (placed by hand, by another bot) is unexplained;
3. the balance of each traded base asset must equal the baseline recorded when the bot was
   first armed (what the account held apart from the bot's fills) plus the bot's own fills
   (net of fees charged in that asset), within one lot
   step: a difference is an unexplained position.

Anything unexplained makes the verdict ``reconciled=False`` with the reasons: the bot must stay
disarmed (open no position) until a person resolves it. (The executor does not run live yet;
this is the gate it is to pass at start.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from kubetrade.domain import Side
from kubetrade.live.broker import LiveBroker, Outcome
from kubetrade.market.symbols import base_currency
from kubetrade.trading.order_state import LiveOrder, LiveStatus


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """The verdict: armed or not, why not, and what the journal learned on the way."""

    reconciled: bool
    reasons: tuple[str, ...] = ()
    completed: tuple[Outcome, ...] = field(default=())

    @property
    def message(self) -> str:
        """One line for the ``Reconciled`` condition."""
        if self.reconciled:
            return "journal, open orders and balances match the exchange"
        return "; ".join(self.reasons)


def expected_holdings(
    orders: Iterable[LiveOrder], baseline: Mapping[str, float], symbols: Iterable[str]
) -> dict[str, float]:
    """Base-asset holdings the journal explains: baseline plus net fills, less base fees."""
    held = {}
    for symbol in symbols:
        base = base_currency(symbol)
        held[base] = baseline.get(base, 0.0)
    for order in orders:
        base = base_currency(order.symbol)
        if base not in held:
            continue
        signed = order.filled if order.side is Side.BUY else -order.filled
        held[base] += signed - order.fees.get(base, 0.0)
    return held


async def reconcile(broker: LiveBroker, symbols: list[str]) -> Reconciliation:
    """Complete the journal from the exchange and judge whether the bot may trade."""
    reasons: list[str] = []
    completed = tuple(await broker.refresh_open())
    for outcome in completed:
        if outcome.order.status is LiveStatus.NEW:
            # Journaled, not found, not yet past the grace: it may still be in flight.
            reasons.append(
                f"order {outcome.order.client_id} ({outcome.order.decision_id}) is unresolved: "
                "the exchange does not (yet) know it"
            )
    known = set(broker.orders)
    for order in await broker.open_orders(symbols):
        client_id = order.get("clientOrderId")
        if client_id not in known:
            reasons.append(
                f"unknown open order {order.get('id')} (client id {client_id}) on "
                f"{order.get('symbol')}: the bot did not send it; cancel it on the exchange or "
                "move the bot to an account of its own"
            )
    balances = await broker.balances()
    # First arming: the baseline is what the account held before the bot's own fills.
    own = expected_holdings(broker.orders.values(), {}, symbols)
    before = {a: v - own.get(a, 0.0) for a, v in balances.items()}
    baseline = await broker.journal.record_baseline(broker.bot_key, before)
    expected = expected_holdings(broker.orders.values(), baseline, symbols)
    for base, amount in sorted(expected.items()):
        step = max(
            (
                rules.amount_precision or 0.0
                for symbol, rules in broker.markets.items()
                if base_currency(symbol) == base
            ),
            default=0.0,
        )
        actual = balances.get(base, 0.0)
        if abs(actual - amount) > step:
            reasons.append(
                f"{base} balance {actual:.10g} differs from the {amount:.10g} the journal "
                "explains (baseline plus the bot's fills): a position the bot did not make, "
                "or fills it missed"
            )
    return Reconciliation(not reasons, tuple(reasons), completed)

"""The exchanges kubetrade trades on live, and the facts it needs of each.

Read by the spec (a live manifest must name one of them, and a testnet only where there is
one, so that ``kubetrade check``, the operator and the executor agree before any pod starts)
and by the live broker (the parameter each exchange reads its client order id from).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Venue:
    """One live exchange: its client-order-id parameter, as ccxt passes it through, and whether
    ccxt knows a testnet for it (``spec.exchange.sandbox``)."""

    client_id_param: str
    testnet: bool


LIVE_VENUES: dict[str, Venue] = {
    "binance": Venue("newClientOrderId", testnet=True),
    "bybit": Venue("orderLinkId", testnet=True),
    # ccxt drops clientOrderId for Coinbase Advanced Trade and sends its own: pass its field.
    "coinbase": Venue("client_order_id", testnet=False),
    # Kraken's AddOrder takes cl_ord_id but does not echo it back.
    "kraken": Venue("cl_ord_id", testnet=False),
}


def live_venue_problem(exchange: str, sandbox: bool) -> str | None:
    """Why a live bot cannot trade on ``exchange`` (with ``sandbox``), or None if it can."""
    venue = LIVE_VENUES.get(exchange)
    if venue is None:
        return (
            f"live trading on {exchange!r} is not supported; live exchanges: "
            f"{', '.join(sorted(LIVE_VENUES))} (paper mode works on any ccxt exchange)"
        )
    if sandbox and not venue.testnet:
        with_testnet = ", ".join(sorted(n for n, v in LIVE_VENUES.items() if v.testnet))
        return (
            f"exchange {exchange} has no testnet; set exchange.sandbox: false (real orders) or "
            f"use one with a testnet: {with_testnet}"
        )
    return None

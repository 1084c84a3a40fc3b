"""Client order ids the exchanges accept, deterministic from bot, signal and leg.

The engine names each decision ``<bot>:<symbol>:<candle open time>:<reason>`` (see
``orders.client_order_id``): readable, but longer than exchanges allow and with characters some
refuse. What is sent is :func:`exchange_client_id`: a UUID v5 of the bot's key, that decision and
the leg (0 for the first order of a decision; a remainder sent after a partial fill expired is
leg 1, and so on), written as 32 lowercase hex digits. The same inputs always give the same id,
so a restarted executor finds its orders on the exchange, and the exchange's duplicate check
refuses a resubmission. The form is valid everywhere supported:

- Binance ``newClientOrderId``: ``^[.A-Z:/a-z0-9_-]{1,36}$``;
- Bybit ``orderLinkId``: up to 36 letters, digits, ``-`` and ``_``;
- Kraken ``cl_ord_id``: a UUID, long or short (32 hex digits), or free text up to 18 characters;
- Coinbase Advanced ``client_order_id``: any string (idempotent: a duplicate returns the existing
  order). ccxt drops ``clientOrderId`` for Coinbase and sends its own, so the exchange's own
  parameter name is what is passed, for every exchange.
"""

from __future__ import annotations

import re
import uuid

from kubetrade.errors import ExchangeError
from kubetrade.venues import LIVE_VENUES

# Fixed forever: changing it would rename every order a running bot has on an exchange.
NAMESPACE = uuid.UUID("5f1e6a52-9d0b-4c3e-8a8f-6b7574726164")

# The parameter each exchange reads its client order id from, as ccxt passes it through.
CLIENT_ID_PARAMS: dict[str, str] = {name: v.client_id_param for name, v in LIVE_VENUES.items()}

VALID = re.compile(r"^[0-9a-f]{32}$")


def exchange_client_id(bot_key: str, decision_id: str, leg: int = 0) -> str:
    """The id sent for ``leg`` of the engine's decision ``decision_id`` of bot ``bot_key``."""
    if leg < 0:
        raise ValueError(f"leg must be >= 0, got {leg}")
    return uuid.uuid5(NAMESPACE, f"{bot_key}\n{decision_id}\n{leg}").hex


def client_id_params(exchange: str, client_id: str) -> dict[str, str]:
    """The create-order params that carry ``client_id`` on ``exchange``."""
    name = CLIENT_ID_PARAMS.get(exchange)
    if name is None:
        raise ExchangeError(
            f"live trading on {exchange} is not supported: its client order id field is not "
            f"known here; supported: {', '.join(sorted(CLIENT_ID_PARAMS))}"
        )
    return {name: client_id}

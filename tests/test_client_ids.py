"""Client order ids: deterministic, valid on every supported exchange, and sent in each
exchange's own field. The request-shape tests run the real ccxt client with markets set and its
HTTP call intercepted (no network), and assert the body the exchange would receive."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from typing import Any
from urllib.parse import parse_qsl

import ccxt.async_support as ccxt_async
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from kubetrade.domain import OrderReason
from kubetrade.errors import ExchangeError
from kubetrade.trading.client_ids import (
    CLIENT_ID_PARAMS,
    client_id_params,
    exchange_client_id,
)
from kubetrade.trading.orders import client_order_id

# What each exchange documents as a valid client order id.
EXCHANGE_RULES = {
    "binance": re.compile(r"^[.A-Z:/a-z0-9_-]{1,36}$"),
    "bybit": re.compile(r"^[A-Za-z0-9_-]{1,36}$"),
    "kraken": re.compile(
        r"^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32}|.{1,18})$"
    ),
    "coinbase": re.compile(r"^.{1,128}$"),
}

bot_names = st.from_regex(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", fullmatch=True)


@given(
    namespace=bot_names,
    name=bot_names,
    open_time=st.integers(min_value=0, max_value=2**42),
    reason=st.sampled_from(list(OrderReason)),
    leg=st.integers(min_value=0, max_value=1000),
)
def test_ids_are_valid_everywhere_and_deterministic(
    namespace: str, name: str, open_time: int, reason: OrderReason, leg: int
) -> None:
    decision = client_order_id(name, "BTC/USDT", open_time, reason)
    sent = exchange_client_id(f"{namespace}/{name}", decision, leg)
    assert sent == exchange_client_id(f"{namespace}/{name}", decision, leg)
    for exchange, rule in EXCHANGE_RULES.items():
        assert rule.match(sent), (exchange, sent)


def test_ids_differ_by_bot_decision_and_leg() -> None:
    decision = client_order_id("bot", "BTC/USDT", 1_700_000_000_000, OrderReason.ENTRY_LONG)
    ids = {
        exchange_client_id("ns/bot", decision, 0),
        exchange_client_id("ns/bot", decision, 1),
        exchange_client_id("ns/other", decision, 0),
        exchange_client_id(
            "ns/bot",
            client_order_id("bot", "BTC/USDT", 1_700_000_000_000, OrderReason.EXIT_SIGNAL),
        ),
    }
    assert len(ids) == 4
    with pytest.raises(ValueError, match="leg"):
        exchange_client_id("ns/bot", decision, -1)


def test_unsupported_exchange_is_named() -> None:
    with pytest.raises(ExchangeError, match="supported: binance, bybit, coinbase, kraken"):
        client_id_params("gateio", "x")


def market(symbol: str, market_id: str, **extra: Any) -> dict[str, Any]:
    base, quote = symbol.split("/")
    return {
        "id": market_id,
        "symbol": symbol,
        "base": base,
        "quote": quote,
        "baseId": base,
        "quoteId": quote,
        "active": True,
        "type": "spot",
        "spot": True,
        "margin": False,
        "swap": False,
        "future": False,
        "option": False,
        "contract": False,
        "linear": None,
        "inverse": None,
        "precision": {"amount": 1e-8, "price": 0.01},
        "limits": {
            "amount": {"min": 1e-5, "max": None},
            "price": {"min": None, "max": None},
            "cost": {"min": 1, "max": None},
        },
        "info": {},
        "taker": 0.001,
        "maker": 0.001,
        **extra,
    }


def coinbase_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()


CID = exchange_client_id("trading/btc", "btc:BTC/USDT:1700000000000:entry_long")
NOW = int(time.time() * 1000)

CASES: dict[str, dict[str, Any]] = {
    "binance": {
        "config": {"apiKey": "k", "secret": "s"},
        "market": market("BTC/USDT", "BTCUSDT", info={"orderTypes": ["LIMIT", "MARKET"]}),
        "answer": {
            "symbol": "BTCUSDT",
            "orderId": 1,
            "orderListId": -1,
            "clientOrderId": CID,
            "transactTime": NOW,
        },
    },
    "coinbase": {
        "config": {"apiKey": "organizations/org1/apiKeys/key1", "secret": coinbase_pem()},
        "market": market("BTC/USDC", "BTC-USDC"),
        "answer": {
            "success": True,
            "success_response": {
                "order_id": "11111111-2222-3333-4444-555555555555",
                "product_id": "BTC-USDC",
                "side": "BUY",
                "client_order_id": CID,
            },
        },
    },
    "bybit": {
        "config": {"apiKey": "k", "secret": "s"},
        "market": market("BTC/USDT", "BTCUSDT"),
        "answer": {
            "retCode": 0,
            "retMsg": "OK",
            "result": {"orderId": "1321003749386327552", "orderLinkId": CID},
            "retExtInfo": {},
            "time": NOW,
        },
    },
    "kraken": {
        "config": {"apiKey": "k", "secret": base64.b64encode(b"s" * 64).decode()},
        "market": market("BTC/USD", "XXBTZUSD", info={"altname": "XBTUSD", "wsname": "XBT/USD"}),
        "answer": {
            "error": [],
            "result": {
                "descr": {"order": "buy 0.00100000 XBTUSD @ limit 60000.0"},
                "txid": ["OUF4EM-FRGI2-MQMWZD"],
            },
        },
    },
}


def send_limit_buy(exchange_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Create a limit buy of 0.001 at 60000 with our client id; the body ccxt sent, parsed."""
    case = CASES[exchange_id]
    sent: list[tuple[str, str, dict[str, str], str | None]] = []

    async def main() -> dict[str, Any]:
        exchange = getattr(ccxt_async, exchange_id)(case["config"])
        exchange.set_markets([case["market"]])

        async def fetch(
            url: str, method: str = "GET", headers: Any = None, body: Any = None
        ) -> Any:
            sent.append((url, method, dict(headers or {}), body))
            return case["answer"]

        exchange.fetch = fetch
        try:
            symbol = case["market"]["symbol"]
            params = client_id_params(exchange_id, CID)
            order: dict[str, Any] = await exchange.create_order(
                symbol, "limit", "buy", 0.001, 60000, params
            )
            return order
        finally:
            await exchange.close()

    order = asyncio.run(main())
    (url, method, _headers, body) = sent[-1]
    assert method == "POST"
    text = body or url.partition("?")[2]
    fields = (
        json.loads(text) if text.startswith("{") else dict(parse_qsl(text, keep_blank_values=True))
    )
    return order, fields


def test_binance_sends_new_client_order_id() -> None:
    _, body = send_limit_buy("binance")
    assert body["newClientOrderId"] == CID
    assert (body["symbol"], body["side"], body["type"]) == ("BTCUSDT", "BUY", "LIMIT")
    assert (body["quantity"], body["price"], body["timeInForce"]) == ("0.001", "60000", "GTC")
    assert "signature" in body


def test_coinbase_sends_client_order_id_and_order_configuration() -> None:
    order, body = send_limit_buy("coinbase")
    assert body["client_order_id"] == CID
    assert body["product_id"] == "BTC-USDC" and body["side"] == "BUY"
    assert body["order_configuration"] == {
        "limit_limit_gtc": {"base_size": "0.001", "limit_price": "60000", "post_only": False}
    }
    assert order["clientOrderId"] == CID


def test_coinbase_drops_ccxts_unified_client_order_id() -> None:
    """Why the exchange's own field is passed: ccxt replaces ``clientOrderId`` for Coinbase."""
    case = CASES["coinbase"]
    sent: list[str] = []

    async def main() -> None:
        exchange = ccxt_async.coinbase(case["config"])
        exchange.set_markets([case["market"]])

        async def fetch(url: str, method: str = "GET", headers: Any = None, body: Any = None):
            sent.append(body)
            return case["answer"]

        exchange.fetch = fetch
        try:
            await exchange.create_order(
                "BTC/USDC", "limit", "buy", 0.001, 60000, {"clientOrderId": CID}
            )
        finally:
            await exchange.close()

    asyncio.run(main())
    assert json.loads(sent[-1])["client_order_id"] != CID


def test_bybit_sends_order_link_id() -> None:
    order, body = send_limit_buy("bybit")
    assert body["orderLinkId"] == CID
    assert (body["symbol"], body["side"], body["orderType"]) == ("BTCUSDT", "Buy", "Limit")
    assert (body["qty"], body["price"], body["category"]) == ("0.001", "60000", "spot")
    assert order["clientOrderId"] == CID


def test_kraken_sends_cl_ord_id() -> None:
    order, body = send_limit_buy("kraken")
    assert body["cl_ord_id"] == CID
    assert (body["pair"], body["type"], body["ordertype"]) == ("XXBTZUSD", "buy", "limit")
    assert (body["volume"], body["price"]) == ("0.001", "60000")
    # Kraken's AddOrder answer does not echo the client id: the journal is what knows it.
    assert order["id"] == "OUF4EM-FRGI2-MQMWZD"


def test_every_supported_exchange_has_a_shape_test() -> None:
    assert set(CLIENT_ID_PARAMS) == set(CASES)

"""The fake Binance spot server against the real async ccxt client: signatures, markets,
orders, balances, fill scripts and injected faults map to the errors ccxt raises."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import ccxt.async_support as ccxt_async
import pytest
from ccxt.base.errors import (
    AuthenticationError,
    BadRequest,
    DDoSProtection,
    ExchangeNotAvailable,
    InsufficientFunds,
    InvalidOrder,
    OrderNotFound,
    RequestTimeout,
)

from kubetrade.errors import InvalidInputError
from kubetrade.live.exchange import Credentials, connect_exchange
from tests.fake_exchanges.binance import FakeBinance, Fault

Scenario = Callable[[FakeBinance, ccxt_async.Exchange], Awaitable[Any]]


def run(scenario: Scenario, fake: FakeBinance | None = None, **exchange: Any) -> Any:
    """Start the fake, connect ccxt to it with markets loaded, run ``scenario``, clean up."""
    fake = fake or FakeBinance()

    async def main() -> Any:
        base = await fake.start()
        credentials = Credentials(
            exchange.pop("api_key", fake.api_key), exchange.pop("secret", fake.secret)
        )
        client = connect_exchange("binance", credentials, api_base=base, **exchange)
        try:
            await client.load_markets()
            return await scenario(fake, client)
        finally:
            await client.close()
            await fake.stop()

    return asyncio.run(main())


def test_markets_come_from_exchange_info_alone() -> None:
    async def scenario(fake: FakeBinance, ex: ccxt_async.Exchange) -> Any:
        return ex.market("BTC/USDT"), [r["path"] for r in fake.requests]

    market, paths = run(scenario)
    assert paths == ["/api/v3/exchangeInfo"]
    assert (market["precision"]["amount"], market["precision"]["price"]) == (0.00001, 0.01)
    assert market["limits"]["amount"]["min"] == 0.00001
    assert market["limits"]["cost"]["min"] == 5


def test_signed_order_lifecycle_and_balances() -> None:
    async def scenario(fake: FakeBinance, ex: ccxt_async.Exchange) -> Any:
        fake.fill_script.extend(["never"])
        resting = await ex.create_order(
            "BTC/USDT", "limit", "buy", 0.01, 50000, {"newClientOrderId": "kt-rest-1"}
        )
        filled = await ex.create_order(
            "BTC/USDT", "market", "buy", 0.001, None, {"newClientOrderId": "kt-fill-1"}
        )
        open_orders = await ex.fetch_open_orders("BTC/USDT")
        balance = await ex.fetch_balance()
        cancelled = await ex.cancel_order(resting["id"], "BTC/USDT")
        after = await ex.fetch_balance()
        trades = await ex.fetch_my_trades("BTC/USDT")
        by_client = await ex.fetch_order(None, "BTC/USDT", {"origClientOrderId": "kt-fill-1"})
        return resting, filled, open_orders, balance, cancelled, after, trades, by_client

    fake = FakeBinance()
    resting, filled, open_orders, balance, cancelled, after, trades, by_client = run(scenario, fake)
    signed = [r for r in fake.requests if r["path"] != "/api/v3/exchangeInfo"]
    assert all(r["api_key"] == fake.api_key and "signature" in r["params"] for r in signed)
    assert resting["clientOrderId"] == "kt-rest-1" and resting["status"] == "open"
    assert filled["status"] == "closed" and filled["filled"] == 0.001
    assert filled["average"] == 60000 and filled["fee"]["currency"] == "BTC"
    assert [o["clientOrderId"] for o in open_orders] == ["kt-rest-1"]
    # 500 USDT locked by the resting buy, 60 spent on the market buy.
    assert balance["USDT"]["used"] == 500 and balance["USDT"]["free"] == 10000 - 500 - 60
    assert balance["BTC"]["total"] == pytest.approx(0.001 * 0.999)
    assert cancelled["status"] == "canceled"
    assert after["USDT"]["free"] == 10000 - 60 and after["USDT"]["used"] == 0
    assert [(t["order"], t["amount"], t["price"]) for t in trades] == [(filled["id"], 0.001, 60000)]
    assert by_client["id"] == filled["id"]


def test_partial_fill_then_rest() -> None:
    async def scenario(fake: FakeBinance, ex: ccxt_async.Exchange) -> Any:
        fake.fill_script.append("partial")
        first = await ex.create_order(
            "BTC/USDT", "limit", "buy", 0.003, 60000, {"newClientOrderId": "kt-part"}
        )
        fake.fill("kt-part")
        second = await ex.fetch_order(first["id"], "BTC/USDT")
        return first, second, await ex.fetch_my_trades("BTC/USDT")

    first, second, trades = run(scenario)
    assert first["status"] == "open" and first["filled"] == 0.0015
    assert second["status"] == "closed" and second["filled"] == 0.003
    assert [t["amount"] for t in trades] == [0.0015, 0.0015]


def test_wrong_secret_is_refused() -> None:
    async def scenario(fake: FakeBinance, ex: ccxt_async.Exchange) -> Any:
        with pytest.raises(AuthenticationError, match="Signature"):
            await ex.fetch_balance()

    run(scenario, secret="not-the-secret")


@pytest.mark.parametrize(
    ("prepare", "error", "message"),
    [
        (lambda f: f.faults.append(Fault.rate_limited()), DDoSProtection, "request weight"),
        (lambda f: f.faults.append(Fault.banned()), DDoSProtection, "banned"),
        (lambda f: f.faults.append(Fault.unavailable()), ExchangeNotAvailable, "Unavailable"),
        (lambda f: f.balances.update(USDT=Decimal(10)), InsufficientFunds, "insufficient"),
    ],
    ids=["429", "418", "503", "insufficient"],
)
def test_faults_map_to_ccxt_errors(prepare: Any, error: type[Exception], message: str) -> None:
    async def scenario(fake: FakeBinance, ex: ccxt_async.Exchange) -> Any:
        prepare(fake)
        with pytest.raises(error, match=message):
            await ex.create_order("BTC/USDT", "limit", "buy", 0.001, 60000)
        return fake.orders

    assert run(scenario) == {}


def test_duplicate_client_id_and_filter_failures() -> None:
    async def scenario(fake: FakeBinance, ex: ccxt_async.Exchange) -> Any:
        fake.fill_script.append("never")
        params = {"newClientOrderId": "kt-dup"}
        await ex.create_order("BTC/USDT", "limit", "buy", 0.001, 60000, params)
        with pytest.raises(InvalidOrder, match="Duplicate order sent"):
            await ex.create_order("BTC/USDT", "limit", "buy", 0.001, 60000, params)
        # ccxt does not check the minimum notional: the exchange refuses it.
        with pytest.raises(BadRequest, match="NOTIONAL"):
            await ex.create_order("BTC/USDT", "limit", "buy", 0.00001, 60000)
        with pytest.raises(OrderNotFound):
            await ex.fetch_order(None, "BTC/USDT", {"origClientOrderId": "kt-none"})
        return len(fake.orders)

    assert run(scenario) == 1


def test_timeout_after_the_order_is_stored() -> None:
    async def scenario(fake: FakeBinance, ex: ccxt_async.Exchange) -> Any:
        fake.faults.append(Fault.late(delay_s=1.0))
        with pytest.raises(RequestTimeout):
            await ex.create_order(
                "BTC/USDT", "limit", "buy", 0.001, 60000, {"newClientOrderId": "kt-late"}
            )
        return await ex.fetch_order(None, "BTC/USDT", {"origClientOrderId": "kt-late"})

    found = run(scenario, timeout_ms=300)
    assert found["clientOrderId"] == "kt-late" and found["status"] == "closed"


def test_weight_limit_trips() -> None:
    async def scenario(fake: FakeBinance, ex: ccxt_async.Exchange) -> Any:
        fake.weight_limit = 20 + 3 * 20
        for _ in range(3):
            await ex.fetch_balance()
        with pytest.raises(DDoSProtection):
            await ex.fetch_balance()
        return fake.rate_limited

    assert run(scenario) == 1


def test_credentials_come_from_the_environment_and_never_show() -> None:
    environ = {"KUBETRADE_EXCHANGE_API_KEY": "key-123", "KUBETRADE_EXCHANGE_SECRET": "sec-456"}
    credentials = Credentials.from_environment(environ)
    assert (credentials.api_key, credentials.secret) == ("key-123", "sec-456")
    assert "key-123" not in repr(credentials) and "sec-456" not in str(credentials)
    with pytest.raises(InvalidInputError, match="KUBETRADE_EXCHANGE_SECRET"):
        Credentials.from_environment({"KUBETRADE_EXCHANGE_API_KEY": "key-123"})


def test_sandbox_uses_the_testnet() -> None:
    client = connect_exchange("binance", Credentials("k", "s"), sandbox=True)
    try:
        assert "testnet.binance.vision" in client.urls["api"]["private"]
    finally:
        asyncio.run(client.close())

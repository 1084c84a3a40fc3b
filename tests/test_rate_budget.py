"""One request budget per exchange account: five bots on one account against the fake
Binance's weight limit, through the real ccxt client, with the budget in PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kubetrade.live.broker import LiveBroker
from kubetrade.live.budget import AccountBudget, WeightLimit, account_key
from kubetrade.live.exchange import Credentials, connect_exchange
from kubetrade.store import AsyncStore
from kubetrade.trading.order_state import LiveStatus
from tests.fake_exchanges.binance import FakeBinance
from tests.test_live_broker import decision

BOTS, ORDERS = 5, 3
# A small window and limit so that the test takes seconds, counted the way Binance counts.
LIMIT = WeightLimit(100, 2_000, "x-mbx-used-weight-1m")


def five_bots(db_url: str, tag: str, shared: bool) -> tuple[FakeBinance, list[Any]]:
    fake = FakeBinance(weight_limit=int(LIMIT.weight), weight_window_s=LIMIT.window_ms // 1000)

    async def main() -> list[Any]:
        base = await fake.start()
        stores = [await AsyncStore.connect(db_url) for _ in range(BOTS)]
        await stores[0].migrate()

        async def bot(i: int) -> list[Any]:
            budget = AccountBudget.for_account(stores[i], "binance", fake.api_key, limit=LIMIT)
            exchange = connect_exchange(
                "binance", Credentials(fake.api_key, fake.secret), api_base=base
            )
            try:
                broker = await LiveBroker.open(
                    exchange,
                    exchange_name="binance",
                    bot_key=f"itest/budget-{tag}-{i}",
                    journal=stores[i],
                    symbols=["BTC/USDT"],
                    budget=budget if shared else None,
                    attempts=2,
                    backoff_s=0.05,
                )
                return [
                    (await broker.submit(decision(n, quantity=0.001))).order for n in range(ORDERS)
                ]
            finally:
                await exchange.close()

        try:
            results = await asyncio.gather(*(bot(i) for i in range(BOTS)), return_exceptions=True)
            # A bot whose markets could not load for rate shows as its error.
            return [o for r in results for o in (r if isinstance(r, list) else [r])]
        finally:
            for store in stores:
                await store.close()
            await fake.stop()

    return fake, asyncio.run(main())


def test_five_bots_sharing_the_accounts_budget_are_never_refused_for_rate(db_url: str) -> None:
    fake, orders = five_bots(db_url, "shared", shared=True)
    assert fake.rate_limited == 0
    assert [getattr(o, "status", o) for o in orders] == [LiveStatus.FILLED] * BOTS * ORDERS
    assert len(fake.orders) == BOTS * ORDERS


def test_without_the_shared_budget_the_exchanges_limit_trips(db_url: str) -> None:
    fake, _ = five_bots(db_url, "alone", shared=False)
    assert fake.rate_limited > 0


def test_the_account_is_named_by_a_hash_of_the_key_never_the_key() -> None:
    name = account_key("binance", "my-secret-api-key")
    assert "my-secret-api-key" not in name and name.startswith("binance:")
    assert name == account_key("binance", "my-secret-api-key") != account_key("binance", "other")


@pytest.mark.parametrize(("method", "weight"), [("create_order", 1), ("fetch_my_trades", 20)])
def test_requests_weigh_what_the_exchange_says(method: str, weight: int) -> None:
    budget = AccountBudget.for_account(None, "binance", "k")  # type: ignore[arg-type]
    assert budget.weight(method) == weight
    assert budget.limit == WeightLimit(6000, 60_000, "x-mbx-used-weight-1m")

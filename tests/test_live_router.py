"""The executor's live router in-process: a LiveEngine's orders through the live broker to the
fake Binance (real ccxt, journal in PostgreSQL) and the fills back, the kill switch live."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

from kubetrade.domain import HaltCause, OrderReason
from kubetrade.live.broker import LiveBroker
from kubetrade.live.exchange import Credentials, connect_exchange
from kubetrade.store import AsyncStore
from kubetrade.trading import ControlAction, ControlCommand, NoticeKind
from kubetrade.trading.live_engine import LiveEngine
from kubetrade.workers.live import LiveRouter
from tests.fake_exchanges.binance import FakeBinance, SymbolRules
from tests.test_trading_engine import BTC, feed, flat, make_bot

Scenario = Callable[[FakeBinance, LiveRouter], Awaitable[Any]]


def run(db_url: str, bot_key: str, scenario: Scenario, fake: FakeBinance) -> Any:
    async def main() -> Any:
        base = await fake.start()
        store = await AsyncStore.connect(db_url)
        await store.migrate()
        exchange = connect_exchange(
            "binance", Credentials(fake.api_key, fake.secret), api_base=base, timeout_ms=2_000
        )
        try:
            broker = await LiveBroker.open(
                exchange, exchange_name="binance", bot_key=bot_key, journal=store, symbols=[BTC]
            )
            router = LiveRouter(broker, LiveEngine(make_bot(), broker.markets), [BTC])
            assert (await router.reconcile()).reconciled
            return await scenario(fake, router)
        finally:
            await exchange.close()
            await store.close()
            await fake.stop()

    return asyncio.run(main())


def kill() -> ControlCommand:
    return ControlCommand.parse(ControlAction.KILL, "test", HaltCause.MANUAL)


def test_orders_go_out_fills_come_back_and_kill_flattens_on_the_exchange(db_url: str) -> None:
    async def scenario(fake: FakeBinance, router: LiveRouter) -> Any:
        engine = router.engine
        feed(engine, flat(0, 60_000.0), 0.7)
        out, changed = await router.step(1)
        assert changed and [f.reason for f in out.fills] == [OrderReason.ENTRY_LONG]
        assert engine.summary().open_positions == 1 and engine.pending_orders() == []
        flatten = engine.control(kill())
        assert [o.reason for o in flatten.orders] == [OrderReason.FLATTEN]
        out, _ = await router.step(2)
        assert [f.reason for f in out.fills] == [OrderReason.FLATTEN]
        return engine.summary()

    fake = FakeBinance()
    summary = run(db_url, "itest/router-kill", scenario, fake)
    assert summary.open_positions == 0 and summary.halted
    assert [o["side"] for o in fake.orders.values()] == ["BUY", "SELL"]
    assert fake.balances["BTC"] < Decimal("0.00001")  # dust below one lot step
    assert float(fake.balances["USDT"]) == summary.cash


def test_kill_cancels_an_entry_still_working_and_flattens_what_it_filled(db_url: str) -> None:
    async def scenario(fake: FakeBinance, router: LiveRouter) -> Any:
        engine = router.engine
        fake.markets_rest = True
        fake.fill_script.append("partial")
        feed(engine, flat(0, 60_000.0), 0.7)
        await router.step(1)
        assert engine.summary().open_positions == 1 and len(engine.pending_orders()) == 1
        assert engine.control(kill()).orders == []  # the entry is still working
        out, _ = await router.step(2)
        assert [o.reason for o in out.orders] == [OrderReason.FLATTEN]
        out, _ = await router.step(3)
        assert [f.reason for f in out.fills] == [OrderReason.FLATTEN]
        return engine.summary()

    fake = FakeBinance()
    summary = run(db_url, "itest/router-kill-working", scenario, fake)
    statuses = [o["status"] for o in fake.orders.values()]
    assert statuses == ["CANCELED", "FILLED"] and not fake.open_orders()
    assert summary.open_positions == 0
    assert fake.balances["BTC"] < Decimal("0.00001")


def test_a_disarmed_router_drops_an_unsent_entry_and_sends_nothing(db_url: str) -> None:
    async def scenario(fake: FakeBinance, router: LiveRouter) -> Any:
        engine = router.engine
        feed(engine, flat(0, 60_000.0), 0.7)  # decided while armed, not sent yet
        engine.disarm("unknown open order 1")
        out, changed = await router.step(1)
        return out, changed

    fake = FakeBinance()
    out, changed = run(db_url, "itest/router-disarmed", scenario, fake)
    assert changed and [(n.kind, n.code) for n in out.notices] == [
        (NoticeKind.ORDER_REFUSED, "disarmed")
    ]
    assert fake.orders == {}


def test_markets_are_reloaded_and_the_engine_refuses_by_the_new_rules(db_url: str) -> None:
    async def scenario(fake: FakeBinance, router: LiveRouter) -> Any:
        router.markets_every_s = 0
        await router.step(0)
        # The exchange raises its minimum notional above what the bot's entry is worth.
        fake.symbols = (SymbolRules("BTCUSDT", "BTC", "USDT", min_notional="100000"),)
        fake._rules = {s.symbol: s for s in fake.symbols}
        await router.step(1)
        return feed(router.engine, flat(0, 60_000.0), 0.7)

    fake = FakeBinance()
    out = run(db_url, "itest/router-markets", scenario, fake)
    assert out.orders == []
    assert [(n.kind, n.code) for n in out.notices] == [(NoticeKind.ORDER_REFUSED, "min_notional")]
    assert sum(r["path"] == "/api/v3/exchangeInfo" for r in fake.requests) == 2

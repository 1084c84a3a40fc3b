"""The executor's live router in-process: a LiveEngine's orders through the live broker to the
fake Binance (real ccxt, journal in PostgreSQL) and the fills back, the kill switch live."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import pytest

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


def bnb_fees_fake(**extra: Any) -> FakeBinance:
    """A fake that charges fees in BNB (Binance's "pay fees with BNB"), BNB at 600 USDT."""
    return FakeBinance(
        symbols=(
            SymbolRules("BTCUSDT", "BTC", "USDT"),
            SymbolRules("BNBUSDT", "BNB", "USDT", step_size="0.001", min_qty="0.001"),
        ),
        balances={"USDT": Decimal(10_000), "BTC": Decimal(0), "BNB": Decimal(1)},
        prices={"BTCUSDT": Decimal(60_000), "BNBUSDT": Decimal(600)},
        fee_asset="BNB",
        **extra,
    )


def round_trip(fake: FakeBinance, bot_key: str, db_url: str) -> tuple[Any, LiveRouter]:
    async def scenario(fake: FakeBinance, router: LiveRouter) -> Any:
        engine = router.engine
        feed(engine, flat(0, 60_000.0), 0.7)
        await router.step(1)
        engine.control(kill())
        out, _ = await router.step(2)
        assert [f.reason for f in out.fills] == [OrderReason.FLATTEN]
        return engine.summary(), router

    result: tuple[Any, LiveRouter] = run(db_url, bot_key, scenario, fake)
    return result


def test_fees_charged_in_bnb_are_converted_into_equity_at_the_exchanges_price(db_url: str) -> None:
    fake = bnb_fees_fake()
    summary, router = round_trip(fake, "itest/router-bnb-fees", db_url)
    trades = fake.trades
    assert [t["commissionAsset"] for t in trades] == ["BNB", "BNB"]
    bnb_spent = sum(Decimal(t["commission"]) for t in trades)
    assert fake.balances["BNB"] == 1 - bnb_spent > 0
    # The whole position was bought and sold (no fee taken from it) and the ledger's cash is
    # the account's USDT less the BNB the fees took, at the ticker's price.
    assert summary.open_positions == 0 and fake.balances["BTC"] == 0
    assert summary.cash == pytest.approx(float(fake.balances["USDT"] - bnb_spent * 600), abs=1e-6)
    assert router.unconverted_fees == {}
    tickers = [r for r in fake.requests if r["path"] == "/api/v3/ticker/24hr"]
    assert len(tickers) == 1  # read once, then cached


def test_a_fee_in_a_currency_without_a_price_is_recorded_and_said(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    fake = bnb_fees_fake()
    # The exchange lists no BNB market, so nothing prices BNB (the fake still charges it).
    fake.symbols = (SymbolRules("BTCUSDT", "BTC", "USDT"),)
    fake._rules = {s.symbol: s for s in fake.symbols}
    caplog.set_level(logging.ERROR, logger="kubetrade.workers.live")
    summary, router = round_trip(fake, "itest/router-bnb-unpriced", db_url)
    bnb_spent = sum(Decimal(t["commission"]) for t in fake.trades)
    assert router.unconverted_fees == {"BNB": pytest.approx(float(bnb_spent))}
    assert summary.cash == pytest.approx(float(fake.balances["USDT"]), abs=1e-6)
    said = [r for r in caplog.records if "left out of equity" in r.getMessage()]
    assert len(said) == 2 and {getattr(r, "currency", None) for r in said} == {"BNB"}

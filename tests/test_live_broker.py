"""The live broker against the fake Binance through the real async ccxt client, with its
journal in PostgreSQL: validation, fills and fees, errors by kind, no order lost or doubled
across timeouts and restarts, and the reconciliation that arms a live executor."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import pytest

from kubetrade.domain import Order, OrderReason, Side
from kubetrade.live.broker import LiveBroker
from kubetrade.live.exchange import Credentials, connect_exchange
from kubetrade.live.reconcile import reconcile
from kubetrade.store import AsyncStore
from kubetrade.trading.client_ids import exchange_client_id
from kubetrade.trading.order_state import LiveOrder, LiveStatus
from kubetrade.trading.validation import OrderType
from tests.fake_exchanges.binance import FakeBinance, Fault

BOT = "trading/live-btc"
SYMBOLS = ["BTC/USDT"]


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def decision(n: int, side: Side = Side.BUY, quantity: float = 0.01) -> Order:
    reason = OrderReason.ENTRY_LONG if side is Side.BUY else OrderReason.EXIT_SIGNAL
    return Order(
        f"live-btc:BTC/USDT:{1_700_000_000_000 + n * 3_600_000}:{reason.value}",
        "BTC/USDT",
        side,
        quantity,
        reason,
        1_700_000_000_000 + n * 3_600_000,
        60000.0,
    )


Scenario = Callable[[FakeBinance, AsyncStore, Callable[..., Awaitable[LiveBroker]]], Awaitable[Any]]


def run(db_url: str, scenario: Scenario, fake: FakeBinance | None = None) -> Any:
    """Start the fake and the journal; ``scenario`` gets a factory of brokers (one per
    "process": each has its own ccxt instance and reads the journal afresh)."""
    fake = fake or FakeBinance()

    async def main() -> Any:
        base = await fake.start()
        store = await AsyncStore.connect(db_url)
        await store.migrate()
        exchanges = []

        async def broker(**options: Any) -> LiveBroker:
            exchange = connect_exchange(
                "binance",
                Credentials(fake.api_key, fake.secret),
                api_base=base,
                timeout_ms=options.pop("timeout_ms", 2_000),
            )
            exchanges.append(exchange)
            options.setdefault("backoff_s", 0.01)
            return await LiveBroker.open(
                exchange,
                exchange_name="binance",
                bot_key=BOT,
                journal=store,
                symbols=SYMBOLS,
                **options,
            )

        try:
            return await scenario(fake, store, broker)
        finally:
            for exchange in exchanges:
                await exchange.close()
            await store.close()
            await fake.stop()

    return asyncio.run(main())


def posts(fake: FakeBinance) -> int:
    return sum(1 for r in fake.requests if (r["method"], r["path"]) == ("POST", "/api/v3/order"))


def test_market_order_fills_with_fees_in_the_currency_charged(db_url: str) -> None:
    async def scenario(fake, store, broker):
        b = await broker()
        outcome = await b.submit(decision(1))
        return outcome, await store.read_journal(BOT)

    fake = FakeBinance()
    outcome, journal = run(db_url, scenario, fake)
    order = outcome.order
    assert order.status is LiveStatus.FILLED and order.filled == 0.01
    assert order.average_price == 60000 and order.fees == {"BTC": pytest.approx(0.00001)}
    assert [t.trade_id for t in outcome.trades] == [str(fake.trades[0]["id"])]
    assert journal == [order]
    sent = fake.orders[next(iter(fake.orders))]
    assert sent["clientOrderId"] == exchange_client_id(BOT, decision(1).client_order_id)


def test_validator_refuses_before_sending(db_url: str) -> None:
    async def scenario(fake, store, broker):
        b = await broker()
        outcome = await b.submit(decision(1, quantity=0.00005))  # 3 USDT, minimum 5
        return outcome.order, b.refusals, await store.read_journal(BOT)

    fake = FakeBinance()
    order, refusals, journal = run(db_url, scenario, fake)
    assert order.status is LiveStatus.REJECTED and order.reason.startswith("min_notional")
    assert refusals == {"min_notional": 1} and journal == [order]
    assert posts(fake) == 0


def test_insufficient_funds_is_refused_without_retry(db_url: str) -> None:
    async def scenario(fake, store, broker):
        fake.balances["USDT"] = Decimal(100)
        b = await broker()
        return (await b.submit(decision(1))).order

    fake = FakeBinance()
    order = run(db_url, scenario, fake)
    assert order.status is LiveStatus.REJECTED and "InsufficientFunds" in order.reason
    assert posts(fake) == 1


def test_rate_limits_back_off_and_the_order_goes_once(db_url: str) -> None:
    async def scenario(fake, store, broker):
        fake.faults.extend([Fault.rate_limited(), Fault.banned()])
        b = await broker()
        return (await b.submit(decision(1))).order, b.rate_limited

    fake = FakeBinance()
    order, rate_limited = run(db_url, scenario, fake)
    assert order.status is LiveStatus.FILLED and rate_limited == 2
    assert posts(fake) == 3 and len(fake.orders) == 1


def test_trades_not_fetched_under_a_rate_limit_are_booked_on_the_next_refresh(
    db_url: str,
) -> None:
    """The order filled but its trades could not be fetched (rate limited past the retries):
    the fill is not lost or raised out of the router; the next refresh books it, once."""

    async def scenario(fake, store, broker):
        trades = "/api/v3/myTrades"
        fake.faults.extend([Fault.rate_limited(path=trades, method="GET")] * 2)
        b = await broker(attempts=2)
        first = (await b.submit(decision(1))).order
        second = await b.refresh(first.client_id)
        again = await b.refresh(first.client_id)
        return first, second, again

    fake = FakeBinance()
    first, second, again = run(db_url, scenario, fake)
    assert first.status is not LiveStatus.FILLED  # not booked without its trades
    assert second.order.status is LiveStatus.FILLED and second.trades
    assert not again.trades  # booked once
    assert posts(fake) == 1 and len(fake.orders) == 1


def test_timeout_after_the_exchange_stored_the_order_is_resolved_not_resent(
    db_url: str,
) -> None:
    async def scenario(fake, store, broker):
        fake.faults.append(Fault.late(delay_s=1.0))
        b = await broker(timeout_ms=300)
        return (await b.submit(decision(1))).order

    fake = FakeBinance()
    order = run(db_url, scenario, fake)
    assert order.status is LiveStatus.FILLED and order.filled == 0.01
    assert posts(fake) == 1 and len(fake.orders) == 1


def test_an_order_that_never_arrived_is_rejected_after_the_grace(db_url: str) -> None:
    clock = Clock()

    async def scenario(fake, store, broker):
        fake.faults.append(Fault.unavailable())
        b = await broker(clock=clock, unresolved_grace_s=10)
        first = (await b.submit(decision(1))).order
        clock.now = 11
        (later,) = await b.refresh_open()
        return first, later.order

    fake = FakeBinance()
    first, later = run(db_url, scenario, fake)
    assert first.status is LiveStatus.NEW
    assert later.status is LiveStatus.REJECTED and later.reason.startswith("not_received")
    assert posts(fake) == 1 and fake.orders == {}


def test_partial_fills_apply_once_and_complete(db_url: str) -> None:
    async def scenario(fake, store, broker):
        fake.fill_script.append("partial")
        b = await broker()
        first = await b.submit(decision(1), kind=OrderType.LIMIT, price=60000.0)
        again = await b.refresh(first.order.client_id)
        fake.fill(first.order.client_id)
        done = await b.refresh(first.order.client_id)
        return first, again, done

    first, again, done = run(db_url, scenario)
    assert first.order.status is LiveStatus.PARTIALLY_FILLED and first.order.filled == 0.005
    assert again.trades == () and again.order == first.order
    assert done.order.status is LiveStatus.FILLED and done.order.filled == 0.01
    assert len(done.trades) == 1


def test_a_restarted_broker_never_resends_a_journaled_decision(db_url: str) -> None:
    async def scenario(fake, store, broker):
        first = await (await broker()).submit(decision(1))
        second = await (await broker()).submit(decision(1))
        return first.order, second.order

    fake = FakeBinance()
    first, second = run(db_url, scenario, fake)
    assert first == second and posts(fake) == 1


def test_crash_between_journal_and_send_is_not_resent(db_url: str) -> None:
    """The intent was committed, the process died before the request: the restarted broker
    asks the exchange, finds nothing and, after the grace, records that it never arrived."""
    clock = Clock()

    async def scenario(fake, store, broker):
        cid = exchange_client_id(BOT, decision(1).client_order_id)
        intent = LiveOrder(
            cid, decision(1).client_order_id, 0, "BTC/USDT", Side.BUY, "market", 0.01, None
        )
        await store.journal_intent(BOT, intent)
        b = await broker(clock=clock, unresolved_grace_s=5)
        disarmed = await reconcile(b, SYMBOLS)
        clock.now = 6
        armed = await reconcile(b, SYMBOLS)
        resubmitted = await b.submit(decision(1))
        return disarmed, armed, resubmitted.order

    fake = FakeBinance()
    disarmed, armed, resubmitted = run(db_url, scenario, fake)
    assert not disarmed.reconciled and "unresolved" in disarmed.message
    assert armed.reconciled, armed.message
    assert resubmitted.status is LiveStatus.REJECTED and posts(fake) == 0


def test_fills_while_down_are_completed_at_reconciliation(db_url: str) -> None:
    async def scenario(fake, store, broker):
        fake.fill_script.append("never")
        first = await (await broker()).submit(decision(1), kind=OrderType.LIMIT, price=60000.0)
        fake.fill(first.order.client_id)  # while the executor was down
        verdict = await reconcile(await broker(), SYMBOLS)
        return first.order, verdict

    opened, verdict = run(db_url, scenario)
    assert opened.status is LiveStatus.OPEN
    assert verdict.reconciled, verdict.message
    (completed,) = verdict.completed
    assert completed.order.status is LiveStatus.FILLED and len(completed.trades) == 1


def test_an_order_the_journal_does_not_know_keeps_the_bot_disarmed(db_url: str) -> None:
    async def scenario(fake, store, broker):
        b = await broker()
        assert (await reconcile(b, SYMBOLS)).reconciled  # records the baseline
        fake.place("BTCUSDT", "BUY", "0.001", "50000.00", "by-hand-1")
        return await reconcile(b, SYMBOLS)

    verdict = run(db_url, scenario)
    assert not verdict.reconciled
    assert "unknown open order" in verdict.message and "by-hand-1" in verdict.message


def test_a_balance_the_journal_cannot_explain_keeps_the_bot_disarmed(db_url: str) -> None:
    async def scenario(fake, store, broker):
        b = await broker()
        await b.submit(decision(1))
        first = await reconcile(b, SYMBOLS)
        fake.balances["BTC"] += Decimal("0.5")  # bought elsewhere
        return first, await reconcile(await broker(), SYMBOLS)

    first, second = run(db_url, scenario)
    assert first.reconciled, first.message
    assert not second.reconciled and "BTC balance" in second.message

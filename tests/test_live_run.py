"""A live bot run as processes (``kubetrade run``'s feed, signal worker and executor) against
the fake Binance through the real ccxt client: it trades, survives SIGKILLs of the executor at
each point of an order's life, and its ledger ends equal to the exchange's orders, trades and
balances.

The feed replays a candle file (``--data``) while the executor trades live: the product's way to
point a live bot at a local fake is ``KUBETRADE_EXCHANGE_API_BASE`` (every exchange request to
that host) with the credentials in ``KUBETRADE_EXCHANGE_API_KEY``/``SECRET``.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from kubetrade.runner import Progress, RunError, RunOptions, refuse_live_replay, run_bot
from kubetrade.spec import TradingBot, parse_bot
from kubetrade.store import AsyncStore, Store
from kubetrade.trading.order_state import LiveOrder, LiveStatus
from tests.fake_exchanges.binance import FakeBinance, Fault
from tests.integration_support import start_workers, wait_for
from tests.test_pipeline import _dead_letters

pytestmark = pytest.mark.integration

H = 3_600_000
CANDLES = 160


class FakeInThread:
    """The fake exchange served from its own event loop while the test blocks on processes."""

    def __init__(self, fake: FakeBinance) -> None:
        self.fake = fake
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.url = asyncio.run_coroutine_threadsafe(fake.start(), self.loop).result(10)

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the fake's loop (its state is not thread-safe)."""

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.fake.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def exchange(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeInThread]:
    server = FakeInThread(FakeBinance())
    monkeypatch.setenv("KUBETRADE_EXCHANGE_API_BASE", server.url)
    monkeypatch.setenv("KUBETRADE_EXCHANGE_API_KEY", server.fake.api_key)
    monkeypatch.setenv("KUBETRADE_EXCHANGE_SECRET", server.fake.secret)
    monkeypatch.setenv("KUBETRADE_EXCHANGE_TIMEOUT_MS", "30000")
    monkeypatch.setenv("KUBETRADE_LIVE_UNRESOLVED_GRACE_S", "2")
    try:
        yield server
    finally:
        server.stop()


def candle_file(path: Path) -> Path:
    """Recent hourly BTC/USDT candles (a live bot admits no stale candle) ending before now: a
    slow wave of +-1 % around the fake's price, so that the crossover trades every half day
    and the marks stay near the prices the fake fills at."""
    end = (int(time.time() * 1000) // H - 1) * H
    rows, previous = [], 60_000.0
    for i in range(CANDLES):
        close = 60_000.0 * (1 + 0.01 * math.sin(2 * math.pi * i / 24))
        high, low = max(previous, close) * 1.0005, min(previous, close) * 0.9995
        opened = end - (CANDLES - i) * H
        rows.append(f"{opened},BTC/USDT,{previous:.2f},{high:.2f},{low:.2f},{close:.2f},1.0")
        previous = close
    path.write_text("timestamp,symbol,open,high,low,close,volume\n" + "\n".join(rows) + "\n")
    return path


def live_bot(name: str) -> TradingBot:
    return parse_bot(
        {
            "apiVersion": "kubetrade.io/v1alpha1",
            "kind": "TradingBot",
            "metadata": {"name": name, "namespace": "itest"},
            "spec": {
                "mode": "live",
                "liveConfirmed": True,
                "exchange": {"name": "binance", "credentialsSecret": "binance-keys"},
                "symbols": ["BTC/USDT"],
                "timeframe": "1h",
                "strategy": {"type": "sma-crossover", "params": {"fast": 4, "slow": 12}},
                "risk": {
                    "sizing": {"method": "fixed-fraction", "fractionPct": 20, "maxPositionPct": 25},
                    "stopLoss": None,
                    "takeProfit": None,
                    "breakers": {
                        "maxDailyLossPct": None,
                        "maxDrawdownPct": None,
                        "maxConsecutiveLosses": None,
                    },
                },
                "execution": {"initialCapital": 10_000, "quote": "USDT"},
            },
        }
    )


def journal(db_url: str, bot: TradingBot) -> list[LiveOrder]:
    async def read() -> list[LiveOrder]:
        async with await AsyncStore.connect(db_url) as db:
            return await db.read_journal(bot.key)

    return asyncio.run(read())


def assert_ledger_matches_exchange(db_url: str, bot: TradingBot, server: FakeInThread) -> None:
    """Orders, trades and balances: the ledger and the journal say what the exchange says."""
    fake = server.fake
    orders = server.call(lambda: [dict(o) for o in fake.orders.values()])
    trades = server.call(lambda: [dict(t) for t in fake.trades])
    balances = server.call(lambda: dict(fake.balances))
    with Store.connect(db_url) as db:
        fills = db.read_fills(bot.key)
        checkpoint = db.load_checkpoint(bot.key)
    rows = journal(db_url, bot)
    assert checkpoint is not None
    # One journal row per exchange order, same client ids: nothing lost, nothing doubled.
    sent = [r for r in rows if r.exchange_id is not None]
    assert sorted(r.client_id for r in sent) == sorted(o["clientOrderId"] for o in orders)
    assert len({o["clientOrderId"] for o in orders}) == len(orders)
    assert all(r.is_terminal for r in rows)
    by_id = {o["clientOrderId"]: o for o in orders}
    for row in sent:
        assert row.filled == pytest.approx(float(by_id[row.client_id]["executedQty"]), abs=1e-12)
    # Every trade is in the ledger once: same amounts per side, same quote paid and received.
    for side in ("buy", "sell"):
        is_buyer = side == "buy"
        traded = sum(Decimal(t["qty"]) for t in trades if t["isBuyer"] is is_buyer)
        quote = sum(Decimal(t["quoteQty"]) for t in trades if t["isBuyer"] is is_buyer)
        booked = [f for f in fills if f.side.value == side]
        assert sum(f.quantity for f in booked) == pytest.approx(float(traded), abs=1e-9)
        assert sum(f.quantity * f.price for f in booked) == pytest.approx(float(quote), abs=1e-6)
    # Cash is the exchange's USDT; the position (with the dust the lot step leaves) its BTC.
    state = checkpoint.state
    assert state["cash"] == pytest.approx(float(balances["USDT"]), abs=1e-6)
    held = sum(p["quantity"] for p in state["positions"])
    assert abs(held - float(balances["BTC"])) <= 0.00001 * (1 + len(trades))
    assert state["pending"] == []


def test_a_live_bot_trades_on_the_exchange_and_its_ledger_equals_the_exchanges(
    exchange: FakeInThread, nats_url: str, db_url: str, tmp_path: Path
) -> None:
    bot = live_bot("live-run")
    options = RunOptions(
        data_file=candle_file(tmp_path / "btc.csv"),
        report_dir=tmp_path / "report",
        nats_url=nats_url,
        database_url=db_url,
        timeout_s=240,
    )
    run_bot(bot, options)
    orders = exchange.call(lambda: len(exchange.fake.orders))
    assert orders >= 4, "the crossover should have traded a few round trips"
    requests = exchange.call(lambda: list(exchange.fake.requests))
    assert {r["api_key"] for r in requests if r["path"] == "/api/v3/order"} == {
        exchange.fake.api_key
    }
    assert_ledger_matches_exchange(db_url, bot, exchange)
    log = (tmp_path / "report" / "logs" / "executor.log").read_text()
    assert exchange.fake.secret not in log and exchange.fake.api_key not in log


def _first_order_seen(server: FakeInThread) -> Callable[[Progress], bool]:
    def seen(progress: Progress) -> bool:
        return bool(server.call(lambda: [r for r in server.fake.requests if r["method"] == "POST"]))

    return seen


@pytest.mark.parametrize("moment", ["journal_then_send", "send_then_ack", "partial_fills"])
def test_executor_killed_mid_order_loses_and_doubles_nothing(
    moment: str, exchange: FakeInThread, nats_url: str, db_url: str, tmp_path: Path
) -> None:
    """SIGKILL the executor while an order is in flight; after a restart the journal, the
    ledger and the position equal the exchange's.

    - journal_then_send: the intent is journaled, the request never reaches the exchange (held
      in transit and dropped when the executor dies): the restarted executor finds no such
      order and records it as never received; it is not resent.
    - send_then_ack: the exchange took the order, the executor died waiting for the answer:
      the restart finds it by client id and books its fill once.
    - partial_fills: half filled, the executor dies, the rest fills while it is down: the
      restart books the rest once.
    """
    fake = exchange.fake
    bot = live_bot(f"crash-{moment.replace('_', '-')}")
    if moment == "journal_then_send":
        exchange.call(lambda: fake.faults.append(Fault.in_transit(delay_s=8)))
    elif moment == "send_then_ack":
        exchange.call(lambda: fake.faults.append(Fault.late(delay_s=8)))
    else:
        fake.markets_rest = True
        exchange.call(lambda: fake.fill_script.append("partial"))
    options = RunOptions(
        data_file=candle_file(tmp_path / "btc.csv"),
        report_dir=tmp_path / "report",
        nats_url=nats_url,
        database_url=db_url,
    )
    procs, planned = start_workers(bot, nats_url, db_url, tmp_path, options)
    try:
        wait_for(bot, nats_url, procs, _first_order_seen(exchange), timeout=120)
        if moment == "partial_fills":
            # The executor books the half that filled, then dies; the rest fills meanwhile.
            deadline = time.monotonic() + 30
            while not any(r.filled > 0 for r in journal(db_url, bot)):
                assert time.monotonic() < deadline, "the partial fill was never journaled"
                time.sleep(0.2)
            time.sleep(1.5)
        else:
            time.sleep(1.0)  # the request is held by the fake
        procs.kill("executor")
        if moment == "partial_fills":
            (first,) = exchange.call(lambda: list(fake.orders.values()))
            assert first["status"] == "PARTIALLY_FILLED"
            exchange.call(lambda: fake.fill(first["clientOrderId"]))
            fake.markets_rest = False
        time.sleep(0.5)
        procs.start(planned["executor"])
        wait_for(bot, nats_url, procs, lambda p: p.done(), timeout=240)
    finally:
        procs.stop()
    rows = journal(db_url, bot)
    if moment == "journal_then_send":
        assert rows[0].status is LiveStatus.REJECTED and "not_received" in rows[0].reason
        assert not exchange.call(lambda: fake.order_by_client_id(rows[0].client_id))
    else:
        assert rows[0].status is LiveStatus.FILLED
    assert_ledger_matches_exchange(db_url, bot, exchange)
    # The candles came in one batch: the restart went on after the signals decided before the
    # kill (the checkpoint holds the position in the message) instead of deciding them again.
    assert "executor" not in asyncio.run(_dead_letters(nats_url, bot))


def test_an_order_the_journal_does_not_know_keeps_the_live_bot_disarmed(
    exchange: FakeInThread, nats_url: str, db_url: str, tmp_path: Path
) -> None:
    """An open order on the account that the bot did not send: the executor says so in its
    status (Reconciled=False) and opens no position, yet processes every candle."""
    fake = exchange.fake
    exchange.call(lambda: fake.place("BTCUSDT", "BUY", "0.01000", "50000.00", "by-hand-1"))
    bot = live_bot("live-unknown")
    options = RunOptions(
        data_file=candle_file(tmp_path / "btc.csv"),
        report_dir=tmp_path / "report",
        nats_url=nats_url,
        database_url=db_url,
    )
    procs, _ = start_workers(bot, nats_url, db_url, tmp_path, options)
    try:
        progress = wait_for(bot, nats_url, procs, lambda p: p.done(), timeout=240)
    finally:
        procs.stop()
    executor = progress.statuses["executor"]
    assert executor.state == "degraded"
    assert executor.message.startswith("Reconciled=False: unknown open order")
    assert "by-hand-1" in executor.message
    assert (executor.trading or {})["reconciled"] is False
    assert exchange.call(lambda: len(fake.orders)) == 1  # nothing sent
    with Store.connect(db_url) as db:
        assert db.read_fills(bot.key) == []


def test_a_live_bot_replays_candles_only_on_a_testnet_or_a_stand_in(tmp_path: Path) -> None:
    bot = live_bot("live-replay")
    data = tmp_path / "btc.csv"
    with pytest.raises(RunError, match="real orders on old candles"):
        refuse_live_replay(bot, data, {})
    refuse_live_replay(bot, data, {"KUBETRADE_EXCHANGE_API_BASE": "http://127.0.0.1:1"})
    sandbox = bot.model_copy(
        update={
            "spec": bot.spec.model_copy(
                update={"exchange": bot.spec.exchange.model_copy(update={"sandbox": True})}
            )
        }
    )
    refuse_live_replay(sandbox, data, {})
    refuse_live_replay(bot, None, {})  # its own exchange's candles

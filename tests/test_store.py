"""The state store on a real PostgreSQL (embedded pgserver unless KUBETRADE_TEST_DATABASE_URL)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from kubetrade.domain import Candle, EquityPoint, Fill, Order, OrderReason, Side
from kubetrade.errors import OutageError, StoreError
from kubetrade.store import (
    AsyncStore,
    Checkpoint,
    EquityBucket,
    OrderStatus,
    OutboxMessage,
    Policies,
    RowCounts,
    SignalRecord,
    StaleCheckpointError,
    Store,
    StoredOrder,
)
from kubetrade.store.schema import MIGRATIONS
from tests.waiting import wait_for

BOT = "bots/btc-trend"
T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z
MINUTE = 60_000
HOUR = 60 * MINUTE


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    with Store.connect(db_url) as store:
        store.migrate()
        yield store


def candles(n: int, *, symbol: str = "BTC/USDT", start: int = T0) -> list[Candle]:
    return [
        Candle(symbol, "1m", start + i * MINUTE, 100.0 + i, 101.0 + i, 99.0 + i, 100.5 + i, 3.25)
        for i in range(n)
    ]


def signal(i: int, symbol: str = "BTC/USDT") -> SignalRecord:
    t = T0 + i * MINUTE
    return SignalRecord(
        symbol=symbol,
        time=t,
        prob_up=0.5 + i / 1000,
        direction="up",
        confidence=0.7,
        model_name="btc-xgb",
        model_version="3",
        feature_hash="abc123",
        # µs, with sub-millisecond parts the ledger must keep
        candle_published_us=(t + MINUTE + 5) * 1000 + 123,
        received_us=(t + MINUTE + 9) * 1000 + 456,
        decided_us=(t + MINUTE + 12) * 1000 + 789,
    )


def order(i: int) -> Order:
    return Order(
        f"cid-{i}", "BTC/USDT", Side.BUY, 0.5, OrderReason.ENTRY_LONG, T0 + i * MINUTE, 100.0
    )


def fill(i: int) -> Fill:
    return Fill(
        f"cid-{i}",
        "BTC/USDT",
        Side.BUY,
        0.5,
        100.1,
        0.05,
        T0 + i * MINUTE + 50,
        OrderReason.ENTRY_LONG,
        0.0,
    )


def point(t: int, equity: float, realized: float = 0.0) -> EquityPoint:
    return EquityPoint(t, equity, equity - 50.0, realized, 1.5, 1, 0.25)


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def test_migrate_is_idempotent(db_url: str) -> None:
    with Store.connect(db_url) as store:
        first = store.migrate()
        second = store.migrate()
        versions = store.conn.execute("SELECT version FROM schema_migrations ORDER BY 1").fetchall()
    assert first.applied == (1, 2, 3, 4, 5, 6, 7, 8)
    assert second.applied == ()
    assert first.version == second.version == 8
    assert first.timescale == second.timescale
    assert [v for (v,) in versions] == [1, 2, 3, 4, 5, 6, 7, 8]


def test_migrate_concurrent_processes_apply_once(db_url: str) -> None:
    workers = 4
    barrier = threading.Barrier(workers)
    results: list[tuple[int, ...]] = []
    errors: list[BaseException] = []

    def start_up() -> None:
        try:
            with Store.connect(db_url) as store:
                barrier.wait()
                results.append(store.migrate().applied)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start_up) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    every = tuple(m.version for m in MIGRATIONS)
    assert sorted(results) == [(), (), (), every]


def test_migrate_refuses_a_newer_schema(store: Store) -> None:
    store.conn.execute(
        "INSERT INTO schema_migrations (version, name, flavour) VALUES (99, 'x', 'plain')"
    )
    known = MIGRATIONS[-1].version
    with pytest.raises(StoreError, match=rf"version 99 .* only knows migrations up to {known}"):
        store.migrate()


def test_policies_reject_unknown_tables() -> None:
    with pytest.raises(ValueError, match="unknown tables \\['trades'\\]"):
        Policies(retention={"trades": timedelta(days=1)})


def test_store_requires_autocommit(db_url: str) -> None:
    with psycopg.connect(db_url) as conn, pytest.raises(ValueError, match="autocommit"):
        Store(conn)


@pytest.mark.parametrize("copy", [True, False], ids=["copy", "insert"])
def test_write_candles_dedupes_replays(db_url: str, copy: bool) -> None:
    with Store.connect(db_url, copy=copy) as store:
        store.migrate()
        assert store.last_candle_time(BOT, "BTC/USDT", "1m") is None
        assert store.write_candles(BOT, candles(100)) == 100
        # A restart replays the last 40 and continues with 60 new ones.
        assert (
            store.write_candles(BOT, candles(100)[60:] + candles(60, start=T0 + 100 * MINUTE)) == 60
        )
        # The same candle twice in one batch is stored once.
        twice = candles(1, symbol="ETH/USDT")
        assert store.write_candles(BOT, twice + twice) == 1
        assert store.write_candles("bots/other", candles(10)) == 10
        assert store.write_candles(BOT, []) == 0
        assert store.count_rows(BOT).candles == 161
        assert store.last_candle_time(BOT, "BTC/USDT", "1m") == T0 + 159 * MINUTE
        assert store.last_candle_time(BOT, "BTC/USDT", "5m") is None
        row = store.conn.execute(
            "SELECT open_time, open, high, low, close, volume FROM candles"
            " WHERE bot = %s AND open_time = '2024-01-01T00:02:00Z'",
            (BOT,),
        ).fetchone()
    assert row is not None
    assert row[0].timestamp() * 1000 == T0 + 2 * MINUTE
    assert row[1:] == (102.0, 103.0, 101.0, 102.5, 3.25)


def test_write_candles_copies_every_batch(store: Store) -> None:
    batch, batches = 2_000, 10
    for b in range(batches):
        store.write_candles(BOT, candles(batch, start=T0 + b * batch * MINUTE))
    assert store.count_rows(BOT).candles == batch * batches


def test_write_batch_round_trip(store: Store) -> None:
    assert store.load_checkpoint(BOT) is None
    state: dict[str, Any] = {
        "cash": 9_950.0,
        "positions": {"BTC/USDT": {"qty": 0.5}},
        "halted": None,
    }
    store.write_batch(
        BOT,
        signals=[signal(0), signal(1), signal(2), signal(2)],
        orders=[order(1)],
        fills=[fill(1)],
        equity=[point(T0, 10_000.0), point(T0 + MINUTE, 9_990.0), point(T0 + MINUTE, 9_995.0)],
        checkpoint=Checkpoint(stream_seq=7, processed=3, state=state),
    )
    assert store.load_checkpoint(BOT) == Checkpoint(stream_seq=7, processed=3, state=state)
    assert store.read_signals(BOT) == [signal(0), signal(1), signal(2)]
    assert store.read_orders(BOT) == [StoredOrder(order(1), OrderStatus.FILLED)]
    assert store.read_fills(BOT) == [fill(1)]
    # The last point given for a time wins.
    assert store.read_equity(BOT) == [point(T0, 10_000.0), point(T0 + MINUTE, 9_995.0)]
    assert store.count_rows(BOT) == RowCounts(candles=0, signals=3, orders=1, fills=1, equity=2)
    assert store.count_rows("bots/other") == RowCounts(0, 0, 0, 0, 0)
    assert store.load_checkpoint("bots/other") is None


def test_signal_latency_columns_keep_microseconds(store: Store) -> None:
    store.write_batch(BOT, signals=[signal(5)], checkpoint=Checkpoint(1, 1, {}))
    latency_us = store.conn.execute(
        "SELECT extract(epoch FROM decided_at - candle_published_at) * 1000000 FROM signals"
    ).fetchone()
    assert latency_us is not None
    assert float(latency_us[0]) == 7_666.0
    [read] = store.read_signals(BOT)
    assert read.decided_us - read.candle_published_us == 7_666


def test_replayed_batch_writes_nothing_twice(store: Store) -> None:
    batch: dict[str, Any] = {
        "signals": [signal(1)],
        "orders": [order(1)],
        "fills": [fill(1)],
        "equity": [point(T0, 10_000.0)],
    }
    store.write_batch(BOT, checkpoint=Checkpoint(3, 1, {"n": 1}), **batch)
    store.write_batch(BOT, checkpoint=Checkpoint(3, 1, {"n": 1}), **batch)
    assert store.count_rows(BOT) == RowCounts(candles=0, signals=1, orders=1, fills=1, equity=1)


def test_order_filled_by_a_later_batch(store: Store) -> None:
    store.write_batch(BOT, orders=[order(1), order(2)], checkpoint=Checkpoint(1, 1, {}))
    assert [o.status for o in store.read_orders(BOT)] == [OrderStatus.OPEN, OrderStatus.OPEN]
    store.write_batch(BOT, fills=[fill(2)], checkpoint=Checkpoint(2, 2, {}))
    assert [o.status for o in store.read_orders(BOT)] == [OrderStatus.OPEN, OrderStatus.FILLED]
    # The stored order re-sent together with its fill: still one row, now filled.
    store.write_batch(BOT, orders=[order(1)], fills=[fill(1)], checkpoint=Checkpoint(3, 3, {}))
    assert store.read_orders(BOT) == [
        StoredOrder(order(1), OrderStatus.FILLED),
        StoredOrder(order(2), OrderStatus.FILLED),
    ]


def test_checkpoint_never_moves_back(store: Store) -> None:
    store.write_batch(BOT, checkpoint=Checkpoint(10, 5, {"v": "new"}))
    with pytest.raises(
        StaleCheckpointError, match="at stream sequence 10; refusing to move it back to 9"
    ):
        store.write_batch(BOT, orders=[order(1)], checkpoint=Checkpoint(9, 4, {"v": "old"}))
    assert store.load_checkpoint(BOT) == Checkpoint(10, 5, {"v": "new"})
    assert store.count_rows(BOT).orders == 0


def test_failed_batch_writes_nothing(store: Store) -> None:
    store.write_batch(BOT, signals=[signal(0)], checkpoint=Checkpoint(1, 1, {"v": 1}))
    # equity is the last table written, so signals, orders and fills already went in when the
    # NOT NULL violation aborts the transaction.
    broken = EquityPoint(T0, None, 1.0, 0.0, 0.0, 0, 0.0)  # type: ignore[arg-type]
    with pytest.raises(psycopg.errors.NotNullViolation, match="equity"):
        store.write_batch(
            BOT,
            signals=[signal(1)],
            orders=[order(1)],
            fills=[fill(1)],
            equity=[point(T0 + MINUTE, 1.0), broken],
            checkpoint=Checkpoint(2, 2, {"v": 2}),
        )
    assert store.load_checkpoint(BOT) == Checkpoint(1, 1, {"v": 1})
    assert store.count_rows(BOT) == RowCounts(candles=0, signals=1, orders=0, fills=0, equity=0)
    # The connection is usable again and the staging tables hold nothing from the failed batch.
    store.write_batch(BOT, equity=[point(T0, 5.0)], checkpoint=Checkpoint(2, 2, {"v": 2}))
    assert store.count_rows(BOT) == RowCounts(candles=0, signals=1, orders=0, fills=0, equity=1)


def test_killed_writer_mid_batch_leaves_last_checkpoint(db_url: str, store: Store) -> None:
    """An executor killed mid-transaction (its session terminated) commits nothing."""
    store.write_batch(BOT, checkpoint=Checkpoint(1, 1, {"v": 1}))
    with (
        psycopg.connect(db_url, autocommit=True) as blocker,
        psycopg.connect(db_url, autocommit=True) as killer,
        Store.connect(db_url) as writer,
    ):
        writer_pid = writer.conn.info.backend_pid
        # An uncommitted equity row with the batch's key makes the writer wait inside its
        # equity insert, the last part of the statement: the checkpoint, signals, orders and
        # fills are written by then, uncommitted.
        blocker.execute("BEGIN")
        blocker.execute("INSERT INTO equity VALUES (%s, %s, 1, 1, 0, 0, 0, 0)", (BOT, _utc(T0)))
        failure: list[BaseException] = []

        def write() -> None:
            try:
                writer.write_batch(
                    BOT,
                    signals=[signal(1)],
                    orders=[order(1)],
                    fills=[fill(1)],
                    equity=[point(T0, 1.0)],
                    checkpoint=Checkpoint(2, 2, {"v": 2}),
                )
            except BaseException as exc:
                failure.append(exc)

        thread = threading.Thread(target=write)
        thread.start()

        def blocking_pids() -> list[int] | None:
            row = killer.execute("SELECT pg_blocking_pids(%s)", (writer_pid,)).fetchone()
            return row[0] if row else None

        blocked_by = wait_for(blocking_pids, "the writer to wait on the blocker's lock", 10)
        assert blocked_by == [blocker.info.backend_pid]
        killer.execute("SELECT pg_terminate_backend(%s)", (writer_pid,))
        blocker.execute("ROLLBACK")
        thread.join(timeout=30)
    assert failure and isinstance(failure[0], psycopg.OperationalError)
    assert store.load_checkpoint(BOT) == Checkpoint(1, 1, {"v": 1})
    assert store.count_rows(BOT) == RowCounts(0, 0, 0, 0, 0)


def test_equity_rollups(store: Store) -> None:
    # Two hours of day one and one hour of day two; points out of order on purpose.
    day2 = T0 + 24 * HOUR
    points = [
        point(T0 + 50 * MINUTE, 103.0, 1.0),
        point(T0 + 10 * MINUTE, 100.0, 0.0),
        point(T0 + 30 * MINUTE, 98.0, 0.5),
        point(T0 + HOUR + 5 * MINUTE, 104.0, 2.0),
        point(day2 + 15 * MINUTE, 110.0, 3.0),
        point(day2 + 45 * MINUTE, 107.0, 4.0),
    ]
    store.write_batch(BOT, equity=points, checkpoint=Checkpoint(1, 6, {}))
    store.write_batch("bots/other", equity=[point(T0, 1.0)], checkpoint=Checkpoint(1, 1, {}))
    assert store.read_equity_buckets(BOT, "hourly") == [
        EquityBucket(T0, 100.0, 103.0, 98.0, 103.0, 1.0, 3),
        EquityBucket(T0 + HOUR, 104.0, 104.0, 104.0, 104.0, 2.0, 1),
        EquityBucket(day2, 110.0, 107.0, 107.0, 110.0, 4.0, 2),
    ]
    assert store.read_equity_buckets(BOT, "daily") == [
        EquityBucket(T0, 100.0, 104.0, 98.0, 104.0, 2.0, 4),
        EquityBucket(day2, 110.0, 107.0, 107.0, 110.0, 4.0, 2),
    ]


def test_typical_executor_batches(store: Store) -> None:
    """A typical executor batch: 20 signals with their equity points and a trade."""
    batches = 100
    for b in range(batches):
        base = b * 20
        store.write_batch(
            BOT,
            signals=[signal(base + i) for i in range(20)],
            orders=[order(base)],
            fills=[fill(base)],
            equity=[point(T0 + (base + i) * MINUTE, 10_000.0 + i) for i in range(20)],
            checkpoint=Checkpoint(b + 1, base + 20, {"cash": 1.0, "positions": {"BTC/USDT": 0.5}}),
        )
    assert store.count_rows(BOT) == RowCounts(0, 2_000, 100, 100, 2_000)


def test_async_store(db_url: str) -> None:
    async def scenario() -> tuple[int, Checkpoint | None, list[Fill], int | None]:
        async with await AsyncStore.connect(db_url) as store:
            await store.migrate()
            written = await store.write_candles(BOT, candles(5))
            await store.write_batch(
                BOT, fills=[fill(1)], checkpoint=Checkpoint(4, 2, {"a": [1, 2]})
            )
            return (
                written,
                await store.load_checkpoint(BOT),
                await store.read_fills(BOT),
                await store.last_candle_time(BOT, "BTC/USDT", "1m"),
            )

    written, checkpoint, fills, last = asyncio.run(scenario())
    assert written == 5
    assert checkpoint == Checkpoint(4, 2, {"a": [1, 2]})
    assert fills == [fill(1)]
    assert last == T0 + 4 * MINUTE


def _message(i: int) -> OutboxMessage:
    return OutboxMessage("kubetrade.bots.btc.fills", f"fill {i}".encode(), {"Nats-Msg-Id": f"m{i}"})


def test_outbox_keeps_a_batch_s_messages_in_order_until_cleared(store: Store) -> None:
    """Messages committed with their batch (once, even when the batch is written again) come
    back in the order they were written, until the publisher clears them."""
    first = [_message(3), _message(1), _message(2)]
    store.write_batch(BOT, orders=[order(1)], checkpoint=Checkpoint(1, 1, {}), outbox=first)
    store.write_batch(BOT, orders=[order(1)], checkpoint=Checkpoint(1, 1, {}), outbox=first)
    store.write_batch(BOT, checkpoint=Checkpoint(2, 2, {}), outbox=[_message(0)])
    assert store.read_outbox(BOT) == [*first, _message(0)]
    assert store.clear_outbox(BOT, ["m3", "m1"]) == 2
    assert store.read_outbox(BOT) == [_message(2), _message(0)]


def test_outbox_is_written_with_its_checkpoint_or_not_at_all(store: Store) -> None:
    store.write_batch(BOT, checkpoint=Checkpoint(10, 5, {}))
    with pytest.raises(StaleCheckpointError):
        store.write_batch(BOT, checkpoint=Checkpoint(9, 4, {}), outbox=[_message(1)])
    assert store.read_outbox(BOT) == []


def test_async_store_reconnects_after_its_connection_is_killed(db_url: str) -> None:
    """A server-side disconnect (as when PostgreSQL restarts) costs a reconnect, not a crash."""

    async def scenario() -> RowCounts:
        db = await AsyncStore.connect(db_url, outage_limit_s=30)
        try:
            await db.migrate()
            await db.write_candles(BOT, candles(3))
            assert db.conn is not None
            pid = db.conn.info.backend_pid
            with psycopg.connect(db_url, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            await db.write_candles(BOT, candles(5))
            return await db.count_rows(BOT)
        finally:
            await db.close()

    assert asyncio.run(scenario()).candles == 5


@pytest.mark.timeout(60)  # giving up must not turn into waiting forever
def test_async_store_gives_up_past_the_outage_limit(tmp_path: Any) -> None:
    """No server: the store waits up to its limit, then raises OutageError naming the limit."""
    url = f"postgresql://postgres@/postgres?host={tmp_path}&connect_timeout=1"
    with pytest.raises(OutageError, match="KUBETRADE_OUTAGE_LIMIT_S"):
        asyncio.run(AsyncStore.connect(url, outage_limit_s=1.5))

"""The Timescale flavour of the schema on a real TimescaleDB.

Uses KUBETRADE_TEST_TIMESCALE_URL, else the WASM TimescaleDB build (see tests/fixtures_db.py).
That server takes one connection at a time, cannot COPY and keeps session state (prepared
statements) across connections, so every check opens and closes its own connection with
server-side prepares off and the store runs with ``copy=False``; it runs no background jobs,
so refreshes are called explicitly. Bots are unique per run because the database may be shared.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

from kubetrade.domain import Candle, EquityPoint, Fill, Order, OrderReason, Side
from kubetrade.store import (
    Checkpoint,
    EquityBucket,
    OrderStatus,
    Policies,
    SchemaInfo,
    StaleCheckpointError,
    Store,
    StoredOrder,
)
from kubetrade.store.schema import MIGRATIONS

T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z
MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
HYPERTABLES = {"candles", "signals", "orders", "fills", "equity"}


def connect(url: str) -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(url, autocommit=True, prepare_threshold=None)


def open_store(url: str) -> Store:
    return Store(connect(url), copy=False)


def query(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with connect(url) as conn:
        return conn.execute(sql, params).fetchall()


def jobs(url: str) -> dict[tuple[str, str], dict[str, Any]]:
    """(proc_name, hypertable or view name) -> config of our schema's policy jobs."""
    rows = query(
        url,
        "SELECT proc_name, hypertable_name, config FROM timescaledb_information.jobs"
        " WHERE hypertable_schema = current_schema()",
    )
    return {(proc, table): config for proc, table, config in rows}


@pytest.fixture(scope="module")
def migrated(timescale_url: str) -> tuple[SchemaInfo, SchemaInfo]:
    with open_store(timescale_url) as store:
        return store.migrate(), store.migrate()


def test_migrate_detects_timescale(migrated: tuple[SchemaInfo, SchemaInfo]) -> None:
    first, second = migrated
    assert first.timescale and second.timescale
    assert first.version == second.version == MIGRATIONS[-1].version
    assert second.applied == ()


def test_hypertables_with_compression(timescale_url: str, migrated: object) -> None:
    rows = query(
        timescale_url,
        "SELECT hypertable_name, compression_enabled FROM timescaledb_information.hypertables"
        " WHERE hypertable_schema = current_schema()",
    )
    assert {name for name, _ in rows} >= HYPERTABLES
    assert all(enabled for name, enabled in rows if name in HYPERTABLES)
    segment_by = query(
        timescale_url,
        "SELECT hypertable_name, attname FROM timescaledb_information.compression_settings"
        " WHERE hypertable_schema = current_schema() AND segmentby_column_index IS NOT NULL",
    )
    assert ("candles", "symbol") in segment_by
    assert ("equity", "bot") in segment_by


def test_continuous_aggregates_and_policies(timescale_url: str, migrated: object) -> None:
    caggs = query(
        timescale_url,
        "SELECT view_name, materialized_only FROM timescaledb_information.continuous_aggregates"
        " WHERE view_schema = current_schema()",
    )
    assert sorted(caggs) == [("equity_daily", False), ("equity_hourly", False)]
    found = jobs(timescale_url)
    for table in HYPERTABLES:
        assert found[("policy_compression", table)]["compress_after"] == "7 days"
    assert found[("policy_retention", "candles")]["drop_after"] == "365 days"
    assert found[("policy_retention", "signals")]["drop_after"] == "90 days"
    assert ("policy_retention", "fills") not in found
    assert found[("policy_refresh_continuous_aggregate", "equity_hourly")]["start_offset"] is None
    assert ("policy_refresh_continuous_aggregate", "equity_daily") in found


def test_policies_follow_configuration(timescale_url: str, migrated: object) -> None:
    def job_ids() -> set[int]:
        return {
            job_id
            for (job_id,) in query(
                timescale_url,
                "SELECT job_id FROM timescaledb_information.jobs"
                " WHERE hypertable_schema = current_schema()",
            )
        }

    before = job_ids()
    with open_store(timescale_url) as store:
        store.migrate()
    assert job_ids() == before, "an unchanged configuration must leave the jobs alone"

    with open_store(timescale_url) as store:
        store.migrate(Policies(compress_after=None, retention={"candles": timedelta(days=30)}))
    found = jobs(timescale_url)
    assert not any(proc == "policy_compression" for proc, _ in found)
    assert found[("policy_retention", "candles")]["drop_after"] == "30 days"
    assert ("policy_retention", "signals") not in found

    with open_store(timescale_url) as store:
        store.migrate()
    found = jobs(timescale_url)
    assert found[("policy_retention", "candles")]["drop_after"] == "365 days"
    assert found[("policy_compression", "equity")]["compress_after"] == "7 days"


def test_writes_and_equity_rollups_after_refresh(timescale_url: str, migrated: object) -> None:
    bot = f"ts-{uuid.uuid4().hex[:8]}/bot"
    day2 = T0 + DAY
    points = [
        EquityPoint(T0 + 50 * MINUTE, 103.0, 50.0, 1.0, 0.0, 1, 0.0),
        EquityPoint(T0 + 10 * MINUTE, 100.0, 50.0, 0.0, 0.0, 1, 0.0),
        EquityPoint(T0 + 30 * MINUTE, 98.0, 50.0, 0.5, 0.0, 1, 2.0),
        EquityPoint(T0 + HOUR + 5 * MINUTE, 104.0, 50.0, 2.0, 0.0, 0, 0.0),
        EquityPoint(day2 + 15 * MINUTE, 110.0, 50.0, 3.0, 0.0, 1, 0.0),
        EquityPoint(day2 + 45 * MINUTE, 107.0, 50.0, 4.0, 0.0, 1, 2.7),
    ]
    hourly = [
        EquityBucket(T0, 100.0, 103.0, 98.0, 103.0, 1.0, 3),
        EquityBucket(T0 + HOUR, 104.0, 104.0, 104.0, 104.0, 2.0, 1),
        EquityBucket(day2, 110.0, 107.0, 107.0, 110.0, 4.0, 2),
    ]
    daily = [
        EquityBucket(T0, 100.0, 104.0, 98.0, 104.0, 2.0, 4),
        EquityBucket(day2, 110.0, 107.0, 107.0, 110.0, 4.0, 2),
    ]
    candles = [Candle("BTC/USDT", "1h", T0 + i * HOUR, 1.0, 2.0, 0.5, 1.5, 10.0) for i in range(3)]
    with open_store(timescale_url) as store:
        assert store.write_candles(bot, candles) == 3
        assert store.write_candles(bot, candles) == 0
        assert store.last_candle_time(bot, "BTC/USDT", "1h") == T0 + 2 * HOUR
        store.write_batch(bot, equity=points, checkpoint=Checkpoint(6, 6, {"cash": 50.0}))
        assert store.load_checkpoint(bot) == Checkpoint(6, 6, {"cash": 50.0})
        # Nothing materialised yet: real-time aggregation answers from the hypertable.
        assert store.read_equity_buckets(bot, "hourly") == hourly
        assert store.read_equity_buckets(bot, "daily") == daily
        for view in ("equity_hourly", "equity_daily"):
            store.conn.execute(f"CALL refresh_continuous_aggregate('{view}', NULL, NULL)")
        assert store.read_equity_buckets(bot, "hourly") == hourly
        assert store.read_equity_buckets(bot, "daily") == daily
        # The refresh really materialised the buckets (time_bucket, first/last in Timescale).
        mat_schema, mat_table = store.conn.execute(
            "SELECT materialization_hypertable_schema, materialization_hypertable_name"
            " FROM timescaledb_information.continuous_aggregates WHERE view_name = 'equity_hourly'"
        ).fetchone() or ("", "")
        materialised = store.conn.execute(
            sql.SQL(
                "SELECT equity, min_equity, points FROM {} WHERE bot = %s ORDER BY bucket"
            ).format(sql.Identifier(mat_schema, mat_table)),
            (bot,),
        ).fetchall()
    assert materialised == [(b.equity, b.min_equity, b.points) for b in hourly]


def test_ledger_on_hypertables(timescale_url: str, migrated: object) -> None:
    bot = f"ts-{uuid.uuid4().hex[:8]}/bot"
    buy = Order("cid-1", "BTC/USDT", Side.BUY, 0.5, OrderReason.ENTRY_LONG, T0, 100.0)
    sell = Order("cid-2", "BTC/USDT", Side.SELL, 0.5, OrderReason.STOP_LOSS, T0 + HOUR, 95.0)
    fills = [
        Fill("cid-1", "BTC/USDT", Side.BUY, 0.5, 100.1, 0.05, T0 + 1, OrderReason.ENTRY_LONG, 0.0),
        Fill(
            "cid-2", "BTC/USDT", Side.SELL, 0.5, 95.0, 0.05, T0 + HOUR, OrderReason.STOP_LOSS, -2.6
        ),
    ]
    with open_store(timescale_url) as store:
        store.write_batch(bot, orders=[buy, sell], fills=fills[:1], checkpoint=Checkpoint(1, 1, {}))
        store.write_batch(bot, fills=fills[1:], checkpoint=Checkpoint(2, 2, {}))
        with pytest.raises(StaleCheckpointError):
            store.write_batch(bot, fills=fills, checkpoint=Checkpoint(1, 1, {}))
        assert store.read_orders(bot) == [
            StoredOrder(buy, OrderStatus.FILLED),
            StoredOrder(sell, OrderStatus.FILLED),
        ]
        assert store.read_fills(bot) == fills
        assert store.load_checkpoint(bot) == Checkpoint(2, 2, {})

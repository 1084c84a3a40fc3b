"""The versioned schema: an ordered list of migrations, each in a plain and a Timescale flavour.

Never edit an applied migration; append a new one. Every row is scoped by ``bot``
("namespace/name"). Under TimescaleDB the time-series tables are hypertables, so every unique
key includes the time column (a hypertable can only enforce uniqueness within a chunk).
"""

from __future__ import annotations

from dataclasses import dataclass

from kubetrade.store.budget import MIGRATION_SQL as BUDGET_SQL
from kubetrade.store.journal import MIGRATION_SQL as JOURNAL_SQL

BOOTSTRAP = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    flavour text NOT NULL CHECK (flavour IN ('plain', 'timescale')),
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step: ``common`` SQL for both flavours, then the flavour's own SQL."""

    version: int
    name: str
    common: tuple[str, ...] = ()
    plain: tuple[str, ...] = ()
    timescale: tuple[str, ...] = ()

    def statements(self, timescale: bool) -> tuple[str, ...]:
        """The statements to run for the chosen flavour, in order."""
        return self.common + (self.timescale if timescale else self.plain)


_TABLES = (
    """
    CREATE TABLE candles (
        bot text NOT NULL,
        symbol text NOT NULL,
        timeframe text NOT NULL,
        open_time timestamptz NOT NULL,
        open double precision NOT NULL,
        high double precision NOT NULL,
        low double precision NOT NULL,
        close double precision NOT NULL,
        volume double precision NOT NULL,
        PRIMARY KEY (bot, symbol, timeframe, open_time)
    )
    """,
    """
    CREATE TABLE signals (
        bot text NOT NULL,
        symbol text NOT NULL,
        time timestamptz NOT NULL,
        prob_up double precision,
        direction text,
        confidence double precision,
        model_name text NOT NULL,
        model_version text NOT NULL,
        feature_hash text NOT NULL,
        candle_published_at timestamptz NOT NULL,
        received_at timestamptz NOT NULL,
        decided_at timestamptz NOT NULL,
        PRIMARY KEY (bot, symbol, time)
    )
    """,
    """
    CREATE TABLE orders (
        bot text NOT NULL,
        client_order_id text NOT NULL,
        symbol text NOT NULL,
        side text NOT NULL CHECK (side IN ('buy', 'sell')),
        quantity double precision NOT NULL,
        reason text NOT NULL,
        created_at timestamptz NOT NULL,
        reference_price double precision NOT NULL,
        status text NOT NULL CHECK (status IN ('open', 'filled')),
        PRIMARY KEY (bot, client_order_id, created_at)
    )
    """,
    """
    CREATE TABLE fills (
        bot text NOT NULL,
        client_order_id text NOT NULL,
        symbol text NOT NULL,
        side text NOT NULL CHECK (side IN ('buy', 'sell')),
        quantity double precision NOT NULL,
        price double precision NOT NULL,
        fee double precision NOT NULL,
        time timestamptz NOT NULL,
        reason text NOT NULL,
        realized_pnl double precision NOT NULL,
        PRIMARY KEY (bot, client_order_id, time)
    )
    """,
    # Fills are read per bot in time order; the primary key leads with client_order_id.
    "CREATE INDEX fills_bot_time_idx ON fills (bot, time)",
    """
    CREATE TABLE equity (
        bot text NOT NULL,
        time timestamptz NOT NULL,
        equity double precision NOT NULL,
        cash double precision NOT NULL,
        realized_pnl double precision NOT NULL,
        unrealized_pnl double precision NOT NULL,
        open_positions integer NOT NULL,
        drawdown_pct double precision NOT NULL,
        PRIMARY KEY (bot, time)
    )
    """,
    """
    CREATE TABLE executor_state (
        bot text PRIMARY KEY,
        stream_seq bigint NOT NULL,
        processed bigint NOT NULL,
        state jsonb NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now()
    )
    """,
)

# (table, time column, segment-by columns) of every hypertable.
HYPERTABLES: tuple[tuple[str, str, str], ...] = (
    ("candles", "open_time", "bot, symbol, timeframe"),
    ("signals", "time", "bot, symbol"),
    ("orders", "created_at", "bot, symbol"),
    ("fills", "time", "bot, symbol"),
    ("equity", "time", "bot"),
)

# The positional create_hypertable signature works on every TimescaleDB 2.x, not only >= 2.13.
_HYPERTABLES = tuple(
    f"""
    SELECT create_hypertable('{table}', '{column}',
                             chunk_time_interval => INTERVAL '7 days', if_not_exists => true)
    """
    for table, column, _ in HYPERTABLES
) + tuple(
    f"""
    ALTER TABLE {table} SET (timescaledb.compress,
                             timescaledb.compress_segmentby = '{segment_by}',
                             timescaledb.compress_orderby = '{column} DESC')
    """
    for table, column, segment_by in HYPERTABLES
)

# Roll-up columns: first and last equity of the bucket, extremes, the cumulative realized PnL
# at the bucket's end, and how many points it holds. Daily PnL is equity minus the previous
# bucket's equity.
_ROLLUP_PERIODS = (("equity_hourly", "1 hour"), ("equity_daily", "1 day"))


def _plain_rollup(view: str, width: str) -> str:
    # first()/last() are Timescale functions; ordered array_agg gives the same on plain SQL.
    # The origin is a UTC midnight so buckets line up with time_bucket's.
    return f"""
    CREATE VIEW {view} AS
    SELECT bot,
           date_bin(INTERVAL '{width}', time, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket,
           (array_agg(equity ORDER BY time))[1] AS open_equity,
           (array_agg(equity ORDER BY time DESC))[1] AS equity,
           min(equity) AS min_equity,
           max(equity) AS max_equity,
           (array_agg(realized_pnl ORDER BY time DESC))[1] AS realized_pnl,
           count(*) AS points
    FROM equity
    GROUP BY bot, bucket
    """


def _timescale_rollup(view: str, width: str) -> tuple[str, str]:
    # materialized_only = false: buckets not yet refreshed are computed on read, so the view
    # is always complete. start_offset => NULL: refresh every invalidated bucket, however old,
    # because replay bots write history far behind the wall clock.
    return (
        f"""
        CREATE MATERIALIZED VIEW {view}
        WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
        SELECT bot,
               time_bucket(INTERVAL '{width}', time) AS bucket,
               first(equity, time) AS open_equity,
               last(equity, time) AS equity,
               min(equity) AS min_equity,
               max(equity) AS max_equity,
               last(realized_pnl, time) AS realized_pnl,
               count(*) AS points
        FROM equity
        GROUP BY bot, bucket
        WITH NO DATA
        """,
        f"""
        SELECT add_continuous_aggregate_policy('{view}',
            start_offset => NULL,
            end_offset => INTERVAL '{width}',
            schedule_interval => INTERVAL '{width}' / 2,
            if_not_exists => true)
        """,
    )


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "tables", common=_TABLES),
    Migration(2, "hypertables", timescale=_HYPERTABLES),
    Migration(
        3,
        "equity roll-ups",
        plain=tuple(_plain_rollup(view, width) for view, width in _ROLLUP_PERIODS),
        timescale=tuple(
            stmt for view, width in _ROLLUP_PERIODS for stmt in _timescale_rollup(view, width)
        ),
    ),
    # The executor's transactional outbox: order and fill messages committed with the batch
    # that produced them, published from here and deleted once the stream holds them.
    Migration(
        4,
        "outbox",
        common=(
            """
            CREATE TABLE outbox (
                id bigserial,
                bot text NOT NULL,
                msg_id text NOT NULL,
                subject text NOT NULL,
                data bytea NOT NULL,
                headers jsonb NOT NULL,
                PRIMARY KEY (bot, msg_id)
            )
            """,
            "CREATE INDEX outbox_bot_id_idx ON outbox (bot, id)",
        ),
    ),
    # Live trading's order journal and account baselines (see kubetrade.store.journal).
    Migration(5, "live order journal", common=JOURNAL_SQL),
    # Halt events: every breaker trip and clear, kill and reset, with the figures at the time.
    Migration(
        6,
        "halts",
        common=(
            """
            CREATE TABLE halts (
                bot text NOT NULL,
                time timestamptz NOT NULL,
                kind text NOT NULL,
                cause text NOT NULL,
                message text NOT NULL,
                figures jsonb NOT NULL,
                PRIMARY KEY (bot, time, kind, cause)
            )
            """,
        ),
    ),
    # Refusals: entries not made and orders cancelled or refused, with the reason.
    Migration(
        7,
        "refusals",
        common=(
            """
            CREATE TABLE refusals (
                bot text NOT NULL,
                time timestamptz NOT NULL,
                kind text NOT NULL,
                code text NOT NULL,
                symbol text NOT NULL,
                client_order_id text NOT NULL,
                message text NOT NULL,
                PRIMARY KEY (bot, time, kind, symbol, client_order_id)
            )
            """,
        ),
    ),
    # Request weight per exchange account, shared by its bots (see kubetrade.store.budget).
    Migration(8, "exchange request budgets", common=BUDGET_SQL),
)

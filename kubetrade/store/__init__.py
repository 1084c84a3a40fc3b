"""State in PostgreSQL/TimescaleDB: schema and migrations, COPY writers, readers.

Open a :class:`Store` (sync) or :class:`AsyncStore` (asyncio workers), call ``migrate()`` once
at start-up, then write and read. Every row is scoped by ``bot`` ("namespace/name"), so many
bots share one database. Hypertables, continuous aggregates and policies are used when the
``timescaledb`` extension is available; plain tables and views otherwise.
"""

from kubetrade.store.errors import StaleCheckpointError
from kubetrade.store.records import (
    Checkpoint,
    EquityBucket,
    EquityPeriod,
    JsonObject,
    OrderStatus,
    OutboxMessage,
    Policies,
    RowCounts,
    SchemaInfo,
    SignalRecord,
    StoredOrder,
)
from kubetrade.store.store import AsyncStore, Store

__all__ = [
    "AsyncStore",
    "Checkpoint",
    "EquityBucket",
    "EquityPeriod",
    "JsonObject",
    "OrderStatus",
    "OutboxMessage",
    "Policies",
    "RowCounts",
    "SchemaInfo",
    "SignalRecord",
    "StaleCheckpointError",
    "Store",
    "StoredOrder",
]

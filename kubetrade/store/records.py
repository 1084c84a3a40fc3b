"""Row types the store reads and writes besides the domain types.

Times are int milliseconds since the Unix epoch (UTC), like everywhere in the product, except
the signal journey's wall-clock times, in microseconds (fields ending ``_us``); the store
converts both to ``timestamptz`` (µs precision) inside PostgreSQL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import Any, Literal

from kubetrade.domain import Order

JsonObject = dict[str, Any]
"""A JSON object as Python sees it (the executor's engine snapshot)."""

EquityPeriod = Literal["hourly", "daily"]
"""Which equity roll-up to read: the ``equity_hourly`` or the ``equity_daily`` view."""

RETAINABLE_TABLES = ("candles", "signals", "orders", "fills", "equity")
"""Tables that are hypertables under TimescaleDB, so compression and retention apply."""


@dataclass(frozen=True, slots=True)
class SignalRecord:
    """One signal as the executor processed it, with the timestamps of its journey.

    ``time`` is the candle's open time (ms). ``candle_published_us`` (feed), ``received_us`` and
    ``decided_us`` (executor) are wall-clock microseconds, so ``decided_us -
    candle_published_us`` is the candle-to-decision latency a benchmark reports; whole
    milliseconds would be too coarse for a p50 of a few ms.
    """

    symbol: str
    time: int
    prob_up: float | None
    direction: str | None
    confidence: float | None
    model_name: str
    model_version: str
    feature_hash: str
    candle_published_us: int
    received_us: int
    decided_us: int


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The executor's restart point: its engine snapshot and the last stream sequence applied.

    ``processed`` counts the signals applied so far; ``state`` must be JSON-serialisable.
    """

    stream_seq: int
    processed: int
    state: JsonObject


class OrderStatus(StrEnum):
    """Where an order stands; derived from the fills the store has seen for it."""

    OPEN = "open"
    FILLED = "filled"


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """A message committed with the executor batch that produced it, to be published.

    ``headers`` carry ``Nats-Msg-Id``, so publishing it again is de-duplicated by the stream.
    """

    subject: str
    data: bytes
    headers: dict[str, str]

    @property
    def msg_id(self) -> str:
        """The JetStream message id (the outbox row's key)."""
        return self.headers["Nats-Msg-Id"]


@dataclass(frozen=True, slots=True)
class StoredOrder:
    """An order as stored, with its status."""

    order: Order
    status: OrderStatus


@dataclass(frozen=True, slots=True)
class EquityBucket:
    """One bucket of the ``equity_hourly`` / ``equity_daily`` roll-up of one bot."""

    start: int
    open_equity: float
    equity: float
    min_equity: float
    max_equity: float
    realized_pnl: float
    points: int


@dataclass(frozen=True, slots=True)
class RowCounts:
    """How many rows one bot has in each table."""

    candles: int
    signals: int
    orders: int
    fills: int
    equity: int


@dataclass(frozen=True, slots=True)
class SchemaInfo:
    """What :func:`migrate` found or made: the flavour in use and the schema version.

    ``applied`` lists the migration versions this call applied (empty when already current).
    """

    timescale: bool
    version: int
    applied: tuple[int, ...]


def _default_retention() -> dict[str, timedelta]:
    return {"candles": timedelta(days=365), "signals": timedelta(days=90)}


@dataclass(frozen=True, slots=True)
class Policies:
    """TimescaleDB compression and retention settings, applied by every :func:`migrate`.

    Both are relative to the wall clock: a replay of candles older than a table's retention
    is dropped by the next retention run, so give replay bots ``retention={}`` (keep all).
    Tables missing from ``retention`` are kept forever; ``compress_after=None`` disables
    compression. Ignored on plain PostgreSQL.
    """

    compress_after: timedelta | None = timedelta(days=7)
    retention: dict[str, timedelta] = field(default_factory=_default_retention)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.retention) - set(RETAINABLE_TABLES))
        if unknown:
            raise ValueError(
                f"Policies.retention names unknown tables {unknown}; "
                f"use some of {', '.join(RETAINABLE_TABLES)}"
            )

"""``Store`` (sync, for reports, tests and tools) and ``AsyncStore`` (for the asyncio workers).

Both run the same ops (see :mod:`kubetrade.store.steps`) and own their transactions, so they
need an autocommit connection: a batch and its checkpoint must commit together, never inside
a caller's open transaction. Each serialises its calls with a lock because one connection
carries one transaction at a time.

``AsyncStore`` bounds every call by ``CALL_TIMEOUT_S`` and rides out a database outage: a call
that fails because the connection broke (or timed out) reconnects with backoff and runs again,
for up to the worker's outage limit, then raises :class:`~kubetrade.settings.OutageError`. Every
write is idempotent (rows are keyed, the checkpoint only moves forward), so running a call
again whose commit was applied but whose reply was lost changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import psycopg
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    RetryError,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential_jitter,
)

from kubetrade.domain import Candle, EquityPoint, Fill, Order
from kubetrade.errors import OutageError
from kubetrade.settings import DEFAULT_OUTAGE_LIMIT_S
from kubetrade.store.batch import write_batch_op
from kubetrade.store.budget import observe_weight_op, take_weight_op
from kubetrade.store.candles import write_candles_op
from kubetrade.store.driver import arun, run
from kubetrade.store.journal import (
    journal_intent_op,
    journal_update_op,
    read_journal_op,
    record_baseline_op,
)
from kubetrade.store.migrate import migrate_op
from kubetrade.store.reads import (
    clear_outbox_op,
    count_rows_op,
    last_candle_time_op,
    load_checkpoint_op,
    read_candles_op,
    read_equity_buckets_op,
    read_equity_op,
    read_fills_op,
    read_halts_op,
    read_orders_op,
    read_outbox_op,
    read_refusals_op,
    read_signals_op,
)
from kubetrade.store.records import (
    Checkpoint,
    EquityBucket,
    EquityPeriod,
    OutboxMessage,
    Policies,
    RowCounts,
    SchemaInfo,
    SignalRecord,
    StoredOrder,
)
from kubetrade.store.steps import Op, T
from kubetrade.trading.order_state import LiveOrder
from kubetrade.trading.outputs import HaltEvent, Refusal

log = logging.getLogger(__name__)

CALL_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 5
# A broken or closed connection, a server shutting down or not yet accepting, a call that hung.
TRANSIENT: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    TimeoutError,
)


def _require_autocommit(autocommit: bool, where: str) -> None:
    if not autocommit:
        raise ValueError(
            f"{where} needs an autocommit connection because it commits each write (a batch "
            "with its checkpoint) itself; open it with autocommit=True or use "
            f"{where}.connect(url)"
        )


class Store:
    """The state store on a sync ``psycopg.Connection``.

    ``copy=False`` sends bulk rows as single-row INSERTs instead of COPY, for servers that
    cannot COPY (the TimescaleDB WASM build the Timescale test runs on); keep the default.
    """

    def __init__(self, conn: psycopg.Connection[Any], *, copy: bool = True) -> None:
        _require_autocommit(conn.autocommit, "Store")
        self.conn = conn
        self._copy = copy
        self._lock = threading.Lock()

    @classmethod
    def connect(cls, url: str, *, copy: bool = True) -> Store:
        """Open an autocommit connection to ``url`` (URL or key=value conninfo)."""
        return cls(psycopg.connect(url, autocommit=True), copy=copy)

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self, op: Op[T]) -> T:
        with self._lock:
            return run(self.conn, op, copy=self._copy)

    def migrate(self, policies: Policies | None = None) -> SchemaInfo:
        """Create or upgrade the schema (TimescaleDB when available) and apply ``policies``.

        Safe to call from every process at start-up: concurrent calls serialise.
        """
        return self._run(migrate_op(policies or Policies()))

    def write_candles(self, bot: str, candles: Sequence[Candle]) -> int:
        """Store closed candles, skipping ones already stored; returns how many were new."""
        return self._run(write_candles_op(bot, candles))

    def write_batch(
        self,
        bot: str,
        *,
        checkpoint: Checkpoint,
        signals: Sequence[SignalRecord] = (),
        orders: Sequence[Order] = (),
        fills: Sequence[Fill] = (),
        equity: Sequence[EquityPoint] = (),
        outbox: Sequence[OutboxMessage] = (),
        halts: Sequence[HaltEvent] = (),
        refusals: Sequence[Refusal] = (),
    ) -> None:
        """Write an executor batch and its checkpoint in one transaction (all or nothing).

        Rows already stored are skipped (equity at an existing time is replaced). Raises
        :class:`StaleCheckpointError` when ``checkpoint.stream_seq`` is below the stored one.
        """
        self._run(
            write_batch_op(
                bot,
                signals=signals,
                orders=orders,
                fills=fills,
                equity=equity,
                checkpoint=checkpoint,
                outbox=outbox,
                halts=halts,
                refusals=refusals,
            )
        )

    def load_checkpoint(self, bot: str) -> Checkpoint | None:
        """The bot's last committed checkpoint, or None before its first batch."""
        return self._run(load_checkpoint_op(bot))

    def read_outbox(self, bot: str) -> list[OutboxMessage]:
        """Messages committed by executor batches and not yet published, in order."""
        return self._run(read_outbox_op(bot))

    def clear_outbox(self, bot: str, msg_ids: Sequence[str]) -> int:
        """Forget messages the stream holds; returns how many rows went."""
        return self._run(clear_outbox_op(bot, msg_ids))

    def last_candle_time(self, bot: str, symbol: str, timeframe: str) -> int | None:
        """Open time (ms) of the newest stored candle of a series, or None."""
        return self._run(last_candle_time_op(bot, symbol, timeframe))

    def read_signals(self, bot: str) -> list[SignalRecord]:
        """All signals of a bot in (time, symbol) order, with their latency timestamps."""
        return self._run(read_signals_op(bot))

    def read_orders(self, bot: str) -> list[StoredOrder]:
        """All orders of a bot in creation order, with their status."""
        return self._run(read_orders_op(bot))

    def read_fills(self, bot: str) -> list[Fill]:
        """All fills of a bot in time order."""
        return self._run(read_fills_op(bot))

    def read_equity(self, bot: str) -> list[EquityPoint]:
        """The bot's equity curve in time order."""
        return self._run(read_equity_op(bot))

    def read_halts(self, bot: str) -> list[HaltEvent]:
        """The bot's halt events (breaker trips and clears, kills and resets) in time order."""
        return self._run(read_halts_op(bot))

    def read_refusals(self, bot: str) -> list[Refusal]:
        """The bot's refused entries and cancelled or refused orders in time order."""
        return self._run(read_refusals_op(bot))

    def read_candles(self, bot: str) -> list[Candle]:
        """The candles the bot's feed stored, in stream order (time, then symbol)."""
        return self._run(read_candles_op(bot))

    def read_equity_buckets(self, bot: str, period: EquityPeriod) -> list[EquityBucket]:
        """The bot's ``"hourly"`` or ``"daily"`` equity roll-up, oldest first."""
        return self._run(read_equity_buckets_op(bot, period))

    def count_rows(self, bot: str) -> RowCounts:
        """How many rows the bot has in each table."""
        return self._run(count_rows_op(bot))


class AsyncStore:
    """The state store on a ``psycopg.AsyncConnection``; the same API as :class:`Store`."""

    def __init__(
        self,
        conn: psycopg.AsyncConnection[Any] | None,
        *,
        copy: bool = True,
        url: str | None = None,
        outage_limit_s: float = DEFAULT_OUTAGE_LIMIT_S,
    ) -> None:
        if conn is not None:
            _require_autocommit(conn.autocommit, "AsyncStore")
        elif url is None:
            raise ValueError("AsyncStore needs a connection or a URL to connect to")
        self.conn = conn
        self._url = url  # without one (a caller's connection) a broken connection is fatal
        self._copy = copy
        self._limit_s = outage_limit_s
        self._lock = asyncio.Lock()

    @classmethod
    async def connect(
        cls, url: str, *, copy: bool = True, outage_limit_s: float = DEFAULT_OUTAGE_LIMIT_S
    ) -> AsyncStore:
        """Connect to ``url`` (URL or key=value conninfo), waiting up to ``outage_limit_s``
        for the server; the store reconnects by itself after an outage."""
        store = cls(None, copy=copy, url=url, outage_limit_s=outage_limit_s)
        await store._run(_nothing)
        return store

    async def close(self) -> None:
        """Close the connection."""
        if self.conn is not None:
            await self.conn.close()

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self.conn is None or self.conn.closed:
            if self._url is None:
                raise psycopg.InterfaceError("the connection is closed and no URL to reopen it")
            self.conn = await psycopg.AsyncConnection.connect(
                self._url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
            )
        return self.conn

    async def _discard(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None and self._url is not None:
            try:
                await asyncio.wait_for(conn.close(), CONNECT_TIMEOUT_S)
            except Exception as error:
                log.debug("closing a broken connection failed", extra={"error": str(error)})

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _run(self, make: Callable[[], Op[T]]) -> T:
        """Run a fresh ``make()`` op, again on a new connection after a transient failure."""

        def note(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            log.warning(
                "database call failed; reconnecting",
                extra={
                    "attempt": state.attempt_number,
                    "error": f"{type(error).__name__}: {error}",
                },
            )

        retrying = AsyncRetrying(
            stop=stop_after_delay(self._limit_s if self._url is not None else 0),
            wait=wait_exponential_jitter(multiplier=0.1, max=5.0),
            retry=retry_if_exception_type(TRANSIENT),
            before_sleep=note,
        )
        async with self._lock:
            try:
                async for attempt in retrying:
                    with attempt:
                        try:
                            conn = await self._connection()
                            return await asyncio.wait_for(
                                arun(conn, make(), copy=self._copy), CALL_TIMEOUT_S
                            )
                        except TRANSIENT:
                            await self._discard()
                            raise
            except RetryError as error:
                last = error.last_attempt.exception()
                raise OutageError.past_limit(
                    "PostgreSQL unreachable", self._limit_s, self._limit_s, last
                ) from last
        raise AssertionError("unreachable: tenacity either returns or raises")

    async def migrate(self, policies: Policies | None = None) -> SchemaInfo:
        """See :meth:`Store.migrate`."""
        return await self._run(lambda: migrate_op(policies or Policies()))

    async def write_candles(self, bot: str, candles: Sequence[Candle]) -> int:
        """See :meth:`Store.write_candles`."""
        return await self._run(lambda: write_candles_op(bot, candles))

    async def write_batch(
        self,
        bot: str,
        *,
        checkpoint: Checkpoint,
        signals: Sequence[SignalRecord] = (),
        orders: Sequence[Order] = (),
        fills: Sequence[Fill] = (),
        equity: Sequence[EquityPoint] = (),
        outbox: Sequence[OutboxMessage] = (),
        halts: Sequence[HaltEvent] = (),
        refusals: Sequence[Refusal] = (),
    ) -> None:
        """See :meth:`Store.write_batch`."""
        await self._run(
            lambda: write_batch_op(
                bot,
                signals=signals,
                orders=orders,
                fills=fills,
                equity=equity,
                checkpoint=checkpoint,
                outbox=outbox,
                halts=halts,
                refusals=refusals,
            )
        )

    async def load_checkpoint(self, bot: str) -> Checkpoint | None:
        """See :meth:`Store.load_checkpoint`."""
        return await self._run(lambda: load_checkpoint_op(bot))

    async def read_outbox(self, bot: str) -> list[OutboxMessage]:
        """See :meth:`Store.read_outbox`."""
        return await self._run(lambda: read_outbox_op(bot))

    async def clear_outbox(self, bot: str, msg_ids: Sequence[str]) -> int:
        """See :meth:`Store.clear_outbox`."""
        return await self._run(lambda: clear_outbox_op(bot, msg_ids))

    async def take_weight(self, account: str, weight: float, limit: float, window_ms: int) -> float:
        """Take request weight from an exchange account's window: 0.0, or seconds to wait."""
        return await self._run(lambda: take_weight_op(account, weight, limit, window_ms))

    async def observe_weight(self, account: str, used: float, window_ms: int) -> None:
        """Raise the account's count in this window to what the exchange reports."""
        await self._run(lambda: observe_weight_op(account, used, window_ms))

    async def journal_intent(self, bot: str, order: LiveOrder) -> bool:
        """Commit a live order's intent before it is sent; False if its client id is known."""
        return await self._run(lambda: journal_intent_op(bot, order))

    async def journal_update(self, bot: str, order: LiveOrder) -> None:
        """Commit what became of a journaled live order."""
        await self._run(lambda: journal_update_op(bot, order))

    async def read_journal(self, bot: str) -> list[LiveOrder]:
        """Every journaled live order of ``bot``, oldest first."""
        return await self._run(lambda: read_journal_op(bot))

    async def record_baseline(self, bot: str, balances: Mapping[str, float]) -> dict[str, float]:
        """The bot's account baseline: ``balances`` the first time, the recorded one after."""
        return await self._run(lambda: record_baseline_op(bot, balances))

    async def last_candle_time(self, bot: str, symbol: str, timeframe: str) -> int | None:
        """See :meth:`Store.last_candle_time`."""
        return await self._run(lambda: last_candle_time_op(bot, symbol, timeframe))

    async def read_signals(self, bot: str) -> list[SignalRecord]:
        """See :meth:`Store.read_signals`."""
        return await self._run(lambda: read_signals_op(bot))

    async def read_orders(self, bot: str) -> list[StoredOrder]:
        """See :meth:`Store.read_orders`."""
        return await self._run(lambda: read_orders_op(bot))

    async def read_fills(self, bot: str) -> list[Fill]:
        """See :meth:`Store.read_fills`."""
        return await self._run(lambda: read_fills_op(bot))

    async def read_equity(self, bot: str) -> list[EquityPoint]:
        """See :meth:`Store.read_equity`."""
        return await self._run(lambda: read_equity_op(bot))

    async def read_equity_buckets(self, bot: str, period: EquityPeriod) -> list[EquityBucket]:
        """See :meth:`Store.read_equity_buckets`."""
        return await self._run(lambda: read_equity_buckets_op(bot, period))

    async def count_rows(self, bot: str) -> RowCounts:
        """See :meth:`Store.count_rows`."""
        return await self._run(lambda: count_rows_op(bot))


def _nothing() -> Op[None]:
    """An op that only needs a connection (``connect`` waits for the server with it)."""
    return
    yield

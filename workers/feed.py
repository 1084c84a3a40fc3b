"""The feed worker: publishes closed candles to JetStream and stores them in the database.

The candles ready at one moment (a candle time of every symbol, or up to 500 of a fast replay)
go to ``….candles.batch`` as one :class:`~kubetrade.messages.CandleBatch`, with the message id
of its first and last candle, so a restart or a second replay never duplicates: each batch
carries the feed's cursor (every symbol's newest open time so far), a restarted feed reads it
from the stream's last batch and skips everything up to it, and the server's duplicate window
catches a batch re-sent after a lost acknowledgement. ``exchange.speed`` paces a replay (a
multiple of real time); 0 publishes as fast as the pipeline takes it.

Storage reads the stream, not the publishing path: a durable consumer of the candle subjects
writes each batch to the database and acknowledges it only then (store-then-ack). A feed crash
or a database outage therefore loses nothing (the stream redelivers from the last
acknowledgement) and doubles nothing (a candle's key makes a second insert a no-op).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from opentelemetry import trace

from kubetrade import runtime
from kubetrade.bus import BatchConsumer, Connectivity, connect, ensure_stream, publish_all
from kubetrade.domain import Candle, timeframe_ms
from kubetrade.errors import OutageError
from kubetrade.health import HealthServer, Vitals, watch_forever
from kubetrade.market.sources import candle_source
from kubetrade.messages import (
    CandleBatch,
    CandleMessage,
    MessageError,
    decode,
    decode_candles,
    encode,
)
from kubetrade.metrics import CANDLES_PUBLISHED, DB_WRITE_SECONDS
from kubetrade.settings import WorkerSettings
from kubetrade.store import AsyncStore
from kubetrade.subjects import Subjects
from kubetrade.telemetry import hop

log = logging.getLogger(__name__)
tracer = trace.get_tracer("kubetrade.feed")

BATCH_MAX = 500
STORE_BATCH_MAX = 5000


class CandleStore:
    """Stores the stream's candles in the database, acknowledging each batch once written."""

    DURABLE = "feed-store"

    def __init__(
        self, db: AsyncStore, js: JetStreamContext, subjects: Subjects, bot: str, link: Connectivity
    ) -> None:
        self._db = db
        self._bot = bot
        self._consumer = BatchConsumer(js, subjects, subjects.all_candles, self.DURABLE, link)
        self.stored_through = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Resume after the last batch stored (the consumer's ack floor) and keep storing."""
        self.stored_through = await self._consumer.start()
        self._task = asyncio.create_task(self._run())

    async def caught_up(self, through: int, limit_s: float) -> None:
        """Wait until every candle up to stream sequence ``through`` is stored (bounded)."""
        deadline = time.monotonic() + limit_s
        while self.stored_through < through:
            self.check()
            if time.monotonic() > deadline:
                raise OutageError(
                    f"candles through stream sequence {through} not stored within {limit_s:.0f}s "
                    f"(stored through {self.stored_through}; KUBETRADE_OUTAGE_LIMIT_S)"
                )
            await asyncio.sleep(0.05)

    def check(self) -> None:
        """Raise the failure that stopped storing, if it stopped."""
        if self._task is not None and self._task.done():
            self._task.result()  # the database or NATS failure that stopped storing

    async def close(self) -> None:
        """Stop storing; what is not acknowledged yet comes again to the next feed."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()

    async def _run(self) -> None:
        while True:
            batch = await self._consumer.next_batch(STORE_BATCH_MAX, timeout=0.5)
            if not batch:
                continue
            candles: list[Candle] = []
            for delivery in batch:
                # A malformed message is inference's to dead-letter; there is nothing to store.
                with contextlib.suppress(MessageError):
                    received = decode_candles(delivery.msg.subject, delivery.msg.data)
                    candles.extend(message.to_candle() for message in received)
            if candles:
                with DB_WRITE_SECONDS.labels(self._bot, "feed").time():
                    await self._db.write_candles(self._bot, candles)
            await self._consumer.ack_through(batch)
            self.stored_through = batch[-1].sequence


async def stream_head(js: JetStreamContext, subjects: Subjects) -> int:
    """The stream sequence of the newest candle batch (0 when none)."""
    try:
        raw = await js.get_last_msg(subjects.stream, subjects.candle_batches)
    except NotFoundError:
        return 0
    return raw.seq or 0


async def published_through(
    js: JetStreamContext, subjects: Subjects, symbols: list[str]
) -> dict[str, int | None]:
    """Open time of the newest candle of each of ``symbols`` already in the stream (None for a
    symbol never published): the cursor in the stream's last batch."""
    try:
        raw = await js.get_last_msg(subjects.stream, subjects.candle_batches)
        through = decode(CandleBatch, raw.data or b"").through
    except (NotFoundError, MessageError):
        through = {}
    return {symbol: through.get(symbol) for symbol in symbols}


async def after(
    candles: AsyncIterator[Candle], resume: dict[str, int | None]
) -> AsyncIterator[Candle]:
    """The candles newer than what the stream holds of their symbol.

    Skipped before pacing, so a restarted replay resumes at once instead of waiting out the
    replay time of everything it already published.
    """
    async for candle in candles:
        if (resume.get(candle.symbol) or -1) < candle.open_time:
            yield candle


async def paced(candles: AsyncIterator[Candle], speed: float) -> AsyncIterator[list[Candle]]:
    """Batches of the candles that are ready now, each released at its replay time.

    A producer task reads the source (sleeping until each candle is due when ``speed`` > 0)
    into a queue; batches take whatever is queued, so candles due at the same instant (every
    symbol of one candle time) go out together, a fast source is published 500 at a time,
    and a live source is never held back waiting for more.
    """
    queue: asyncio.Queue[Candle | BaseException | None] = asyncio.Queue(maxsize=4 * BATCH_MAX)

    async def produce() -> None:
        start_wall: float | None = None
        start_close = 0
        try:
            async for candle in candles:
                if speed > 0:
                    if start_wall is None:
                        start_wall, start_close = time.monotonic(), candle.close_time
                    due = start_wall + (candle.close_time - start_close) / 1000.0 / speed
                    delay = due - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                await queue.put(candle)
            await queue.put(None)
        except Exception as error:
            await queue.put(error)

    producer = asyncio.create_task(produce())
    try:
        while True:
            batch: list[Candle] = []
            item = await queue.get()
            while True:
                if isinstance(item, BaseException):
                    raise item
                if item is None:
                    if batch:
                        yield batch
                    return
                batch.append(item)
                if len(batch) >= BATCH_MAX or queue.empty():
                    break
                item = queue.get_nowait()
            yield batch
    finally:
        producer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await producer


async def main(settings: WorkerSettings, stop: asyncio.Event) -> None:
    """Run the feed until the source ends (then idle, reporting finished) or ``stop`` is set."""
    bot = settings.bot
    subjects = Subjects(bot.metadata.namespace, bot.metadata.name)
    status = runtime.WorkerStatus("feed", bot.key)
    limit = settings.outage_limit_s
    link = Connectivity(limit)
    nc = await connect(settings.nats_url, f"{bot.key}/feed", link)
    js = nc.jetstream()
    await ensure_stream(js, subjects, limit)
    db = None
    if settings.database_url:
        db = await AsyncStore.connect(settings.database_url, outage_limit_s=limit)
        await db.migrate()
    connected = {"nats": lambda: nc.is_connected}
    if db is not None:
        connected["database"] = lambda: db.conn is not None and not db.conn.closed
    vitals = Vitals.for_bot(bot, "feed", connected)
    health = HealthServer(
        settings.http_host, settings.http_port, lambda: (nc.is_connected, status.state), vitals
    )
    await health.start()
    heartbeat = asyncio.create_task(runtime.publish_status_forever(nc, subjects, status))
    watchdog = asyncio.create_task(watch_forever(vitals, status))
    resume = await published_through(js, subjects, bot.spec.symbols)
    cursor = {symbol: at for symbol, at in resume.items() if at is not None}
    status.state = "running"
    tf = timeframe_ms(bot.spec.timeframe)
    log.info(
        "feed started", extra={"source": bot.spec.exchange.name, "resume": resume, "tf_ms": tf}
    )
    store = CandleStore(db, js, subjects, bot.key, link) if db is not None else None
    if store is not None:
        await store.start()
    runtime.settle_heap()
    try:
        window = (settings.replay_from, settings.replay_to)
        source = after(candle_source(bot, settings.data_file, window), resume)
        async for batch in paced(source, bot.spec.exchange.speed):
            if stop.is_set():
                break
            fresh = [c for c in batch if (resume.get(c.symbol) or -1) < c.open_time]
            if not fresh:
                continue
            link.check()
            if store is not None:
                store.check()
            await _publish(js, subjects, fresh, bot.key, limit, cursor)
            status.count("candles", len(fresh))
            vitals.progress(max(c.close_time for c in fresh))
        else:
            if store is not None:
                head = await stream_head(js, subjects)
                await store.caught_up(head, limit)
            status.state = "finished"
            status.message = f"source exhausted after {status.counters.get('candles', 0)} candles"
            log.info("feed finished", extra={"candles": status.counters.get("candles", 0)})
        await stop.wait()
    finally:
        watchdog.cancel()
        heartbeat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await heartbeat
        # Stopped mid-stream, nothing is lost: unstored candles wait in the stream for the next
        # feed's store consumer.
        if store is not None:
            await store.close()
        await runtime.quietly(nc.publish(subjects.status, encode(status.to_message())), "status")
        await health.stop()
        await runtime.quietly(nc.drain(), "drain NATS")
        if db is not None:
            await runtime.quietly(db.close(), "close database")


async def _publish(
    js: JetStreamContext,
    subjects: Subjects,
    candles: list[Candle],
    bot: str,
    limit_s: float,
    cursor: dict[str, int],
) -> None:
    """Publish ``candles`` as one batch carrying ``cursor`` advanced past them (in place)."""
    published_us = runtime.now_us()
    published: Counter[str] = Counter()
    for candle in candles:
        published[candle.symbol] += 1
        if cursor.get(candle.symbol, -1) < candle.open_time:
            cursor[candle.symbol] = candle.open_time
    message = CandleBatch(
        candles=[CandleMessage.from_candle(candle, published_us) for candle in candles],
        through=dict(cursor),
    )
    # One trace per batch starts here and continues through inference and the executor.
    attributes = {"kubetrade.bot": bot, "kubetrade.candles": len(candles)}
    msg_id = message.batch_id()
    with hop(tracer, "feed.candles", None, attributes, {"Nats-Msg-Id": msg_id}) as headers:
        items = [(subjects.candle_batches, encode(message), headers)]
    # Counted per symbol and batch: a labelled child looked up per candle cost more than the
    # candle's encoding.
    for symbol, count in published.items():
        CANDLES_PUBLISHED.labels(bot, symbol).inc(count)
    await publish_all(js, items, limit_s)


def cli() -> None:
    """Entry point: ``kubetrade worker feed``."""
    settings = runtime.prepare("feed")
    runtime.run(lambda stop: main(settings, stop))

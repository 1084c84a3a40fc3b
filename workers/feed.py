"""The feed worker: publishes closed candles to JetStream and writes them to the database.

Each candle goes to ``….candles.<symbol>`` with the message id symbol+timeframe+open time, so
a restart or a second replay never duplicates: the feed first asks the stream for the last
candle of each symbol and skips everything up to it, and the server's duplicate window
catches the rest. ``exchange.speed`` paces a replay (a multiple of real time); 0 publishes as
fast as the pipeline takes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from opentelemetry import trace

from kubetrade import runtime
from kubetrade.bus import connect, ensure_stream, publish_all
from kubetrade.domain import Candle, timeframe_ms
from kubetrade.health import HealthServer
from kubetrade.market.sources import candle_source
from kubetrade.messages import CandleMessage, MessageError, decode, encode
from kubetrade.metrics import CANDLES_PUBLISHED, DB_WRITE_SECONDS
from kubetrade.settings import WorkerSettings
from kubetrade.store import AsyncStore
from kubetrade.subjects import Subjects
from kubetrade.telemetry import hop

log = logging.getLogger(__name__)
tracer = trace.get_tracer("kubetrade.feed")

BATCH_MAX = 500


class CandleWriter:
    """Writes published candles to the database off the publishing path, many per COPY.

    A COPY costs a few milliseconds whatever its size; done inline it would delay every
    paced candle behind it, so the writer takes whatever queued up meanwhile in one go.
    """

    def __init__(self, db: AsyncStore, bot: str) -> None:
        self._db = db
        self._bot = bot
        self._queue: asyncio.Queue[list[Candle]] = asyncio.Queue(maxsize=1000)
        self._task = asyncio.create_task(self._run())

    async def submit(self, candles: list[Candle]) -> None:
        """Queue candles for writing (waits when the database falls far behind)."""
        if self._task.done():
            await self._task  # surfaces the database error that stopped the writer
        await self._queue.put(candles)

    async def flush(self) -> None:
        """Wait until everything submitted is in the database."""
        join = asyncio.ensure_future(self._queue.join())
        await asyncio.wait({join, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if self._task.done():
            join.cancel()
            await self._task

    async def close(self) -> None:
        """Stop the writer (after a flush, nothing is lost)."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        while True:
            parts = [await self._queue.get()]
            while not self._queue.empty():
                parts.append(self._queue.get_nowait())
            candles = [c for part in parts for c in part]
            with DB_WRITE_SECONDS.labels(self._bot, "feed").time():
                await self._db.write_candles(self._bot, candles)
            for _ in parts:
                self._queue.task_done()


async def last_published(js: JetStreamContext, subjects: Subjects, symbol: str) -> int | None:
    """Open time of the newest candle of ``symbol`` already in the stream, if any."""
    try:
        raw = await js.get_last_msg(subjects.stream, subjects.candles(symbol))
    except NotFoundError:
        return None
    try:
        return decode(CandleMessage, raw.data or b"").open_time
    except MessageError:
        return None


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
    nc = await connect(settings.nats_url, f"{bot.key}/feed")
    js = nc.jetstream()
    await ensure_stream(js, subjects)
    db = await AsyncStore.connect(settings.database_url) if settings.database_url else None
    if db is not None:
        await db.migrate()
    health = HealthServer(
        settings.http_host, settings.http_port, lambda: (nc.is_connected, status.state)
    )
    await health.start()
    heartbeat = asyncio.create_task(runtime.publish_status_forever(nc, subjects, status))
    resume = {s: await last_published(js, subjects, s) for s in bot.spec.symbols}
    status.state = "running"
    tf = timeframe_ms(bot.spec.timeframe)
    log.info(
        "feed started", extra={"source": bot.spec.exchange.name, "resume": resume, "tf_ms": tf}
    )
    writer = CandleWriter(db, bot.key) if db is not None else None
    try:
        source = candle_source(bot, settings.data_file)
        async for batch in paced(source, bot.spec.exchange.speed):
            if stop.is_set():
                break
            fresh = [c for c in batch if (resume.get(c.symbol) or -1) < c.open_time]
            if not fresh:
                continue
            await _publish(js, subjects, fresh, bot.key)
            status.count("candles", len(fresh))
            if writer is not None:
                await writer.submit(fresh)
        else:
            if writer is not None:
                await writer.flush()
            status.state = "finished"
            status.message = f"source exhausted after {status.counters.get('candles', 0)} candles"
            log.info("feed finished", extra={"candles": status.counters.get("candles", 0)})
        await stop.wait()
    finally:
        heartbeat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await heartbeat
        await nc.publish(subjects.status, encode(status.to_message()))
        await health.stop()
        await nc.drain()
        if writer is not None:
            # Stopped mid-stream: what was published belongs in the database too.
            try:
                await asyncio.wait_for(writer.flush(), 10)
            except Exception as error:
                log.error(
                    "candles published but not stored at shutdown", extra={"error": str(error)}
                )
            await writer.close()
        if db is not None:
            await db.close()


async def _publish(
    js: JetStreamContext, subjects: Subjects, candles: list[Candle], bot: str
) -> None:
    published_at = runtime.now_ms()
    items = []
    for candle in candles:
        # One trace per candle starts here and continues through inference and the executor.
        attributes = {"kubetrade.bot": bot, "kubetrade.symbol": candle.symbol}
        with hop(tracer, "feed.candle", None, attributes, {"Nats-Msg-Id": candle.key}) as headers:
            message = CandleMessage.from_candle(candle, published_at)
            items.append((subjects.candles(candle.symbol), encode(message), headers))
        CANDLES_PUBLISHED.labels(bot, candle.symbol).inc()
    await publish_all(js, items)


def cli() -> None:
    """Entry point: ``kubetrade worker feed``."""
    settings = runtime.prepare("feed")
    runtime.run(lambda stop: main(settings, stop))

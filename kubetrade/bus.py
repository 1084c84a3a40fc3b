"""NATS and JetStream wiring shared by the workers.

Streams hold candles, signals, orders, fills and dead letters; each consumer is durable, with
explicit "ack all" acknowledgement, so a restarted worker resumes after the last message it
committed. Messages arrive through a push subscription into a queue and are handed out in
micro-batches: one message when traffic is light (low latency), many when it queues up
(throughput). That avoids a pull ``fetch(n)`` that lingers until ``n`` messages arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError

from kubetrade.metrics import DEAD_LETTERS
from kubetrade.subjects import Subjects

log = logging.getLogger(__name__)

# Restarts and replays within this window are de-duplicated by message id on the server;
# the feed also skips what the stream already holds, so older duplicates cannot happen either.
DUPLICATE_WINDOW_S = 6 * 3600
ACK_WAIT_S = 120


async def connect(url: str, name: str) -> Client:
    """Connect to NATS, retrying while the server starts; the error names the URL."""
    try:
        return await nats.connect(
            url,
            name=name,
            connect_timeout=5,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            allow_reconnect=True,
        )
    except Exception as error:
        raise ConnectionError(
            f"cannot connect to NATS at {url}: {error}. Check KUBETRADE_NATS_URL."
        ) from error


async def ensure_stream(js: JetStreamContext, subjects: Subjects) -> None:
    """Create the bot's stream, or leave it as it is when it already exists."""
    config = StreamConfig(
        name=subjects.stream,
        subjects=subjects.stream_subjects,
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=7 * 86400,
        duplicate_window=DUPLICATE_WINDOW_S,
    )
    try:
        await js.stream_info(subjects.stream)
    except NotFoundError:
        try:
            await js.add_stream(config)
        except Exception:  # another worker created it at the same moment
            await js.stream_info(subjects.stream)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One JetStream message with its stream sequence and when this process received it."""

    msg: Msg
    sequence: int
    received_ns: int  # wall clock, comparable with the feed's published_at


class BatchConsumer:
    """A durable JetStream consumer handing out micro-batches in stream order."""

    def __init__(self, js: JetStreamContext, subjects: Subjects, filter_subject: str, durable: str):
        self._js = js
        self._subjects = subjects
        self._filter = filter_subject
        self._durable = durable
        self._queue: asyncio.Queue[Delivery] = asyncio.Queue()
        self._sub: Any = None

    async def start(self, resume_after: int | None = None) -> int:
        """(Re)create the durable consumer at ``resume_after + 1`` and start receiving.

        ``resume_after`` is the last stream sequence the caller has fully applied; the
        executor takes it from its database checkpoint. Without it, the consumer's own ack
        floor is used. Recreating the consumer at that point, instead of binding to it as it
        was, means messages a killed process received but never acknowledged come back at
        once rather than after the ack wait. Returns the sequence resumed after.
        """
        if resume_after is None:
            try:
                info = await self._js.consumer_info(self._subjects.stream, self._durable)
                resume_after = info.ack_floor.stream_seq if info.ack_floor else 0
            except NotFoundError:
                resume_after = 0
        with contextlib.suppress(NotFoundError):
            await self._js.delete_consumer(self._subjects.stream, self._durable)

        async def enqueue(msg: Msg) -> None:
            self._queue.put_nowait(Delivery(msg, msg.metadata.sequence.stream, time.time_ns()))

        config = ConsumerConfig(
            durable_name=self._durable,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=resume_after + 1,
            ack_policy=AckPolicy.ALL,
            ack_wait=ACK_WAIT_S,
            max_ack_pending=50_000,
            filter_subject=self._filter,
        )
        self._sub = await self._js.subscribe(
            self._filter,
            durable=self._durable,
            stream=self._subjects.stream,
            cb=enqueue,
            manual_ack=True,
            config=config,
            pending_msgs_limit=200_000,
        )
        return resume_after

    async def next_batch(self, max_size: int, timeout: float | None = None) -> list[Delivery]:
        """Wait for at least one message (or ``timeout``), then take what is queued."""
        try:
            first = await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return []
        batch = [first]
        while len(batch) < max_size and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        return batch

    @staticmethod
    async def ack_through(batch: list[Delivery]) -> None:
        """Acknowledge every message up to the last of ``batch`` (ack policy "all")."""
        if batch:
            await batch[-1].msg.ack()

    async def stop(self) -> None:
        """Stop receiving; unacknowledged messages are redelivered to the next process."""
        if self._sub is not None:
            await self._sub.unsubscribe()


async def replay(
    js: JetStreamContext, subjects: Subjects, filter_subject: str, through: int
) -> AsyncIterator[Msg]:
    """The stream's messages on ``filter_subject`` up to sequence ``through``, in order."""
    if through <= 0:
        return
    sub = await js.subscribe(filter_subject, stream=subjects.stream, ordered_consumer=True)
    try:
        while True:
            msg = await sub.next_msg(timeout=10)
            if msg.metadata.sequence.stream > through:
                return
            yield msg
            if msg.metadata.sequence.stream == through or msg.metadata.num_pending == 0:
                return
    finally:
        await sub.unsubscribe()


async def dead_letter(
    js: JetStreamContext,
    subjects: Subjects,
    msg: Msg,
    error: Exception,
    *,
    component: str,
    bot: str,
) -> None:
    """Count and log a message that could not be handled, and keep it on the DLQ subject."""
    DEAD_LETTERS.labels(bot, component).inc()
    log.warning(
        "dead-lettered a message",
        extra={"subject": msg.subject, "error": str(error), "bytes": len(msg.data)},
    )
    headers = {"Kubetrade-Error": str(error)[:1000], "Kubetrade-Subject": msg.subject}
    await js.publish(subjects.dead_letter(component), msg.data, headers=headers)


async def publish_all(js: JetStreamContext, items: list[tuple[str, bytes, dict[str, str]]]) -> None:
    """Publish many messages and wait until the stream has stored every one."""
    await asyncio.gather(*await publish_started(js, items))


async def publish_started(
    js: JetStreamContext, items: list[tuple[str, bytes, dict[str, str]]]
) -> list[asyncio.Future[Any]]:
    """Send many messages; the futures resolve when the stream has stored each one.

    Not waiting here lets a worker handle its next batch while the acknowledgements travel
    (nats-py bounds how many may be outstanding and waits beyond that).
    """
    return [
        await js.publish_async(subject, data, headers=headers) for subject, data, headers in items
    ]

"""NATS and JetStream wiring shared by the workers.

Streams hold candles, signals, orders, fills and dead letters; each consumer is durable, with
explicit "ack all" acknowledgement, so a restarted worker resumes after the last message it
committed. Messages arrive through a push subscription into a queue and are handed out in
micro-batches: one message when traffic is light (low latency), many when it queues up
(throughput). That avoids a pull ``fetch(n)`` that lingers until ``n`` messages arrive.

Every wait is bounded. A publish acknowledgement that does not come within
``PUBLISH_ACK_TIMEOUT_S`` is retried, with backoff, under the same message id, so the
stream's duplicate window stores it once. While NATS is down the client reconnects on its own;
consumers re-create themselves after the last message they handed out. Past the worker's outage
limit every retry gives up with :class:`~kubetrade.settings.OutageError`.

Order survives an outage because the set of messages the server stored from one connection is
always a prefix of what was sent: while disconnected nothing is buffered (``pending_size=0``
makes a publish fail at once) and what was queued when the connection broke is dropped rather
than sent after the reconnect (see :meth:`Connectivity.on_disconnected`). Re-sending the whole
unconfirmed tail in order then stores the missing messages in their original order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import nats
import nats.errors
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
from nats.js.errors import APIError, NotFoundError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    RetryError,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential_jitter,
)

from kubetrade.errors import BusError, OutageError
from kubetrade.metrics import DEAD_LETTERS
from kubetrade.natsauth import NatsSecurity
from kubetrade.settings import DEFAULT_OUTAGE_LIMIT_S
from kubetrade.subjects import Subjects

log = logging.getLogger(__name__)

# Restarts and replays within this window are de-duplicated by message id on the server;
# the feed also skips what the stream already holds, so older duplicates cannot happen either.
DUPLICATE_WINDOW_S = 6 * 3600
ACK_WAIT_S = 120
PUBLISH_ACK_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 5.0
# A silent peer (a partition, not a closed socket) is noticed after PING_INTERVAL_S * MAX_PINGS.
PING_INTERVAL_S = 5
MAX_PINGS = 3

T = TypeVar("T")
Item = tuple[str, bytes, dict[str, str]]
"""One message to publish: subject, payload, headers (with ``Nats-Msg-Id``)."""

# What a retry may cure: a timeout, a connection that is down or reconnecting, JetStream not
# yet answering after a server restart. Anything else is a bug and surfaces at once.
TRANSIENT: tuple[type[BaseException], ...] = (TimeoutError, OSError, nats.errors.Error, APIError)


@dataclass
class Connectivity:
    """Whether this process reaches NATS: since when it has not, and how often it came back.

    ``generation`` grows at every reconnect; a consumer that sees it change re-creates itself
    after the last message it handed out, instead of waiting ``ACK_WAIT_S`` for the server to
    redeliver what was in flight when the connection broke.
    """

    limit_s: float = DEFAULT_OUTAGE_LIMIT_S
    down_since: float | None = None
    generation: int = 0
    client: Client | None = field(default=None, repr=False)

    def down_for(self) -> float:
        """Seconds since the connection broke (0 while connected)."""
        return 0.0 if self.down_since is None else time.monotonic() - self.down_since

    def check(self) -> None:
        """Raise :class:`OutageError` once NATS has been unreachable longer than the limit."""
        if self.down_for() > self.limit_s:
            raise OutageError.past_limit("NATS unreachable", self.down_for(), self.limit_s)

    async def on_disconnected(self) -> None:
        """Note the outage and drop what the client had queued but not yet written.

        The queue would be written after the reconnect, behind messages that went into the
        dead socket and were lost: the stream would store a later message before an earlier
        one is re-sent. Dropping it keeps what the server stored a prefix of what was sent
        (nats-py has no option for this; ``_pending`` is its write queue).
        """
        client = self.client
        if client is not None and (client.is_closed or client.is_draining):
            return  # our own close (drain at shutdown), not an outage
        if self.down_since is None:
            self.down_since = time.monotonic()
        if client is not None and hasattr(client, "_pending"):
            client._pending = []
            client._pending_data_size = 0
        log.warning("NATS connection lost; reconnecting", extra={"limit_s": self.limit_s})

    async def on_reconnected(self) -> None:
        """Note the end of the outage."""
        log.warning("NATS reconnected", extra={"down_s": round(self.down_for(), 1)})
        self.down_since = None
        self.generation += 1

    async def on_error(self, error: Exception) -> None:
        """Connection errors are expected while reconnecting; keep them out of the error log."""
        log.debug("NATS client error", extra={"error": str(error)})

    async def on_closed(self) -> None:
        """A closed client never reconnects: count the outage from now."""
        if self.down_since is None:
            self.down_since = time.monotonic()


def retrying(limit_s: float, what: str) -> AsyncRetrying:
    """Retries with exponential backoff and jitter of TRANSIENT failures for up to ``limit_s``."""

    def note(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.warning(
            f"{what} failed; retrying",
            extra={"attempt": state.attempt_number, "error": f"{type(error).__name__}: {error}"},
        )

    return AsyncRetrying(
        stop=stop_after_delay(limit_s),
        wait=wait_exponential_jitter(multiplier=0.1, max=5.0),
        retry=retry_if_exception_type(TRANSIENT),
        before_sleep=note,
    )


async def with_retry(
    call: Callable[[], Awaitable[T]], what: str, limit_s: float = DEFAULT_OUTAGE_LIMIT_S
) -> T:
    """``await call()``, retried while it fails transiently, for up to ``limit_s``."""
    try:
        async for attempt in retrying(limit_s, what):
            with attempt:
                return await call()
    except RetryError as error:
        last = error.last_attempt.exception()
        raise OutageError.past_limit(f"{what} kept failing", limit_s, limit_s, last) from last
    raise AssertionError("unreachable: tenacity either returns or raises")


async def connect(
    url: str, name: str, link: Connectivity | None = None, security: NatsSecurity | None = None
) -> Client:
    """Connect to NATS, retrying while the server starts; the error names the URL.

    After the first connection the client reconnects on its own for as long as it takes;
    ``link`` (if given) records the outages so the worker can give up past its limit.
    Credentials and TLS come from ``security``, by default from the pod's environment.
    """
    link = link or Connectivity()
    options = (security or NatsSecurity.from_env()).connect_options()
    client = Client()
    link.client = client

    async def first() -> Client:
        await client.connect(
            url,
            name=name,
            connect_timeout=5,
            max_reconnect_attempts=-1,
            reconnect_time_wait=1,
            allow_reconnect=True,
            ping_interval=PING_INTERVAL_S,
            max_outstanding_pings=MAX_PINGS,
            pending_size=0,  # nothing buffered while disconnected: see the module docstring
            disconnected_cb=link.on_disconnected,
            reconnected_cb=link.on_reconnected,
            error_cb=link.on_error,
            closed_cb=link.on_closed,
            **options,
        )
        return client

    try:
        # nats-py itself retries the first connection forever (max_reconnect_attempts=-1).
        return await asyncio.wait_for(first(), link.limit_s)
    except TimeoutError:
        raise OutageError(
            f"cannot connect to NATS at {url} within the outage limit of {link.limit_s:.0f}s "
            "(KUBETRADE_OUTAGE_LIMIT_S); check KUBETRADE_NATS_URL and that the server runs"
        ) from None
    except Exception as error:
        raise BusError(
            f"cannot connect to NATS at {url}: {error}. Check KUBETRADE_NATS_URL."
        ) from error


async def ensure_stream(
    js: JetStreamContext, subjects: Subjects, limit_s: float = DEFAULT_OUTAGE_LIMIT_S
) -> None:
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

    async def ensure() -> None:
        try:
            info = await js.stream_info(subjects.stream)
        except NotFoundError:
            try:
                await js.add_stream(config)
                return
            except Exception:  # another worker created it at the same moment
                info = await js.stream_info(subjects.stream)
        held = sorted(info.config.subjects or [])
        if any(not subject.startswith(f"{subjects.prefix}.") for subject in held):
            # Stream names fold case and '-': bots "a-b/c" and "a/b-c" would share one stream.
            raise BusError(
                f"JetStream stream {subjects.stream} already exists for other subjects "
                f"({', '.join(held)}): another bot's name maps to the same stream. Rename "
                f"bot {subjects.namespace}/{subjects.bot} or the other one."
            )

    await with_retry(ensure, f"creating stream {subjects.stream}", limit_s)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One JetStream message with its stream sequence and when this process received it."""

    msg: Msg
    sequence: int
    received_ns: int  # wall clock, comparable with the feed's published_us


class BatchConsumer:
    """A durable JetStream consumer handing out micro-batches in stream order.

    With a :class:`Connectivity`, it re-creates itself after a reconnect, resuming after the
    last message it handed out (what was queued but not handed out comes again), and raises
    :class:`OutageError` from :meth:`next_batch` once NATS has been down past the limit.
    """

    def __init__(
        self,
        js: JetStreamContext,
        subjects: Subjects,
        filter_subject: str,
        durable: str,
        link: Connectivity | None = None,
    ):
        self._js = js
        self._subjects = subjects
        self._filter = filter_subject
        self._durable = durable
        self._link = link or Connectivity()
        # Received, not yet handed out; ``_arrived`` wakes a waiting ``next_batch``. A deque
        # and an event rather than an ``asyncio.Queue``, whose put and get (waiter and
        # task-count bookkeeping) cost more per message than the rest of this class.
        self._queue: deque[Delivery] = deque()
        self._arrived = asyncio.Event()
        self._sub: Any = None
        self._generation = self._link.generation
        self._incarnation = 0
        self.taken = 0
        """The stream sequence of the last message handed out by :meth:`next_batch`."""

    async def start(self, resume_after: int | None = None) -> int:
        """(Re)create the durable consumer at ``resume_after + 1`` and start receiving.

        ``resume_after`` is the last stream sequence the caller has fully applied; the
        executor takes it from its database checkpoint. Without it, the consumer's own ack
        floor is used. Recreating the consumer at that point, instead of binding to it as it
        was, means messages a killed process received but never acknowledged come back at
        once rather than after the ack wait. Returns the sequence resumed after.
        """
        return await with_retry(
            lambda: self._start(resume_after), f"starting consumer {self._durable}", self._limit
        )

    @property
    def _limit(self) -> float:
        return max(self._link.limit_s - self._link.down_for(), 1.0)

    async def _start(self, resume_after: int | None) -> int:
        if resume_after is None:
            try:
                info = await self._js.consumer_info(self._subjects.stream, self._durable)
                resume_after = info.ack_floor.stream_seq if info.ack_floor else 0
            except NotFoundError:
                resume_after = 0
        with contextlib.suppress(NotFoundError):
            await self._js.delete_consumer(self._subjects.stream, self._durable)
        self._incarnation += 1
        incarnation = self._incarnation

        async def enqueue(msg: Msg) -> None:
            if incarnation == self._incarnation:  # not a late message of a replaced consumer
                self._queue.append(Delivery(msg, stream_sequence(msg), time.time_ns()))
                self._arrived.set()

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
        self.taken = resume_after
        return resume_after

    async def _resume(self) -> None:
        """After a reconnect: drop what is queued and start again after what was handed out."""
        self._generation = self._link.generation
        old, self._sub = self._sub, None
        if old is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(old.unsubscribe(), REQUEST_TIMEOUT_S)
        self._queue.clear()
        log.info("consumer resumes after reconnect", extra={"durable": self._durable})
        await self.start(self.taken)

    async def next_batch(self, max_size: int, timeout: float | None = None) -> list[Delivery]:
        """Wait for at least one message (or ``timeout``), then take what is queued."""
        self._link.check()
        if self._generation != self._link.generation and self._link.down_since is None:
            await self._resume()
        queue = self._queue
        if not queue:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout)
            except TimeoutError:
                return []
        batch: list[Delivery] = []
        taken = self.taken
        while queue and len(batch) < max_size:
            delivery = queue.popleft()
            if delivery.sequence > taken:
                batch.append(delivery)
        if batch:
            self.taken = batch[-1].sequence
        return batch

    @staticmethod
    async def ack_through(batch: list[Delivery]) -> None:
        """Acknowledge every message up to the last of ``batch`` (ack policy "all").

        Best effort: while NATS is down the ack is lost, and a later one covers it (or, after
        a restart, the message is redelivered and skipped or de-duplicated downstream).
        """
        if batch:
            try:
                await batch[-1].msg.ack()
            except TRANSIENT as error:
                log.debug("ack not sent", extra={"error": str(error)})

    async def stop(self) -> None:
        """Stop receiving; unacknowledged messages are redelivered to the next process."""
        if self._sub is not None:
            with contextlib.suppress(*TRANSIENT):
                await asyncio.wait_for(self._sub.unsubscribe(), REQUEST_TIMEOUT_S)


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
    part: tuple[int, bytes] | None = None,
) -> None:
    """Count and log a message that could not be handled, and keep it on the DLQ subject.

    ``part`` is (index, payload) of the one item of a batch message that was refused: the
    dead letter holds that item alone, and the rest of the batch goes on.
    """
    DEAD_LETTERS.labels(bot, component).inc()
    data = msg.data if part is None else part[1]
    log.warning(
        "dead-lettered a message",
        extra={
            "subject": msg.subject,
            "error": str(error),
            "bytes": len(data),
            "item": None if part is None else part[0],
        },
    )
    headers = {"Kubetrade-Error": str(error)[:1000], "Kubetrade-Subject": msg.subject}
    sequence = _stream_sequence(msg)
    if sequence is not None:  # a re-sent dead letter (lost ack, restart) is stored once
        item = "" if part is None else f":{part[0]}"
        headers["Nats-Msg-Id"] = f"dlq:{component}:{sequence}{item}"
    await publish_all(js, [(subjects.dead_letter(component), data, headers)])


def _stream_sequence(msg: Msg) -> int | None:
    try:
        return stream_sequence(msg)
    except nats.errors.Error:  # a core NATS message (the control subject) has no sequence
        return None


def stream_sequence(msg: Msg) -> int:
    """The stream sequence of a JetStream delivery, read from its reply subject.

    The same number as ``msg.metadata.sequence.stream``, without building the whole metadata
    (a datetime and three objects per message, a fifth of a busy consumer's time).
    """
    tokens = (msg.reply or "").split(".")
    if tokens[:2] == ["$JS", "ACK"]:
        # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>... or, with a domain and account,
        # $JS.ACK.<domain>.<account>.<stream>.<consumer>.<delivered>.<sseq>...
        index = 5 if len(tokens) == 9 else Msg.Ack.StreamSeq
        if len(tokens) > index and tokens[index].isdigit():
            return int(tokens[index])
    return int(msg.metadata.sequence.stream)  # raises nats' own error for anything else


@dataclass
class Sent:
    """Messages sent without waiting: the futures resolve when the stream has stored each."""

    items: list[Item]
    futures: list[asyncio.Future[Any]]

    def done(self) -> bool:
        """True when every acknowledgement (or failure) has arrived."""
        return all(f.done() for f in self.futures)

    def failed(self) -> bool:
        """True when a message was not sent or its acknowledgement reported an error."""
        return len(self.futures) < len(self.items) or any(
            f.done() and (f.cancelled() or f.exception() is not None) for f in self.futures
        )


async def publish_started(
    js: JetStreamContext, items: list[Item], link: Connectivity | None = None
) -> Sent:
    """Send many messages without waiting for their acknowledgements; see :func:`confirm`.

    Not waiting here lets a worker handle its next batch while the acknowledgements travel
    (nats-py bounds how many may be outstanding; that wait is bounded too). A send that fails
    at once (NATS is down) leaves the rest unsent: :func:`confirm` re-sends them all in order.
    """
    futures: list[asyncio.Future[Any]] = []
    generation = None if link is None else link.generation
    try:
        # One deadline for the whole batch, not nats-py's ``wait_stall``: that wraps every
        # publish in ``asyncio.wait_for``, a task and a trip through the event loop per
        # message, so the flusher wrote each message with its own syscall (10x slower).
        async with asyncio.timeout(PUBLISH_ACK_TIMEOUT_S):
            for subject, data, headers in items:
                if link is not None and link.generation != generation:
                    # Reconnected meanwhile: what went before may be lost, so nothing may
                    # follow it on the new connection before the whole tail is re-sent in order.
                    raise nats.errors.ConnectionReconnectingError
                futures.append(await js.publish_async(subject, data, headers=headers))
    except TRANSIENT as error:
        log.debug("publish failed at once; confirm re-sends", extra={"error": str(error)})
        failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        failed.set_exception(error)
        futures.append(failed)
    return Sent(items, futures)


async def _confirmed(sent: list[Sent]) -> bool:
    """Wait (bounded) for every acknowledgement; False if one failed or did not come."""
    futures = [f for s in sent for f in s.futures]
    if not futures:
        return all(not s.items for s in sent)
    done, pending = await asyncio.wait(futures, timeout=PUBLISH_ACK_TIMEOUT_S)
    for future in pending:
        future.cancel()  # releases nats-py's slot for it; a late ack is simply dropped
    failed = [f for f in done if f.cancelled() or f.exception() is not None]
    complete = sum(len(s.futures) for s in sent) == sum(len(s.items) for s in sent)
    return not pending and not failed and complete


async def confirm(
    js: JetStreamContext, sent: list[Sent], limit_s: float = DEFAULT_OUTAGE_LIMIT_S
) -> None:
    """Return once the stream holds every message of ``sent`` (a list in publishing order).

    A lost or failed acknowledgement re-sends the whole list in order, under the same message
    ids: what the stream already holds is de-duplicated, the rest is stored in order.
    Raises :class:`OutageError` when that has not succeeded within ``limit_s``.
    """
    if await _confirmed(sent):
        return
    items = [item for s in sent for item in s.items]
    log.warning("publish not acknowledged; re-sending in order", extra={"messages": len(items)})

    async def again() -> None:
        if not await _confirmed([await publish_started(js, items)]):
            raise TimeoutError(f"{len(items)} messages not acknowledged")

    await with_retry(again, "publishing to JetStream", limit_s)


async def publish_all(
    js: JetStreamContext, items: list[Item], limit_s: float = DEFAULT_OUTAGE_LIMIT_S
) -> None:
    """Publish many messages and return once the stream has stored every one (see confirm)."""
    if items:
        await confirm(js, [await publish_started(js, items)], limit_s)

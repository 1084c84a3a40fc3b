"""The executor worker: signals in, orders and fills out, the database as the ledger.

Exactly-once effect across crashes: each micro-batch of signals is applied to the trading
engine, then its signals, orders, fills, equity points and the engine's full snapshot with the
last stream sequence are written in one transaction, and only then acknowledged. Killed at any
point, the executor restores the snapshot, skips redelivered messages at or below the
checkpoint sequence, and replays the rest: the fills come out exactly as in an uninterrupted run.

Control commands (pause, resume, kill, reset) are committed with a checkpoint as soon as they
are applied, and answered (when sent as a request) only then, so a restart comes back paused
or halted as it was. Order and fill messages are written to the outbox in the batch's
transaction and published from it: a crash between commit and publish re-sends them at the
next start, under the same message ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from opentelemetry import trace

from kubetrade import runtime
from kubetrade.admission import AdmissionError, AdmissionPolicy, CandleAdmission, check_control
from kubetrade.bus import (
    BatchConsumer,
    Connectivity,
    Delivery,
    connect,
    dead_letter,
    ensure_stream,
    publish_all,
)
from kubetrade.domain import EquityPoint, Fill, Order
from kubetrade.health import HealthServer, Vitals, consumer_pending, watch_forever
from kubetrade.messages import (
    ControlMessage,
    FillMessage,
    MessageError,
    OrderMessage,
    SignalMessage,
    decode,
    decode_signals,
    encode,
)
from kubetrade.metrics import (
    ADMISSION_REFUSED,
    DB_WRITE_SECONDS,
    DECISION_SECONDS,
    DRAWDOWN,
    DRAWDOWN_BREAKER,
    EQUITY,
    FILLS,
    HALTED,
    OPEN_POSITIONS,
    ORDERS,
    ORDERS_REFUSED,
    SIGNALS_PROCESSED,
)
from kubetrade.settings import DEFAULT_OUTAGE_LIMIT_S, SettingsError, WorkerSettings
from kubetrade.spec import TradingBot
from kubetrade.store import AsyncStore, Checkpoint, OutboxMessage, SignalRecord
from kubetrade.subjects import Subjects
from kubetrade.telemetry import hop
from kubetrade.trading import ControlCommand, EngineOutput, EventError, NoticeKind, TradingEngine
from kubetrade.trading.live_engine import LiveEngine
from kubetrade.trading.outputs import HaltEvent, Refusal, halt_events, refusals
from kubetrade.trading.validation import MarketRules

if TYPE_CHECKING:
    from kubetrade.workers.live import LiveRouter

log = logging.getLogger(__name__)
tracer = trace.get_tracer("kubetrade.executor")

BATCH_MAX = 1000


@dataclass
class Pending:
    """What one batch produced, waiting for its transaction."""

    signals: list[SignalRecord] = field(default_factory=list)
    orders: list[Order] = field(default_factory=list)
    fills: list[Fill] = field(default_factory=list)
    equity: list[EquityPoint] = field(default_factory=list)
    halts: list[HaltEvent] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    outgoing: list[tuple[str, bytes, dict[str, str]]] = field(default_factory=list)
    controls: list[Msg] = field(default_factory=list)  # answered once committed
    refused: list[str] = field(default_factory=list)  # codes of orders refused

    def add(self, out: EngineOutput, subjects: Subjects, headers: dict[str, str]) -> None:
        """Collect an engine output and the order/fill messages (carrying the trace context
        in ``headers``) to publish after commit."""
        self.orders.extend(out.orders)
        self.fills.extend(out.fills)
        self.equity.extend(out.equity)
        if out.notices:  # most signals bring none: skip three scans of an empty list
            self.refused.extend(n.code for n in out.notices if n.kind is NoticeKind.ORDER_REFUSED)
            self.halts.extend(halt_events(out.notices))
            self.refusals.extend(refusals(out.notices))
        for order in out.orders:
            data = encode(OrderMessage.from_order(order))
            self.outgoing.append(
                (subjects.orders, data, {**headers, "Nats-Msg-Id": order.client_order_id})
            )
        for fill in out.fills:
            data = encode(FillMessage.from_fill(fill))
            # A live order can fill in parts: one message per fill time.
            msg_id = f"fill:{fill.client_order_id}:{fill.time}"
            self.outgoing.append((subjects.fills, data, {**headers, "Nats-Msg-Id": msg_id}))

    def __bool__(self) -> bool:
        return bool(
            self.signals
            or self.orders
            or self.fills
            or self.equity
            or self.halts
            or self.refusals
            or self.controls
        )

    def outbox(self) -> list[OutboxMessage]:
        """The order and fill messages as outbox rows."""
        return [OutboxMessage(subject, data, headers) for subject, data, headers in self.outgoing]


@dataclass(frozen=True)
class Commit:
    """An applied batch waiting for its transaction, acknowledgement and publication."""

    pending: Pending
    checkpoint: Checkpoint | None
    batch: list[Delivery]


# The checkpoint state's key for a live executor's position inside a message applied in part.
PARTIAL_KEY = "executor_partial_message"

# Applied-but-uncommitted batches allowed in flight: decisions do not wait for the previous
# batch's commit (~3 ms), yet a stalled database soon stops the executor consuming.
COMMITS_IN_FLIGHT = 8


class Executor:
    """Owns the engine, the checkpoint and the database connection of one bot."""

    def __init__(
        self,
        bot: TradingBot,
        db: AsyncStore,
        js: JetStreamContext,
        outage_limit_s: float = DEFAULT_OUTAGE_LIMIT_S,
        markets: Mapping[str, MarketRules] | None = None,
        live: bool = False,
    ) -> None:
        """``markets`` (the exchange's rules, when known) make the engine refuse what the
        exchange would; ``live`` takes fills from the exchange (``LiveEngine``, see
        :meth:`route`) instead of simulating them."""
        self.bot = bot
        self.outage_limit_s = outage_limit_s
        self.db = db
        self.js = js
        self.subjects = Subjects(bot.metadata.namespace, bot.metadata.name)
        self.status = runtime.WorkerStatus("executor", bot.key)
        self.markets = markets
        self.engine: TradingEngine = (LiveEngine if live else TradingEngine)(bot, markets)
        self.router: LiveRouter | None = None  # set by main in live mode
        self.sequence = 0
        self.processed = 0
        # Live: (stream sequence, signals applied) of a message applied in part, one signal
        # per commit; a restart goes on after those signals instead of deciding them again.
        self.partial: tuple[int, int] | None = None
        self.controls: asyncio.Queue[tuple[ControlMessage, Msg]] = asyncio.Queue()
        self.admission = CandleAdmission(AdmissionPolicy.for_bot(bot), repeats=True)
        # Per signal: the bot's key (built from its name each time it is read) and the
        # latency histogram's child (a labelled lookup under a lock), looked up once.
        self._key = bot.key
        self._decision_seconds = DECISION_SECONDS.labels(self._key)
        # Set after every batch: the labelled children, looked up once too.
        self._equity = EQUITY.labels(self._key)
        self._open_positions = OPEN_POSITIONS.labels(self._key)
        self._halted = HALTED.labels(self._key)
        self._drawdown = DRAWDOWN.labels(self._key)

    def last_candle_close_ms(self) -> int | None:
        """Close time of the newest candle decided on (for the candle lag metric)."""
        newest = max(self.admission.last_open.values(), default=None)
        return None if newest is None else newest + self.admission.policy.timeframe_ms

    async def restore(self) -> None:
        """Resume from the database checkpoint, if there is one."""
        checkpoint = await self.db.load_checkpoint(self.bot.key)
        if checkpoint is not None:
            self.engine = type(self.engine).restore(self.bot, checkpoint.state, self.markets)
            self.sequence, self.processed = checkpoint.stream_seq, checkpoint.processed
            self.admission.seed(checkpoint.state.get("last_open", {}))
            partial = checkpoint.state.get(PARTIAL_KEY)
            if isinstance(partial, list) and len(partial) == 2:
                self.partial = (int(partial[0]), int(partial[1]))
            log.info(
                "restored from checkpoint",
                extra={"stream_seq": self.sequence, "processed": self.processed},
            )
        await self.publish_outbox()
        self.status.count("signals", 0)
        self._publish_summary()

    async def publish_outbox(self) -> None:
        """Publish what committed batches left in the outbox (a crash came between), in order."""
        left = await self.db.read_outbox(self.bot.key)
        if left:
            log.warning("re-sending committed messages", extra={"messages": len(left)})
            items = [(m.subject, m.data, m.headers) for m in left]
            await publish_all(self.js, items, self.outage_limit_s)
            await self.db.clear_outbox(self.bot.key, [m.msg_id for m in left])

    async def on_control(self, msg: Msg) -> None:
        """Queue a control command; it is applied between batches, in the engine's order."""
        try:
            command = decode(ControlMessage, msg.data)
            refusal = check_control(command)
            if refusal is not None:
                ADMISSION_REFUSED.labels(self.bot.key, "executor", refusal.reason).inc()
                raise AdmissionError(refusal)
            self.controls.put_nowait((command, msg))
        except (MessageError, AdmissionError) as error:
            await dead_letter(
                self.js, self.subjects, msg, error, component="executor", bot=self.bot.key
            )

    async def apply_batch(self, batch: list[Delivery]) -> Commit:
        """Apply queued controls and one batch of signals to the engine: decisions now,
        persistence later (in order) by :meth:`commit`."""
        pending = Pending()
        while not self.controls.empty():
            command, msg = self.controls.get_nowait()
            pending.controls.append(msg)
            log.warning(
                "control command", extra={"action": command.action, "reason": command.reason}
            )
            pending.add(
                self.engine.control(
                    ControlCommand.parse(command.action, command.reason, command.cause)
                ),
                self.subjects,
                {},
            )
        first_seq = self.sequence
        for delivery in batch:
            if delivery.sequence <= self.sequence:
                continue  # applied before a restart; its effects are already in the database
            self.sequence = delivery.sequence
            await self._apply_message(delivery, pending)
        checkpoint = None
        if pending or self.sequence != first_seq:
            checkpoint = self.checkpoint()
        return Commit(pending, checkpoint, batch)

    async def apply_live(self, delivery: Delivery) -> None:
        """Live: apply one message a signal at a time, as in real time; each decision is
        committed (with the message's position in the checkpoint) and its orders are sent and
        their fills booked before the next signal is decided."""
        if delivery.sequence <= self.sequence:
            return
        try:
            signals = decode_signals(delivery.msg.subject, delivery.msg.data)
        except MessageError as error:
            await self._dead_letter(delivery, error)
            signals = []
        done = self.partial[1] if self.partial and self.partial[0] == delivery.sequence else 0
        attributes = {"kubetrade.bot": self._key, "kubetrade.signals": len(signals)}
        with hop(tracer, "executor.decide", delivery.msg.headers, attributes, {}) as onward:
            for index in range(done, len(signals)):
                if not self.controls.empty():  # a kill switch does not wait for the message
                    await self.commit(await self.apply_batch([]))
                    await self.route()
                pending = Pending()
                await self._apply_signal(
                    delivery, index, signals[index], runtime.now_ms(), pending, onward
                )
                last = index == len(signals) - 1
                self.partial = None if last else (delivery.sequence, index + 1)
                await self._commit_live(pending, delivery, last)
        if not signals[done:]:
            self.partial = None
            await self._commit_live(Pending(), delivery, True)

    async def _commit_live(self, pending: Pending, delivery: Delivery, last: bool) -> None:
        if last:
            self.sequence = delivery.sequence
        await self.commit(Commit(pending, self.checkpoint(), [delivery] if last else []))
        await self.route()

    def checkpoint(self) -> Checkpoint:
        """The restart point now: the engine's snapshot, the last sequence applied, and the
        position inside a message applied in part (live)."""
        state = self.engine.snapshot()
        if self.partial is not None:
            state[PARTIAL_KEY] = list(self.partial)
        return Checkpoint(self.sequence, self.processed, state)

    async def commit(self, item: Commit) -> None:
        """Write one applied batch with its checkpoint and outbox, then acknowledge it, answer
        its control commands and publish its messages from the outbox."""
        pending = item.pending
        if item.checkpoint is not None:
            with DB_WRITE_SECONDS.labels(self.bot.key, "executor").time():
                await self.db.write_batch(
                    self.bot.key,
                    signals=pending.signals,
                    orders=pending.orders,
                    fills=pending.fills,
                    equity=pending.equity,
                    checkpoint=item.checkpoint,
                    outbox=pending.outbox(),
                    halts=pending.halts,
                    refusals=pending.refusals,
                )
        await BatchConsumer.ack_through(item.batch)
        for msg in pending.controls:
            if msg.reply:
                with contextlib.suppress(Exception):  # the sender may have given up
                    await msg.respond(b"committed")
        if pending.outgoing:
            await publish_all(self.js, pending.outgoing, self.outage_limit_s)
            await self.db.clear_outbox(
                self.bot.key, [h["Nats-Msg-Id"] for *_, h in pending.outgoing]
            )
        self._count(pending)

    async def route(self) -> None:
        """Live mode: send the engine's committed orders, book what the exchange did with them
        and commit that with a checkpoint (see ``workers.live``)."""
        if self.router is None:
            return
        out, changed = await self.router.step(runtime.now_ms())
        if changed or out.fills or out.notices:
            pending = Pending()
            pending.add(out, self.subjects, {})
            checkpoint = self.checkpoint()
            await self.commit(Commit(pending, checkpoint, []))

    async def commit_forever(self, queue: asyncio.Queue[Commit]) -> None:
        """The writer: commits applied batches in the order they were applied."""
        while True:
            item = await queue.get()
            try:
                await self.commit(item)
            finally:
                queue.task_done()

    async def _apply_message(self, delivery: Delivery, pending: Pending) -> None:
        """Apply every signal of one message (a signal batch, or one signal) in its order."""
        try:
            signals = decode_signals(delivery.msg.subject, delivery.msg.data)
        except MessageError as error:
            await self._dead_letter(delivery, error)
            return
        now = runtime.now_ms()
        attributes = {"kubetrade.bot": self._key, "kubetrade.signals": len(signals)}
        with hop(tracer, "executor.decide", delivery.msg.headers, attributes, {}) as onward:
            for index, message in enumerate(signals):
                await self._apply_signal(delivery, index, message, now, pending, onward)

    async def _apply_signal(
        self,
        delivery: Delivery,
        index: int,
        message: SignalMessage,
        now: int,
        pending: Pending,
        onward: dict[str, str],
    ) -> None:
        refusal = self.admission.admit_signal(message, now)
        if refusal is not None:
            ADMISSION_REFUSED.labels(self.bot.key, "executor", refusal.reason).inc()
            await self._dead_letter(delivery, AdmissionError(refusal), index, message)
            return
        event = message.to_event()
        try:
            out = self.engine.on_event(event)
        except EventError as error:
            await self._dead_letter(delivery, error, index, message)
            return
        decided_us = runtime.now_us()
        pending.add(out, self.subjects, onward)
        self.processed += 1
        published_us = message.candle.published_us
        self._decision_seconds.observe(max(decided_us - published_us, 0) / 1e6)
        p = event.prediction
        pending.signals.append(
            SignalRecord(
                symbol=event.candle.symbol,
                time=event.candle.open_time,
                prob_up=None if p is None else p.prob_up,
                direction=None if p is None else p.direction.value,
                confidence=None if p is None else p.confidence,
                model_name="" if p is None else p.model_name,
                model_version="" if p is None else p.model_version,
                feature_hash="" if p is None else p.feature_hash,
                candle_published_us=published_us,
                received_us=delivery.received_ns // 1_000,
                decided_us=decided_us,
            )
        )

    async def _dead_letter(
        self,
        delivery: Delivery,
        error: Exception,
        index: int | None = None,
        message: SignalMessage | None = None,
    ) -> None:
        """Dead-letter a whole message, or (``index``, ``message``) the one signal of a batch."""
        part = None
        if index is not None and message is not None and Subjects.is_batch(delivery.msg.subject):
            part = (index, encode(message))
        await dead_letter(
            self.js,
            self.subjects,
            delivery.msg,
            error,
            component="executor",
            bot=self.bot.key,
            part=part,
        )
        self.status.count("dead_letters")

    def _count(self, pending: Pending) -> None:
        bot = self.bot.key
        SIGNALS_PROCESSED.labels(bot).inc(len(pending.signals))
        self.status.count("signals", len(pending.signals))
        self.status.count("orders", len(pending.orders))
        self.status.count("fills", len(pending.fills))
        for order in pending.orders:
            ORDERS.labels(bot, order.side.value, order.reason.value).inc()
        for fill in pending.fills:
            FILLS.labels(bot, fill.side.value, fill.reason.value).inc()
        for code in pending.refused:
            ORDERS_REFUSED.labels(bot, code).inc()
        self.status.count("orders_refused", len(pending.refused))
        self._publish_summary()

    def _publish_summary(self) -> None:
        summary = self.engine.summary()
        self._equity.set(summary.equity)
        self._open_positions.set(summary.open_positions)
        self._halted.set(1 if summary.halted else 0)
        self._drawdown.set(summary.drawdown_pct / 100)
        breaker = self.bot.spec.risk.breakers.max_drawdown_pct
        if breaker is not None:  # alerts compare the two: "near its breaker"
            DRAWDOWN_BREAKER.labels(self.bot.key).set(breaker / 100)
        self.status.counters["processed"] = self.processed
        self.status.counters["stream_seq"] = self.sequence
        self.status.trading = {
            # The halt causes travel typed, in the message's own field.
            **summary.to_status().model_dump(
                by_alias=True, exclude_none=True, exclude={"halt_causes"}
            ),
            "cash": summary.cash,
            "halted": summary.halted,
            "paused": summary.paused,
        }
        self.status.halt_causes = list(summary.halt_causes)
        disarmed = self.engine.disarmed if isinstance(self.engine, LiveEngine) else None
        if isinstance(self.engine, LiveEngine):
            self.status.trading["reconciled"] = disarmed is None
            if self.router is not None and self.router.unconverted_fees:
                self.status.trading["unconvertedFees"] = dict(self.router.unconverted_fees)
            self.status.counters["orders_working"] = len(self.engine.pending_orders())
        if summary.halted:
            self.status.state, self.status.message = "halted", summary.halt_reason or "halted"
        elif disarmed is not None:
            self.status.state, self.status.message = "degraded", f"Reconciled=False: {disarmed}"
        elif self.status.state == "halted" or self.status.message.startswith("Reconciled=False"):
            self.status.state, self.status.message = "running", ""


async def main(settings: WorkerSettings, stop: asyncio.Event) -> None:
    """Run the executor until ``stop`` is set."""
    bot = settings.bot
    if settings.database_url is None:
        raise SettingsError("the executor needs KUBETRADE_DATABASE_URL: the database is its ledger")
    limit = settings.outage_limit_s
    db = await AsyncStore.connect(settings.database_url, outage_limit_s=limit)
    await db.migrate()
    link = Connectivity(limit)
    nc = await connect(settings.nats_url, f"{bot.key}/executor", link)
    js = nc.jetstream()
    live = bot.spec.mode.value == "live"
    broker = None
    if live:
        # Only a live executor imports ccxt (~90 MiB of exchange classes in every process).
        from kubetrade.workers.live import LiveRouter, open_broker

        broker = await open_broker(bot, db, os.environ)
    markets = broker.markets if broker is not None else None
    executor = Executor(bot, db, js, limit, markets, live)
    await ensure_stream(js, executor.subjects, limit)
    await executor.restore()
    if broker is not None and isinstance(executor.engine, LiveEngine):
        # Disarmed until the journal agrees with the exchange; then what the last run decided
        # and did not send goes out (see workers.live).
        executor.router = LiveRouter(broker, executor.engine, list(bot.spec.symbols))
        await executor.router.reconcile()
        await executor.route()
        executor._publish_summary()
    control = await nc.subscribe(executor.subjects.control, cb=executor.on_control)
    consumer = BatchConsumer(
        js,
        executor.subjects,
        executor.subjects.all_signals,
        executor.subjects.durable("executor"),
        link,
    )
    await consumer.start(resume_after=executor.sequence)
    if executor.status.state == "starting":
        executor.status.state = "running"
    connected = {"nats": lambda: nc.is_connected, "database": lambda: _db_connected(db)}
    vitals = Vitals.for_bot(bot, "executor", connected)
    health = HealthServer(
        settings.http_host,
        settings.http_port,
        lambda: (nc.is_connected, executor.status.state),
        vitals,
    )
    await health.start()
    heartbeat = asyncio.create_task(
        runtime.publish_status_forever(nc, executor.subjects, executor.status)
    )
    durable = executor.subjects.durable("executor")
    watchdog = asyncio.create_task(
        watch_forever(
            vitals,
            executor.status,
            lambda: consumer_pending(js, executor.subjects.stream, durable),
        )
    )
    runtime.settle_heap()
    log.info("executor running", extra={"symbols": bot.spec.symbols, "mode": bot.spec.mode.value})
    try:
        commits: asyncio.Queue[Commit] = asyncio.Queue(maxsize=COMMITS_IN_FLIGHT)
        writer = asyncio.create_task(executor.commit_forever(commits))
        while not stop.is_set() and not writer.done():
            batch = await consumer.next_batch(BATCH_MAX, timeout=0.25)
            if executor.router is not None:
                # Live: one signal at a time, as in real time: its decision is committed, then
                # its orders sent and their fills booked, before the next candle is decided.
                if not executor.controls.empty():
                    await executor.commit(await executor.apply_batch([]))
                    await executor.route()
                for delivery in batch:
                    await executor.apply_live(delivery)
                if batch:
                    vitals.progress(executor.last_candle_close_ms())
                await executor.route()
                continue
            if batch or not executor.controls.empty():
                put = asyncio.ensure_future(commits.put(await executor.apply_batch(batch)))
                if batch:
                    vitals.progress(executor.last_candle_close_ms())
                # A full queue waits for the writer; a dead writer must not leave us waiting.
                await asyncio.wait({put, writer}, return_when=asyncio.FIRST_COMPLETED)
                put.cancel()
        if not writer.done():
            await commits.join()  # what was decided is committed before we go
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer  # re-raises a database failure, which must stop the worker
    finally:
        watchdog.cancel()
        heartbeat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await heartbeat
        await runtime.quietly(control.unsubscribe(), "unsubscribe control")
        await consumer.stop()
        status = encode(executor.status.to_message())
        await runtime.quietly(nc.publish(executor.subjects.status, status), "last status")
        await health.stop()
        await runtime.quietly(nc.drain(), "drain NATS")
        await runtime.quietly(db.close(), "close database")
        if broker is not None:
            await runtime.quietly(broker.exchange.close(), "close exchange")


def _db_connected(db: AsyncStore) -> bool:
    return db.conn is not None and not db.conn.closed


def cli() -> None:
    """Entry point: ``kubetrade worker executor``."""
    settings = runtime.prepare("executor")
    runtime.run(lambda stop: main(settings, stop))

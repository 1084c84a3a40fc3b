"""The NATS bridge of the inference worker: candles in, signals out.

It runs inside the BentoML service process (one model in memory), on its own thread and event
loop. Each candle batch yields one signal batch (same order, and an identity taken from the
candle batch, so a restarted bridge's signals are de-duplicated by the stream), and every
candle a signal: with a prediction once the symbol's features are warm, without one before,
so the executor sees every candle in stream order and can run its exits.
A model whose FeatureSpec does not match this code never predicts: the bridge reports the
mismatch in its status (naming both feature lists) and consumes nothing, so candles wait in
the stream for a good model. A strategy that reads features (a rule, or a hybrid's rule) gets
them on every signal once warm; a rule-only bot has no model, and the bridge computes the
features alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

from nats.aio.msg import Msg
from opentelemetry.trace import Tracer

from kubetrade.admission import AdmissionError, AdmissionPolicy, CandleAdmission
from kubetrade.bus import (
    BatchConsumer,
    Connectivity,
    Delivery,
    Sent,
    confirm,
    connect,
    dead_letter,
    ensure_stream,
    publish_started,
    replay,
)
from kubetrade.domain import Candle
from kubetrade.errors import OutageError
from kubetrade.features import FeatureMismatchError
from kubetrade.health import Vitals, consumer_pending, watch_forever
from kubetrade.messages import (
    CandleMessage,
    MessageError,
    SignalBatch,
    SignalMessage,
    batch_id,
    decode_candles,
    encode,
)
from kubetrade.metrics import (
    ADMISSION_REFUSED,
    CANDLES_RECEIVED,
    PREDICT_SECONDS,
    SIGNALS_PUBLISHED,
)
from kubetrade.runtime import (
    EXIT_OUTAGE,
    WorkerStatus,
    now_ms,
    publish_status_forever,
    quietly,
    settle_heap,
)
from kubetrade.settings import WorkerSettings
from kubetrade.signals import Predictor, Rejected, SignalPipeline, withheld_period
from kubetrade.subjects import Subjects
from kubetrade.telemetry import hop, setup_tracing

log = logging.getLogger(__name__)

BATCH_MAX = 512
MAX_UNSETTLED = 8
# A signal batch stays well under NATS' default payload limit (1 MiB) when its signals carry a
# strategy's features: a candle batch's signals go out in as many messages as that takes.
MESSAGE_BUDGET_BYTES = 256 * 1024


def signals_per_message(pipeline: SignalPipeline) -> int:
    """How many signals one message carries at most: bounded by the worst-case size of a signal
    of this bot (its strategy's features, now and on the candle before, each at full length).
    Fixed per bot, so a restarted bridge splits a candle batch the same way and its messages
    keep their ids."""
    spec = pipeline.strategy_features
    if spec is None:
        return BATCH_MAX
    # At most 1 KiB of candle, prediction and timestamps; a value is at most 24 characters,
    # plus its quoted name, colon and comma.
    per_signal = 1024 + 2 * sum(len(name) + 28 for name in spec.names)
    return max(1, MESSAGE_BUDGET_BYTES // per_signal)


@dataclass
class BridgeHandle:
    """A running bridge: its status for health checks, and a way to stop it."""

    thread: threading.Thread
    status_ref: WorkerStatus
    loop: asyncio.AbstractEventLoop
    stop_event: asyncio.Event
    vitals: Vitals | None = None

    def status(self) -> dict[str, Any]:
        """State, message and counters, as ``/readyz`` reports them."""
        return {
            "state": self.status_ref.state,
            "message": self.status_ref.message,
            "counters": dict(self.status_ref.counters),
        }

    @property
    def ready(self) -> bool:
        """True while the bridge is connected and predicting."""
        progressing = self.vitals is None or self.vitals.readiness()[0]
        return self.status_ref.state == "running" and self.thread.is_alive() and progressing

    def liveness(self) -> tuple[bool, str]:
        """False once the bridge stalls with candles waiting (``/livez``, restarts the pod)."""
        return self.vitals.liveness() if self.vitals is not None else (True, "ok")

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the bridge to finish its batch and stop; wait for the thread."""
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.stop_event.set)
            self.thread.join(timeout)


def start_bridge(
    predictor: Predictor | None, settings: WorkerSettings | None = None
) -> BridgeHandle:
    """Start the bridge on a daemon thread; configuration comes from the pod's environment.
    ``predictor`` is None for a bot whose strategy uses no model: the bridge then computes the
    strategy's features alone."""
    settings = settings or WorkerSettings.from_env("inference")
    status = WorkerStatus("inference", settings.bot.key)
    tracer = setup_tracing("kubetrade-inference", settings.bot.key, install=False).get_tracer(
        "kubetrade.inference"
    )
    loop = asyncio.new_event_loop()
    stop_event = asyncio.Event()
    vitals = Vitals.for_bot(settings.bot, "inference", {})

    def main() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(_serve(predictor, settings, status, stop_event, tracer, vitals))
        except OutageError as error:
            # Past the outage limit: one line, then the whole worker process goes so that it is
            # restarted (BentoML respawns its worker; Kubernetes restarts the pod otherwise).
            status.state, status.message = "failed", str(error)
            log.error(f"exiting: {error}")
            os._exit(EXIT_OUTAGE)
        except Exception as error:
            status.state, status.message = "failed", f"bridge stopped: {error}"
            log.exception("inference bridge failed")
        finally:
            loop.close()

    thread = threading.Thread(target=main, name="nats-bridge", daemon=True)
    handle = BridgeHandle(thread, status, loop, stop_event, vitals)
    thread.start()
    return handle


async def _serve(
    predictor: Predictor | None,
    settings: WorkerSettings,
    status: WorkerStatus,
    stop: asyncio.Event,
    tracer: Tracer,
    vitals: Vitals,
) -> None:
    bot = settings.bot
    subjects = Subjects(bot.metadata.namespace, bot.metadata.name)
    limit = settings.outage_limit_s
    link = Connectivity(limit)
    nc = await connect(settings.nats_url, f"{bot.key}/inference", link)
    js = nc.jetstream()
    await ensure_stream(js, subjects, limit)
    vitals.dependencies["nats"] = lambda: nc.is_connected
    heartbeat = asyncio.create_task(publish_status_forever(nc, subjects, status))
    watchdog: asyncio.Task[None] | None = None
    try:
        try:
            withhold = withheld_period(bot, predictor, settings.data_file)
            pipeline = SignalPipeline.for_bot(bot, predictor, withhold)
        except FeatureMismatchError as error:
            status.state, status.message = "degraded", str(error)
            log.error("model refused: feature mismatch", extra={"error": str(error)})
            await stop.wait()
            return
        if withhold is not None:
            log.info(
                "out of sample: no prediction on candles inside the model's training period "
                "(spec.model.inSample trades them)",
                extra={"training_start_ms": withhold[0], "training_end_ms": withhold[1]},
            )
        admission = CandleAdmission(AdmissionPolicy.for_bot(bot))
        consumer = BatchConsumer(
            js, subjects, subjects.all_candles, subjects.durable("inference"), link
        )
        resumed = await consumer.start()
        if resumed:
            # A restart: rebuild the rolling windows from the candles already handled, as
            # admitted then (a forgery in the stream stays out of the windows).
            history = [
                message.to_candle()
                async for m in replay(js, subjects, subjects.all_candles, resumed)
                for message in _decodable(m)
            ]
            pipeline.warm_up(admission.replayed(history, now_ms()))
            log.info("windows rebuilt from the stream", extra={"through_seq": resumed})
        status.state = "running"
        status.model = (
            None if predictor is None else f"{predictor.model_name}:{predictor.model_version}"
        )
        status.message = (
            f"computing {bot.spec.strategy.type} signals (no model)"
            if predictor is None
            else f"serving {predictor.model_name}:{predictor.model_version}"
        )
        durable = subjects.durable("inference")
        watchdog = asyncio.create_task(
            watch_forever(vitals, status, lambda: consumer_pending(js, subjects.stream, durable))
        )
        settle_heap()
        log.info("bridge running", extra={"signals": status.message})
        # Batches whose signals are sent but not yet stored: a batch is acknowledged to the
        # candle stream only once the signal stream holds all of its signals. After a failed
        # send or a reconnect, every unsettled batch is confirmed (re-sent in order) before
        # anything new is sent, so signals are stored in candle order.
        unsettled: deque[tuple[Sent, list[Delivery]]] = deque()
        generation = link.generation

        async def settle_all() -> None:
            await confirm(js, [sent for sent, _ in unsettled], limit)
            if unsettled:
                await consumer.ack_through(unsettled[-1][1])
            unsettled.clear()

        while not stop.is_set():
            batch = await consumer.next_batch(BATCH_MAX, timeout=0.5)
            if generation != link.generation or any(sent.failed() for sent, _ in unsettled):
                generation = link.generation
                await settle_all()
            if batch:
                sent = await _handle(batch, pipeline, admission, js, link, subjects, status, tracer)
                unsettled.append((sent, batch))
                newest = max(admission.last_open.values(), default=None)
                tf = admission.policy.timeframe_ms
                vitals.progress(None if newest is None else newest + tf)
            while unsettled and (
                not batch or len(unsettled) > MAX_UNSETTLED or unsettled[0][0].done()
            ):
                if unsettled[0][0].failed():
                    await settle_all()
                    break
                sent, settled = unsettled.popleft()
                await confirm(js, [sent], limit)
                await consumer.ack_through(settled)
        await settle_all()
        await consumer.stop()
    finally:
        if watchdog is not None:
            watchdog.cancel()
        heartbeat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await heartbeat
        await quietly(nc.drain(), "drain NATS")


async def _handle(
    batch: list[Delivery],
    pipeline: SignalPipeline,
    admission: CandleAdmission,
    js: Any,
    link: Connectivity,
    subjects: Subjects,
    status: WorkerStatus,
    tracer: Tracer,
) -> Sent:
    """Predict a batch of deliveries and send their signals (one signal batch per candle
    message); returns them with the futures of their storage."""
    bot = status.bot
    candles: list[Candle] = []
    sources: list[tuple[CandleMessage, Delivery, int]] = []  # and its place in the message
    # Each delivery's identity (its first and last candle), which its signal batch keeps.
    identity: dict[int, str] = {}
    for delivery in batch:
        try:
            messages = decode_candles(delivery.msg.subject, delivery.msg.data)
        except MessageError as error:
            await dead_letter(js, subjects, delivery.msg, error, component="inference", bot=bot)
            status.count("dead_letters")
            continue
        identity[delivery.sequence] = batch_id(messages[0], messages[-1], len(messages))
        now = now_ms()
        for index, message in enumerate(messages):
            candle = message.to_candle()
            refusal = admission.admit(candle, now)
            if refusal is not None:
                ADMISSION_REFUSED.labels(bot, "inference", refusal.reason).inc()
                await _dead_letter_item(
                    js, subjects, status, delivery, (index, message), AdmissionError(refusal)
                )
                continue
            candles.append(candle)
            sources.append((message, delivery, index))
    if not candles:
        return Sent([], [])
    CANDLES_RECEIVED.labels(bot).inc(len(candles))
    status.count("candles", len(candles))
    with PREDICT_SECONDS.labels(bot).time():
        results = pipeline.process(candles)
    produced = now_ms()
    # The signal's message id names what produced it, so a new model's signals are not taken
    # for duplicates of the old one's.
    version = "no-model" if pipeline.predictor is None else pipeline.predictor.model_version
    signals: dict[int, tuple[Delivery, list[SignalMessage]]] = {}
    predicted = 0
    for event, (message, delivery, index) in zip(results, sources, strict=True):
        if isinstance(event, Rejected):
            await _dead_letter_item(
                js, subjects, status, delivery, (index, message), ValueError(event.reason)
            )
            continue
        signal = SignalMessage.from_event(event, message.published_us, produced, received=message)
        signals.setdefault(delivery.sequence, (delivery, []))[1].append(signal)
        predicted += event.prediction is not None
    outgoing = []
    per_message = signals_per_message(pipeline)
    for sequence, (delivery, batch_signals) in signals.items():
        for number, start in enumerate(range(0, len(batch_signals), per_message)):
            chunk = batch_signals[start : start + per_message]
            attributes = {
                "kubetrade.bot": bot,
                "kubetrade.signals": len(chunk),
                "kubetrade.model_version": version,
            }
            # Named after the candle message, not its admitted part: a restart that admits
            # differently still sends the same identity, which the stream stores once.
            msg_id = f"{identity[sequence]}:{version}:{number}"
            with hop(
                tracer,
                "inference.signals",
                delivery.msg.headers,
                attributes,
                {"Nats-Msg-Id": msg_id},
            ) as headers:
                payload = encode(SignalBatch(signals=chunk))
                outgoing.append((subjects.signal_batches, payload, headers))
    sent = await publish_started(js, outgoing, link)
    SIGNALS_PUBLISHED.labels(bot).inc(predicted)
    status.count("signals", predicted)
    if pipeline.withheld:
        status.counters["in_sample_withheld"] = pipeline.withheld
    return sent


async def _dead_letter_item(
    js: Any,
    subjects: Subjects,
    status: WorkerStatus,
    delivery: Delivery,
    item: tuple[int, CandleMessage],
    error: Exception,
) -> None:
    """Dead-letter one refused candle of ``delivery`` (its place in the message and the
    candle): alone, with its own payload, when the message is a batch, so the rest goes on."""
    index, message = item
    part = (index, encode(message)) if Subjects.is_batch(delivery.msg.subject) else None
    await dead_letter(
        js, subjects, delivery.msg, error, component="inference", bot=status.bot, part=part
    )
    status.count("dead_letters")


def _decodable(msg: Msg) -> list[CandleMessage]:
    """The candles of a stream message, none when it does not decode."""
    try:
        return decode_candles(msg.subject, msg.data)
    except MessageError:
        return []

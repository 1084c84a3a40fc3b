"""Health that means progress: liveness, readiness and lag metrics of every worker.

A worker is *live* while it makes progress — the feed publishes a candle, inference produces a
signal, the executor takes a decision — within the interval its bot's timeframe and replay
speed lead us to expect. A consumer with nothing waiting is idle, not stuck; a finished feed
is done, not stuck. While NATS or the database is down the worker is not ready, and the stall
clock waits: riding out an outage is the bus's and store's job (they give up, and the worker
exits, past ``KUBETRADE_OUTAGE_LIMIT_S``). A stalled worker answers 503 on ``/healthz`` and
``/livez`` (Kubernetes restarts it) and reports ``degraded`` with the reason in its status
messages (the operator shows it in the bot's conditions).

The decision is the pure :func:`assess`; :class:`Vitals` holds what it needs and
:func:`watch_forever` feeds it once a second, exporting the lag metrics of
``kubetrade/metrics.py`` (``kubetrade_last_progress_timestamp_seconds``,
``kubetrade_last_progress_age_seconds``, ``kubetrade_candle_lag_seconds``,
``kubetrade_consumer_pending_messages``, ``kubetrade_stalled``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kubetrade.domain import timeframe_ms
from kubetrade.metrics import (
    CANDLE_LAG,
    CONSUMER_PENDING,
    LAST_PROGRESS,
    LAST_PROGRESS_AGE,
    STALLED,
)
from kubetrade.runtime import State, WorkerStatus
from kubetrade.spec import TradingBot

log = logging.getLogger(__name__)

Readiness = Callable[[], tuple[bool, str]]

STALL_FLOOR_S = 120.0
"""The shortest stall bound: a replay at full speed ("as fast as possible") or a fast paced one
still gets this long without progress (a model load, a large batch, a slow COPY)."""
EXPECTED_INTERVALS = 10
"""Paced replays stall after this many expected intervals without progress (or the floor)."""
LIVE_SLACK_S = 300.0
"""A live exchange closes a candle per timeframe; polling and exchange delays get this slack."""
WATCH_INTERVAL_S = 1.0
PENDING_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class ProgressBound:
    """How often progress is expected, and after how long without it a worker is stalled."""

    expected_s: float
    stall_s: float


def progress_bound(bot: TradingBot) -> ProgressBound:
    """The bound of ``bot``'s workers from its timeframe, source and ``exchange.speed``.

    A live feed closes one candle per timeframe; a paced replay one per timeframe / speed; a
    replay at speed 0 as fast as the pipeline takes it (expected 0, stalled after the floor).
    """
    tf_s = timeframe_ms(bot.spec.timeframe) / 1000.0
    exchange = bot.spec.exchange
    if exchange.is_exchange:
        return ProgressBound(tf_s, 2 * tf_s + LIVE_SLACK_S)
    if exchange.speed > 0:
        expected = tf_s / exchange.speed
        return ProgressBound(expected, max(STALL_FLOOR_S, EXPECTED_INTERVALS * expected))
    return ProgressBound(0.0, STALL_FLOOR_S)


@dataclass(frozen=True, slots=True)
class Health:
    """What ``/livez`` and ``/readyz`` answer, with the reason."""

    live: bool
    ready: bool
    stalled: bool
    reason: str


def assess(
    *,
    component: str,
    bound: ProgressBound,
    now: float,
    clock_from: float,
    pending: int | None,
    finished: bool,
    down: Mapping[str, bool],
) -> Health:
    """Whether a worker is live and ready.

    ``clock_from`` is when the stall clock started: the last progress, the start, or the last
    moment a dependency was down, whichever is latest. ``pending`` is the work waiting for a
    consumer (None for the feed, which makes its own work until ``finished``).
    """
    lost = sorted(name for name, is_down in down.items() if is_down)
    if lost:
        return Health(True, False, False, f"{' and '.join(lost)} not connected; riding it out")
    age = now - clock_from
    if component == "feed":
        waiting = not finished
        what = "no candle published"
    else:
        waiting = bool(pending)
        what = f"no {'signal' if component == 'inference' else 'decision'} with {pending} waiting"
    if waiting and age > bound.stall_s:
        reason = f"stalled: {what} for {age:.0f}s (bound {bound.stall_s:.0f}s)"
        return Health(False, False, True, reason)
    return Health(True, True, False, "finished" if finished else "making progress")


@dataclass
class Vitals:
    """Progress, pending work and dependencies of one worker; read by its health endpoints."""

    bot: str
    component: str
    bound: ProgressBound
    dependencies: dict[str, Callable[[], bool]] = field(default_factory=dict)
    clock: Callable[[], float] = time.time
    started: float = 0.0
    last_progress: float | None = None
    last_candle_close_ms: int | None = None
    last_down: float | None = None
    pending: int | None = None
    finished: bool = False
    health: Health = field(default_factory=lambda: Health(True, True, False, "starting"))

    def __post_init__(self) -> None:
        self.started = self.started or self.clock()

    @classmethod
    def for_bot(
        cls, bot: TradingBot, component: str, dependencies: dict[str, Callable[[], bool]]
    ) -> Vitals:
        """The vitals of ``component`` of ``bot``, bounded by :func:`progress_bound`."""
        return cls(bot.key, component, progress_bound(bot), dependencies)

    def progress(self, candle_close_ms: int | None = None) -> None:
        """Note progress now (a candle, signal or decision), with its candle's close time."""
        self.last_progress = self.clock()
        LAST_PROGRESS.labels(self.bot, self.component).set(self.last_progress)
        if candle_close_ms is not None:
            self.last_candle_close_ms = max(self.last_candle_close_ms or 0, candle_close_ms)

    def check(self) -> Health:
        """Assess now, export the lag gauges, and remember the result for the endpoints."""
        now = self.clock()
        down = {name: not connected() for name, connected in self.dependencies.items()}
        if any(down.values()):
            self.last_down = now
        clock_from = max(self.last_progress or self.started, self.last_down or 0.0)
        self.health = assess(
            component=self.component,
            bound=self.bound,
            now=now,
            clock_from=clock_from,
            pending=self.pending,
            finished=self.finished,
            down=down,
        )
        labels = (self.bot, self.component)
        LAST_PROGRESS_AGE.labels(*labels).set(now - (self.last_progress or self.started))
        STALLED.labels(*labels).set(1 if self.health.stalled else 0)
        if self.pending is not None:
            CONSUMER_PENDING.labels(*labels).set(self.pending)
        if self.last_candle_close_ms is not None:
            CANDLE_LAG.labels(*labels).set(now - self.last_candle_close_ms / 1000.0)
        return self.health

    def liveness(self) -> tuple[bool, str]:
        """``/livez``: False once stalled."""
        return self.health.live, self.health.reason

    def readiness(self) -> tuple[bool, str]:
        """``/readyz`` as far as progress and dependencies go."""
        return self.health.ready, self.health.reason


async def watch_forever(
    vitals: Vitals,
    status: WorkerStatus | None = None,
    pending: Callable[[], Awaitable[int | None]] | None = None,
) -> None:
    """Every second: ask for pending work, assess, and show a stall in ``status``.

    A stalled worker's status reads ``degraded`` with the reason; the state it had comes back
    once it makes progress again.
    """
    saved: tuple[State, str] | None = None
    while True:
        if pending is not None:
            with contextlib.suppress(Exception):  # NATS down: keep the last known count
                count = await asyncio.wait_for(pending(), PENDING_TIMEOUT_S)
                if count is not None:
                    vitals.pending = count
        if status is not None:
            vitals.finished = vitals.finished or status.state == "finished"
        health = vitals.check()
        if status is not None:
            if health.stalled:
                if saved is None:
                    saved = (status.state, status.message)
                    log.error("worker stalled", extra={"reason": health.reason})
                status.state, status.message = "degraded", health.reason
            elif saved is not None:
                if status.state == "degraded":
                    status.state, status.message = saved
                saved = None
                log.warning("worker making progress again")
        await asyncio.sleep(WATCH_INTERVAL_S)


async def consumer_pending(js: object, stream: str, durable: str) -> int | None:
    """Messages waiting for a durable consumer: undelivered plus unacknowledged."""
    info = await js.consumer_info(stream, durable)  # type: ignore[attr-defined]
    return int(info.num_pending or 0) + int(info.num_ack_pending or 0)


class HealthServer:
    """Serves ``/healthz`` and ``/livez``, ``/readyz`` and ``/metrics`` on the worker's loop.

    Liveness and readiness come from the worker's :class:`Vitals` (progress); readiness also
    asks the worker, which knows whether it is connected and doing its job.
    """

    def __init__(
        self, host: str, port: int, readiness: Readiness, vitals: Vitals | None = None
    ) -> None:
        self._host = host
        self._port = port
        self._readiness = readiness
        self._vitals = vitals
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Start listening."""
        app = web.Application()
        app.router.add_get("/healthz", self._livez)
        app.router.add_get("/livez", self._livez)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port).start()

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()

    async def _livez(self, _: web.Request) -> web.Response:
        live, reason = self._vitals.liveness() if self._vitals else (True, "ok")
        body = {"status": "ok" if live else "stalled", "reason": reason}
        return web.json_response(body, status=200 if live else 503)

    async def _readyz(self, _: web.Request) -> web.Response:
        ready, reason = self._readiness()
        if ready and self._vitals is not None:
            ready, reason = self._vitals.readiness()
        return web.json_response({"ready": ready, "reason": reason}, status=200 if ready else 503)

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

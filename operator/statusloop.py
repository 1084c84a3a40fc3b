"""The status loop: every tick, each bot's status, Events and control commands.

Condition and phase changes are written on the next tick; a change of the trading figures
alone waits until ``trading_interval_s`` has passed since the bot's last write, so 500 bots
reporting every second cost the API server a write per bot every few seconds at most.
Control commands are level-triggered (see ``status.control_commands``) and resent at most
every ``control_resend_s`` while the executor disagrees.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from kubetrade.messages import ControlMessage
from kubetrade.operator.bots import BotRecord
from kubetrade.operator.kubeapi import ApiError
from kubetrade.operator.metrics import CONTROLS, STATUS_WRITES, count_phases
from kubetrade.operator.status import compute_status, control_commands, status_events
from kubetrade.operator.wiring import Collaborators
from kubetrade.spec import TradingBotStatus

log = logging.getLogger(__name__)

# Concurrent API writes per tick: enough to write 500 statuses in a second or two without
# crowding out the reconciles that share the connection pool.
WRITE_CONCURRENCY = 16


def _essentials(status: TradingBotStatus) -> dict[str, Any]:
    """Everything but the trading figures: a change here is written at once."""
    return status.model_dump(exclude={"trading"})


class StatusLoop:
    """Writes every bot's status and sends the control commands its executor needs."""

    def __init__(
        self,
        parts: Collaborators,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.config = parts.config
        self.api = parts.api
        self.bots = parts.bots
        self.observations = parts.observations
        self.heartbeats = parts.heartbeats
        self.events = parts.events
        self._clock = clock
        self._wall = wall
        self._written_at: dict[str, float] = {}
        self._sent_at: dict[tuple[str, str], float] = {}
        self._limit = asyncio.Semaphore(WRITE_CONCURRENCY)

    async def run(self) -> None:
        """Tick until cancelled; a failing tick is logged and the next one runs."""
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("status tick failed")
            await asyncio.sleep(self.config.status_tick_s)

    async def tick(self) -> None:
        """One pass over every bot."""
        now, wall = self._clock(), self._wall()
        work: list[Awaitable[None]] = []
        phases = []
        for record in self.bots:
            if record.deleting or (
                record.applied_generation is None and record.reconcile_error is None
            ):
                continue
            state = record.state()
            seen = self.observations.of(record.key)
            status = compute_status(
                state,
                seen,
                record.status,
                now=now,
                wall=wall,
                heartbeat_timeout=self.config.heartbeat_timeout_s,
            )
            phases.append(status.phase)
            if self._due(record, status, now):
                work.append(self._write(record, status, now))
            executor = seen.executor
            if executor is not None and executor.age(now) <= self.config.heartbeat_timeout_s:
                for command in control_commands(state, executor):
                    if self._may_send(record.key, command.action, now):
                        work.append(self._send(record, command))
        count_phases(phases)
        await asyncio.gather(*(self._limited(w) for w in work))

    async def _limited(self, work: Awaitable[None]) -> None:
        async with self._limit:
            await work

    def _due(self, record: BotRecord, status: TradingBotStatus, now: float) -> bool:
        previous = record.status
        if previous is None or _essentials(previous) != _essentials(status):
            return True
        if previous.trading == status.trading:
            return False
        last = self._written_at.get(record.key)
        return last is None or now - last >= self.config.trading_interval_s

    def _may_send(self, key: str, action: str, now: float) -> bool:
        last = self._sent_at.get((key, action))
        return last is None or now - last >= self.config.control_resend_s

    async def _write(self, record: BotRecord, status: TradingBotStatus, now: float) -> None:
        meta = record.bot.metadata
        body = {
            **{k: v for k, v in record.reference().items() if k in ("apiVersion", "kind")},
            "metadata": {"name": meta.name, "namespace": meta.namespace},
            "status": status.model_dump(by_alias=True, exclude_none=True, mode="json"),
        }
        try:
            written = await self.api.apply_status(body, self.config.field_manager)
        except ApiError as error:
            STATUS_WRITES.labels("error").inc()
            log.warning("could not write status", extra={"bot": record.key, "error": str(error)})
            return
        if written is None:
            return  # deleted meanwhile
        STATUS_WRITES.labels("written").inc()
        previous, record.status = record.status, status
        self._written_at[record.key] = now
        for event in status_events(previous, status):
            await self.events.post(record.reference(), event)

    async def _send(self, record: BotRecord, command: ControlMessage) -> None:
        meta = record.bot.metadata
        if await self.heartbeats.send(meta.namespace, meta.name, command):
            self._sent_at[(record.key, command.action)] = self._clock()
            CONTROLS.labels(command.action).inc()
            log.info(
                "control command sent",
                extra={"bot": record.key, "action": command.action, "reason": command.reason},
            )

    def forget(self, key: str) -> None:
        """Drop the bookkeeping of a deleted bot."""
        self._written_at.pop(key, None)
        for sent in [k for k in self._sent_at if k[0] == key]:
            del self._sent_at[sent]


async def cancel(task: asyncio.Task[None] | None) -> None:
    """Cancel a background task and wait for it."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

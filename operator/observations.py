"""What the operator has heard from each bot's workers on NATS.

Every worker publishes a ``StatusMessage`` on ``kubetrade.<namespace>.<bot>.status`` each
second. The operator keeps the latest per component, stamped with its own monotonic clock at
receipt (so a worker's wrong clock cannot make a heartbeat look fresh). During a model rollout
two inference pods report at once; they are told apart by the model each one serves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kubetrade.domain import HaltCause
from kubetrade.messages import StatusMessage


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """One status message as received: state, message, figures and when it arrived."""

    state: str
    message: str
    seen: float
    trading: dict[str, Any] | None = None
    halt_causes: tuple[HaltCause, ...] = ()
    working_orders: int = 0
    """Orders still working on the exchange (a live executor's ``orders_working`` counter)."""

    def age(self, now: float) -> float:
        """Seconds since it arrived."""
        return now - self.seen


@dataclass
class BotObservations:
    """The latest heartbeats of one bot's feed, inference and executor."""

    feed: Heartbeat | None = None
    executor: Heartbeat | None = None
    inference: Heartbeat | None = None
    serving: dict[str, float] = field(default_factory=dict)
    """Model ``name:version`` -> when an inference pod last reported serving it."""
    inference_problem: Heartbeat | None = None
    """The latest degraded or failed inference heartbeat (a model that cannot serve)."""

    def record(self, message: StatusMessage, now: float) -> None:
        """Take one status message in."""
        beat = Heartbeat(
            message.state,
            message.message,
            now,
            message.trading,
            tuple(message.halt_causes),
            message.counters.get("orders_working", 0),
        )
        if message.component == "feed":
            self.feed = beat
        elif message.component == "executor":
            self.executor = beat
        else:
            self.inference = beat
            if message.state == "running" and message.model is not None:
                self.serving[message.model] = now
            elif message.state in ("degraded", "failed"):
                self.inference_problem = beat

    def fresh_serving(self, now: float, timeout: float) -> list[str]:
        """Models some inference pod served within ``timeout`` seconds, newest first."""
        fresh = [(seen, model) for model, seen in self.serving.items() if now - seen <= timeout]
        return [model for _, model in sorted(fresh, reverse=True)]


class Observations:
    """Heartbeats of every bot, by ``namespace/name``."""

    def __init__(self) -> None:
        self._bots: dict[str, BotObservations] = {}

    def record(self, message: StatusMessage, now: float, key: str | None = None) -> None:
        """Take one status message in for the bot ``key`` (``namespace/name``).

        The operator passes the key its subject names: a field inside the message is
        whatever its sender wrote. Without a key, ``message.bot`` is used (tests).
        """
        self._bots.setdefault(key or message.bot, BotObservations()).record(message, now)

    def of(self, key: str) -> BotObservations:
        """What was heard from the bot ``key`` (empty when nothing was)."""
        return self._bots.get(key) or BotObservations()

    def forget(self, key: str) -> None:
        """Drop a deleted bot."""
        self._bots.pop(key, None)

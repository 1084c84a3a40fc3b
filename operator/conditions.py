"""Status conditions the Kubernetes way: one per type, a transition time that moves only when
the status does (as ``meta.SetStatusCondition`` does in Go controllers)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from kubetrade.domain import HaltCause
from kubetrade.spec import Condition

READY = "Ready"
FEED_READY = "FeedReady"
MODEL_READY = "ModelReady"
EXECUTOR_READY = "ExecutorReady"
HALTED = "Halted"
# Live bots only: whether the executor's journal agrees with the exchange (it opens no
# position until it does).
RECONCILED = "Reconciled"

# The order `kubectl describe` shows them in: the summary first.
CONDITION_TYPES = (READY, FEED_READY, MODEL_READY, EXECUTOR_READY, HALTED, RECONCILED)

# The Halted condition's reason (and its Event's) for each cause the executor reports.
HALT_REASONS: dict[HaltCause, str] = {
    HaltCause.KILL_SWITCH: "KillSwitch",
    HaltCause.MANUAL: "ManualKill",
    HaltCause.DRAWDOWN: "Drawdown",
    HaltCause.DAILY_LOSS: "DailyLoss",
    HaltCause.CONSECUTIVE_LOSSES: "ConsecutiveLosses",
}


def timestamp(epoch_s: float) -> str:
    """An instant as the RFC 3339 form Kubernetes uses, e.g. ``2024-01-01T00:15:00Z``."""
    return datetime.fromtimestamp(int(epoch_s), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(
    type_: str, status: bool | None, reason: str, message: str = "", generation: int | None = None
) -> Condition:
    """A condition without its transition time (``merge`` sets it); None means Unknown."""
    text = "Unknown" if status is None else ("True" if status else "False")
    return Condition(
        type=type_,
        status=text,
        reason=reason,
        message=message,
        observed_generation=generation,
    )


def merge(previous: Iterable[Condition], current: Sequence[Condition], now: str) -> list[Condition]:
    """``current`` with each transition time kept from ``previous`` unless its status changed."""
    before = {c.type: c for c in previous}
    merged = []
    for new in current:
        old = before.get(new.type)
        moved = old is None or old.status != new.status or old.last_transition_time is None
        when = now if moved or old is None else old.last_transition_time
        merged.append(new.model_copy(update={"last_transition_time": when}))
    return merged


def find(conditions: Iterable[Condition], type_: str) -> Condition | None:
    """The condition of ``type_``, if present."""
    return next((c for c in conditions if c.type == type_), None)


def is_true(conditions: Iterable[Condition], type_: str) -> bool:
    """True when the condition of ``type_`` is present and True."""
    found = find(conditions, type_)
    return found is not None and found.status == "True"

"""What the engine hands back: orders, fills, equity points and notices.

A notice is how the engine tells its caller about a decision that produced no order (a rejected
entry, a cancelled order) or about a change of state (a breaker tripped or cleared, a halt, a
pause). Rejections are notices, never exceptions: a trading decision that says "no" is normal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from kubetrade.domain import EquityPoint, Fill, Order


class NoticeKind(StrEnum):
    """What happened."""

    ENTRY_REJECTED = "entry_rejected"
    ENTRY_REDUCED = "entry_reduced"
    ORDER_REFUSED = "order_refused"  # the exchange's market rules refuse it (see validation)
    ORDER_CANCELLED = "order_cancelled"
    BREAKER_TRIPPED = "breaker_tripped"
    BREAKER_CLEARED = "breaker_cleared"
    HALTED = "halted"
    HALT_CLEARED = "halt_cleared"
    PAUSED = "paused"
    RESUMED = "resumed"
    EVENT_IGNORED = "event_ignored"


@dataclass(frozen=True, slots=True)
class Notice:
    """One event worth telling the operator about.

    ``code`` is machine-readable (e.g. ``max_trades_per_day``, ``drawdown``); ``message`` is for
    people. ``time`` is the candle time the engine was at (ms), 0 before the first event.
    """

    kind: NoticeKind
    time: int
    code: str
    message: str
    symbol: str | None = None
    client_order_id: str | None = None


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why an entry was not made: a code and a sentence."""

    code: str
    message: str


@dataclass(slots=True)
class EngineOutput:
    """Everything one event or control command produced, in the order it happened."""

    orders: list[Order] = field(default_factory=list)
    fills: list[Fill] = field(default_factory=list)
    equity: list[EquityPoint] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)

    def extend(self, other: EngineOutput) -> None:
        """Append everything in ``other`` after what is already here."""
        self.orders.extend(other.orders)
        self.fills.extend(other.fills)
        self.equity.extend(other.equity)
        self.notices.extend(other.notices)

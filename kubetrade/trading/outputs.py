"""What the engine hands back: orders, fills, equity points and notices.

A notice is how the engine tells its caller about a decision that produced no order (a rejected
entry, a cancelled order) or about a change of state (a breaker tripped or cleared, a halt, a
pause). Rejections are notices, never exceptions: a trading decision that says "no" is normal.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from kubetrade.domain import EquityPoint, Fill, Order


class NoticeKind(StrEnum):
    """What happened."""

    ENTRY_REJECTED = "entry_rejected"
    ENTRY_REDUCED = "entry_reduced"
    ORDER_REFUSED = "order_refused"  # the exchange's market rules refuse it (see validation)
    ORDER_CANCELLED = "order_cancelled"
    PARTIALLY_FILLED = "partially_filled"  # execution.maxVolumePct: the rest waits
    BREAKER_TRIPPED = "breaker_tripped"
    BREAKER_CLEARED = "breaker_cleared"
    HALTED = "halted"
    LIQUIDATED = "liquidated"
    HALT_CLEARED = "halt_cleared"
    PAUSED = "paused"
    RESUMED = "resumed"
    EVENT_IGNORED = "event_ignored"


# Not frozen: a backtest of a halted bot makes one per refused entry, and a frozen dataclass's
# __init__ costs several times a plain one's (see kubetrade.domain). Nothing assigns to it.
@dataclass(slots=True)
class Notice:
    """One event worth telling the operator about.

    ``code`` is machine-readable (e.g. ``max_trades_per_day``, ``drawdown``); ``message`` is for
    people. ``time`` is the candle time the engine was at (ms), 0 before the first event. A
    halt or its clearing (``HALT_KINDS``) carries ``figures``: equity, peak, drawdown, day (see
    ``breakers.halt_figures``).
    """

    kind: NoticeKind
    time: int
    code: str
    message: str
    symbol: str | None = None
    client_order_id: str | None = None
    figures: Mapping[str, float] | None = None


# The notices that are halt events: a breaker or the kill switch halting entries, and clearing.
HALT_KINDS = frozenset(
    {
        NoticeKind.BREAKER_TRIPPED,
        NoticeKind.BREAKER_CLEARED,
        NoticeKind.HALTED,
        NoticeKind.HALT_CLEARED,
    }
)


@dataclass(frozen=True, slots=True)
class HaltEvent:
    """A halt or its clearing as the ledger and reports record it: when (candle time, ms),
    ``kind`` (a ``HALT_KINDS`` notice kind), ``cause`` (the breaker, ``kill_switch`` or
    ``reset``), the sentence, and the figures at that moment."""

    time: int
    kind: str
    cause: str
    message: str
    figures: Mapping[str, float]

    @classmethod
    def from_notice(cls, notice: Notice) -> HaltEvent:
        """The halt event of a ``HALT_KINDS`` notice."""
        return cls(
            notice.time, notice.kind.value, notice.code, notice.message, dict(notice.figures or {})
        )

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (time as ms)."""
        return {
            "time": self.time,
            "kind": self.kind,
            "cause": self.cause,
            "message": self.message,
            "figures": dict(self.figures),
        }


def halt_events(notices: list[Notice]) -> list[HaltEvent]:
    """The halt events among ``notices``, in order."""
    return [HaltEvent.from_notice(n) for n in notices if n.kind in HALT_KINDS]


# The notices that are refusals: an entry not made, an order cancelled or refused by the rules.
REFUSAL_KINDS = frozenset(
    {NoticeKind.ENTRY_REJECTED, NoticeKind.ORDER_CANCELLED, NoticeKind.ORDER_REFUSED}
)


@dataclass(slots=True)  # one per refused entry of a backtest: not frozen, as Notice
class Refusal:
    """An entry the engine did not make or an order it cancelled or refused, as the ledger
    records it: when (ms), ``kind`` (a ``REFUSAL_KINDS`` notice kind), ``code`` (the reason,
    e.g. ``drawdown``, ``max_trades_per_day``, ``no_buying_power``), the symbol and the order."""

    time: int
    kind: str
    code: str
    symbol: str
    client_order_id: str
    message: str

    @classmethod
    def from_notice(cls, notice: Notice) -> Refusal:
        """The refusal of a ``REFUSAL_KINDS`` notice."""
        return cls(
            notice.time,
            str(notice.kind),  # a StrEnum's value (``.value`` is an enum descriptor's call)
            notice.code,
            notice.symbol or "",
            notice.client_order_id or "",
            notice.message,
        )


def refusals(notices: list[Notice]) -> list[Refusal]:
    """The refusals among ``notices``, in order."""
    return [Refusal.from_notice(n) for n in notices if n.kind in REFUSAL_KINDS]


def refusal_counts(found: list[Refusal]) -> dict[str, dict[str, int]]:
    """How many refusals of each kind, by reason: ``{kind: {code: count}}``, sorted."""
    counts: dict[str, dict[str, int]] = {}
    for refusal in found:
        by_code = counts.setdefault(refusal.kind, {})
        by_code[refusal.code] = by_code.get(refusal.code, 0) + 1
    return {kind: dict(sorted(counts[kind].items())) for kind in sorted(counts)}


def ledger_order(events: list[HaltEvent]) -> list[HaltEvent]:
    """``events`` in the order the ledger returns them: time, then kind and cause."""
    return sorted(events, key=lambda e: (e.time, e.kind, e.cause))


@dataclass(slots=True)  # one per refused entry: not frozen, as Notice
class Rejection:
    """Why an entry was not made: a code and a sentence."""

    code: str
    message: str


@dataclass(slots=True, init=False)
class EngineOutput:
    """Everything one event or control command produced, in the order it happened."""

    orders: list[Order]
    fills: list[Fill]
    equity: list[EquityPoint]
    notices: list[Notice]

    def __init__(self) -> None:
        # Empty lists written out, not field(default_factory=list): one output is made per
        # candle, and the generated __init__ takes twice as long.
        self.orders, self.fills, self.equity, self.notices = [], [], [], []

    def extend(self, other: EngineOutput) -> None:
        """Append everything in ``other`` after what is already here."""
        self.orders.extend(other.orders)
        self.fills.extend(other.fills)
        self.equity.extend(other.equity)
        self.notices.extend(other.notices)

"""A point-in-time summary of a bot's trading, for status, logs and reports."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from kubetrade.domain import HaltCause
from kubetrade.spec import TradingSummary as StatusTradingSummary


def iso_time(time_ms: int) -> str:
    """An epoch-ms instant as ISO 8601 UTC, e.g. ``2024-01-01T00:15:00Z``."""
    return datetime.fromtimestamp(time_ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class TradingSummary:
    """The engine's figures and state.

    ``halted`` is true while the kill switch is engaged or any breaker is tripped;
    ``halt_reason`` says why. ``last_event_time`` is the close time of the latest candle
    processed and ``last_signal_time`` that of the latest candle that carried a prediction.
    ``drawdown_pct`` is how far equity is below its peak, as the drawdown breaker sees it.
    ``halted_since`` is when the oldest halt still in force began (ms), None when not halted.
    """

    equity: float
    cash: float
    realized_pnl: float
    unrealized_pnl: float
    open_positions: int
    trades: int
    halted: bool
    halt_reason: str | None
    paused: bool
    breakers: tuple[str, ...]
    last_event_time: int | None
    last_signal_time: int | None
    halt_causes: tuple[HaltCause, ...] = ()
    """Why entries are halted, the kill first, then each tripped breaker."""
    drawdown_pct: float = 0.0
    halted_since: int | None = None

    def to_status(self) -> StatusTradingSummary:
        """The ``status.trading`` block of the TradingBot resource."""
        return StatusTradingSummary(
            equity=self.equity,
            realized_pnl=self.realized_pnl,
            unrealized_pnl=self.unrealized_pnl,
            open_positions=self.open_positions,
            trades=self.trades,
            last_signal_at=None
            if self.last_signal_time is None
            else iso_time(self.last_signal_time),
            halt_reason=self.halt_reason,
            halt_causes=list(self.halt_causes) or None,
            halted_since=None if self.halted_since is None else iso_time(self.halted_since),
        )

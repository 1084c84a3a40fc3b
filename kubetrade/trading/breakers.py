"""Circuit breakers and entry throttles: when new entries are not allowed.

Breakers (each blocks new entries while tripped; exits keep running):

- ``daily_loss``: equity has fallen ``maxDailyLossPct`` or more below the equity at the start of
  the UTC day. A candle belongs to the UTC day of its open time; the day's starting equity is the
  account equity when the first candle of that day arrives (marked at the previous closes). It
  clears by itself when the next day starts, or if equity recovers above the limit.
- ``drawdown``: equity is ``maxDrawdownPct`` or more below its peak. The peak is the highest
  equity point (one per candle time, see ``engine``). It clears if equity recovers; once
  ``drawdownCooldown`` has passed since it tripped, when the peak re-bases to current equity (a
  new high-water mark the drawdown is measured from); or on ``reset``, which re-bases the peak
  and the day to current equity. Without ``drawdownCooldown`` only recovery or a reset clears
  it, in a backtest as live.
- ``consecutive_losses``: ``maxConsecutiveLosses`` losing round trips in a row (net of fees;
  a round trip with net PnL >= 0 ends the streak). Entries stay blocked for
  ``consecutiveLossCooldown`` from the fill that completed the streak; the streak then starts
  again from zero.

Throttles (a rejection, not a breaker state):

- ``min_seconds_between_trades``: seconds since the previous entry decision.
- ``max_trades_per_day``: entry decisions in the current UTC day.

Breakers are evaluated after every candle is marked to market, so a trip or a clear is reported
on the candle where it happens, whether or not a signal asked for an entry. Every trip and clear
is a notice carrying ``halt_figures`` (equity, peak, drawdown, the day's starting equity and
loss); the executor records them in the ledger's ``halts`` and a backtest in its report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from enum import StrEnum

from kubetrade.domain import HaltCause
from kubetrade.spec import BreakerSpec, parse_duration
from kubetrade.trading.outputs import Rejection
from kubetrade.trading.summary import iso_time

DAY_MS = 86_400_000


class Breaker(StrEnum):
    """Names of the circuit breakers."""

    DAILY_LOSS = "daily_loss"
    DRAWDOWN = "drawdown"
    CONSECUTIVE_LOSSES = "consecutive_losses"


BREAKER_CAUSES: dict[str, HaltCause] = {
    Breaker.DAILY_LOSS: HaltCause.DAILY_LOSS,
    Breaker.DRAWDOWN: HaltCause.DRAWDOWN,
    Breaker.CONSECUTIVE_LOSSES: HaltCause.CONSECUTIVE_LOSSES,
}


def breaker_causes(tripped: dict[str, str]) -> tuple[HaltCause, ...]:
    """The halt cause of each tripped breaker, in the order they tripped."""
    return tuple(BREAKER_CAUSES[name] for name in tripped)


@dataclass(frozen=True, slots=True)
class BreakerState:
    """Everything the breakers and throttles remember. ``tripped`` maps breaker to message."""

    peak_equity: float
    day_start_equity: float
    day: int | None = None
    loss_streak: int = 0
    cooldown_until: int | None = None
    entries_today: int = 0
    last_entry_time: int | None = None
    tripped: dict[str, str] = field(default_factory=dict)
    # When each tripped breaker tripped (ms): the drawdown cooldown runs from there.
    tripped_at: dict[str, int] = field(default_factory=dict)


def start_day(state: BreakerState, day: int, equity: float) -> BreakerState:
    """Roll forward to ``day`` if it is later: record its starting equity, zero its entries."""
    if state.day is not None and day <= state.day:
        return state
    return replace(state, day=day, day_start_equity=equity, entries_today=0)


def observe_equity_point(state: BreakerState, equity: float) -> BreakerState:
    """Raise the peak when an equity point exceeds it."""
    if equity <= state.peak_equity:
        return state  # the common case: no copy per equity point
    return replace(state, peak_equity=equity)


def drawdown_pct(state: BreakerState, equity: float) -> float:
    """How far ``equity`` is below the peak, in percent: what the drawdown breaker compares."""
    if state.peak_equity <= 0:
        return 0.0
    return max(0.0, (state.peak_equity - equity) / state.peak_equity * 100)


def evaluate(spec: BreakerSpec, state: BreakerState, equity: float, now: int) -> dict[str, str]:
    """Breakers tripped at ``equity`` and time ``now`` (ms), each with a message."""
    tripped: dict[str, str] = {}
    if spec.max_daily_loss_pct is not None and state.day_start_equity > 0:
        loss = (state.day_start_equity - equity) / state.day_start_equity * 100
        if loss >= spec.max_daily_loss_pct:
            tripped[Breaker.DAILY_LOSS.value] = (
                f"daily loss {loss:.2f}% >= maxDailyLossPct {spec.max_daily_loss_pct:g}% "
                f"(day started at equity {state.day_start_equity:.2f})"
            )
    if spec.max_drawdown_pct is not None and state.peak_equity > 0:
        drawdown = drawdown_pct(state, equity)
        if drawdown >= spec.max_drawdown_pct:
            tripped[Breaker.DRAWDOWN.value] = (
                f"drawdown {drawdown:.2f}% >= maxDrawdownPct {spec.max_drawdown_pct:g}% "
                f"(peak equity {state.peak_equity:.2f}); reset to re-base the peak"
            )
    if state.cooldown_until is not None and now < state.cooldown_until:
        tripped[Breaker.CONSECUTIVE_LOSSES.value] = (
            f"{spec.max_consecutive_losses} consecutive losing trades: entries paused for "
            f"{spec.consecutive_loss_cooldown}, until {iso_time(state.cooldown_until)}"
        )
    return tripped


# How far above its exact value ``quiet_above`` keeps each trip point, relative to the equity
# the breaker measures from: many orders of magnitude more than the rounding of ``evaluate``'s
# percentages, so no trip is missed, and far too little to matter for speed.
_QUIET_MARGIN = 1e-9


def quiet_above(spec: BreakerSpec, state: BreakerState) -> float:
    """An equity above which ``evaluate`` finds no loss breaker tripped in ``state``.

    The engine asks ``evaluate`` only at or below it (or while a cooldown runs): most candles
    are far from every limit, and one comparison is much cheaper than the percentages. It is a
    bound, not the decision: ``evaluate`` still decides at or below it.
    """
    bound = -math.inf
    if spec.max_daily_loss_pct is not None and state.day_start_equity > 0:
        start = state.day_start_equity
        bound = start * (1 - spec.max_daily_loss_pct / 100) + start * _QUIET_MARGIN
    if spec.max_drawdown_pct is not None and state.peak_equity > 0:
        peak = state.peak_equity
        bound = max(bound, peak * (1 - spec.max_drawdown_pct / 100) + peak * _QUIET_MARGIN)
    return bound


def drawdown_cooldown_over(spec: BreakerSpec, state: BreakerState, now: int) -> bool:
    """Whether the tripped drawdown breaker has waited out ``drawdownCooldown`` at ``now``."""
    if spec.drawdown_cooldown is None:
        return False
    since = state.tripped_at.get(Breaker.DRAWDOWN.value)
    if since is None:
        return False
    return now - since >= parse_duration(spec.drawdown_cooldown) * 1000


def halt_figures(state: BreakerState, equity: float) -> dict[str, float]:
    """The figures a halt event records: equity, the peak and drawdown the drawdown breaker
    sees, the day's starting equity and the day's loss."""
    day_start = state.day_start_equity
    return {
        "equity": equity,
        "peak_equity": state.peak_equity,
        "drawdown_pct": drawdown_pct(state, equity),
        "day_start_equity": day_start,
        "daily_loss_pct": (day_start - equity) / day_start * 100 if day_start > 0 else 0.0,
    }


def record_round_trip(
    spec: BreakerSpec, state: BreakerState, net_pnl: float, time: int
) -> BreakerState:
    """Count a closed round trip into the loss streak; start the cooldown when it is reached."""
    if net_pnl >= 0:
        return replace(state, loss_streak=0)
    streak = state.loss_streak + 1
    if spec.max_consecutive_losses is not None and streak >= spec.max_consecutive_losses:
        cooldown_ms = parse_duration(spec.consecutive_loss_cooldown) * 1000
        return replace(state, loss_streak=0, cooldown_until=time + cooldown_ms)
    return replace(state, loss_streak=streak)


def entry_throttle(spec: BreakerSpec, state: BreakerState, now: int) -> Rejection | None:
    """Why an entry at ``now`` (ms) is too soon or one too many today, or None."""
    minimum = spec.min_seconds_between_trades
    if minimum and state.last_entry_time is not None:
        elapsed = (now - state.last_entry_time) / 1000
        if elapsed < minimum:
            return Rejection(
                "min_seconds_between_trades",
                f"{elapsed:g}s since the last entry < minSecondsBetweenTrades {minimum}s",
            )
    if spec.max_trades_per_day is not None and state.entries_today >= spec.max_trades_per_day:
        return Rejection(
            "max_trades_per_day",
            f"{state.entries_today} entries today >= maxTradesPerDay {spec.max_trades_per_day}",
        )
    return None


def record_entry(state: BreakerState, now: int) -> BreakerState:
    """Count an entry decision at ``now`` (ms) for the throttles."""
    return replace(state, entries_today=state.entries_today + 1, last_entry_time=now)


def rebase(state: BreakerState, equity: float) -> BreakerState:
    """What ``reset`` does: clear the streak and cooldown, re-base peak and day to ``equity``."""
    return replace(
        state,
        peak_equity=equity,
        day_start_equity=equity,
        loss_streak=0,
        cooldown_until=None,
        tripped={},
        tripped_at={},
    )

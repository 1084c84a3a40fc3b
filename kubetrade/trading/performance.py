"""Report figures from equity points and fills: pure functions shared by backtest and run reports.

Conventions:

- Returns are per equity point (one per candle time): ``r_i = e_i / e_{i-1} - 1``, the first
  against the initial capital. Annualization assumes markets open around the clock (crypto):
  ``periods per year = 365 days / timeframe``. The risk-free rate is 0.
- Sharpe = ``mean(r) / stdev(r) * sqrt(periods per year)`` with the sample standard deviation;
  Sortino = ``mean(r) / downside deviation * sqrt(periods per year)`` where the downside
  deviation is ``sqrt(mean(min(r, 0)^2))`` over all periods. Both are None when undefined (fewer
  than two returns, or no dispersion / no losing period).
- A round trip is an entry and the exit that closes it, each in one fill or several (an order
  filled in parts); its PnL is the sum of its fills' realized PnL (so net of every fee).
  Positions still open are not round trips.
- Win rate is the share of round trips with PnL > 0, in percent. Profit factor is gross profit
  over gross loss; None when there is no losing trip (it would be infinite, or undefined).
- Exposure is the share of equity points with at least one open position, in percent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from kubetrade.domain import EquityPoint, Fill, OrderReason, timeframe_ms

YEAR_MS = 365 * 86_400_000
_ENTRIES = frozenset({OrderReason.ENTRY_LONG, OrderReason.ENTRY_SHORT})


@dataclass(frozen=True, slots=True)
class RoundTrip:
    """One closed trade."""

    symbol: str
    direction: str
    quantity: float
    entry_time: int
    exit_time: int
    entry_price: float
    exit_price: float
    pnl: float
    exit_reason: OrderReason


@dataclass(frozen=True, slots=True)
class PerformanceReport:
    """The headline figures of a run."""

    initial_capital: float
    final_equity: float
    total_return_pct: float
    max_drawdown_pct: float
    sharpe: float | None
    sortino: float | None
    trades: int
    win_rate_pct: float | None
    profit_factor: float | None
    exposure_pct: float
    fees: float


def round_trips(fills: Sequence[Fill]) -> list[RoundTrip]:
    """Group each symbol's fills, in fill order, into closed round trips.

    A trip opens with an entry fill of a flat symbol and closes when its exit fills add up to
    what its entry fills bought or sold. An order filled in parts (``execution.maxVolumePct``, or
    live) is several fills of one trip: the prices are volume-weighted and the PnL is the sum
    of every fill's. An exit that leaves less than a lot step (dust, written off) closes the
    trip when the next entry comes. Trips are listed in the order they closed.
    """
    open_trips: dict[str, list[Fill]] = {}
    closed: list[tuple[int, RoundTrip]] = []
    for index, fill in enumerate(fills):
        current = open_trips.get(fill.symbol)
        if fill.reason in _ENTRIES:
            if current is not None and current[-1].reason not in _ENTRIES:
                closed.append((index, _trip(current)))  # the previous trip ended in dust
                current = None
            if current is None:
                open_trips[fill.symbol] = [fill]
            else:
                current.append(fill)
            continue
        if current is None:
            continue
        current.append(fill)
        entered = sum(f.quantity for f in current if f.reason in _ENTRIES)
        exited = sum(f.quantity for f in current if f.reason not in _ENTRIES)
        if exited >= entered * (1 - 1e-9):
            closed.append((index, _trip(current)))
            del open_trips[fill.symbol]
    return [trip for _, trip in sorted(closed, key=lambda pair: pair[0])]


def _trip(fills: Sequence[Fill]) -> RoundTrip:
    entries = [f for f in fills if f.reason in _ENTRIES]
    exits = [f for f in fills if f.reason not in _ENTRIES]
    entered = sum(f.quantity for f in entries)
    exited = sum(f.quantity for f in exits)
    return RoundTrip(
        symbol=entries[0].symbol,
        direction="long" if entries[0].reason is OrderReason.ENTRY_LONG else "short",
        quantity=entered,
        entry_time=entries[0].time,
        exit_time=exits[-1].time,
        entry_price=sum(f.price * f.quantity for f in entries) / entered,
        exit_price=sum(f.price * f.quantity for f in exits) / exited,
        pnl=sum(f.realized_pnl for f in fills),
        exit_reason=exits[-1].reason,
    )


def total_return_pct(points: Sequence[EquityPoint], initial_capital: float) -> float:
    """Final equity over initial capital, minus one, in percent (0 without points)."""
    if not points:
        return 0.0
    return (points[-1].equity / initial_capital - 1) * 100


def max_drawdown_pct(points: Sequence[EquityPoint], initial_capital: float) -> float:
    """Largest fall from a running peak (starting at the initial capital), in percent."""
    peak = initial_capital
    worst = 0.0
    for point in points:
        peak = max(peak, point.equity)
        worst = max(worst, (peak - point.equity) / peak * 100)
    return worst


def period_returns(points: Sequence[EquityPoint], initial_capital: float) -> list[float]:
    """Simple returns between consecutive equity points, the first from the initial capital."""
    returns: list[float] = []
    previous = initial_capital
    for point in points:
        returns.append(point.equity / previous - 1 if previous > 0 else 0.0)
        previous = point.equity
    return returns


def periods_per_year(timeframe: str) -> float:
    """How many candles of ``timeframe`` fit in a 365-day year."""
    return YEAR_MS / timeframe_ms(timeframe)


def sharpe_ratio(returns: Sequence[float], timeframe: str) -> float | None:
    """Annualized Sharpe ratio of per-candle returns (risk-free rate 0)."""
    if len(returns) < 2:
        return None
    mean = sum(returns) / len(returns)
    variance = sum((r - mean) ** 2 for r in returns) / (len(returns) - 1)
    if variance <= 0:
        return None
    return mean / math.sqrt(variance) * math.sqrt(periods_per_year(timeframe))


def sortino_ratio(returns: Sequence[float], timeframe: str) -> float | None:
    """Annualized Sortino ratio of per-candle returns (target 0)."""
    if len(returns) < 2:
        return None
    downside = math.sqrt(sum(min(r, 0.0) ** 2 for r in returns) / len(returns))
    if downside <= 0:
        return None
    mean = sum(returns) / len(returns)
    return mean / downside * math.sqrt(periods_per_year(timeframe))


def win_rate_pct(trips: Sequence[RoundTrip]) -> float | None:
    """Share of winning round trips in percent; None without trips."""
    if not trips:
        return None
    return sum(1 for t in trips if t.pnl > 0) / len(trips) * 100


def profit_factor(trips: Sequence[RoundTrip]) -> float | None:
    """Gross profit over gross loss; None when no trip lost."""
    gross_loss = -sum(t.pnl for t in trips if t.pnl < 0)
    if gross_loss <= 0:
        return None
    return sum(t.pnl for t in trips if t.pnl > 0) / gross_loss


def exposure_pct(points: Sequence[EquityPoint]) -> float:
    """Share of equity points with an open position, in percent (0 without points)."""
    if not points:
        return 0.0
    return sum(1 for p in points if p.open_positions > 0) / len(points) * 100


def performance_report(
    points: Sequence[EquityPoint],
    fills: Sequence[Fill],
    initial_capital: float,
    timeframe: str,
) -> PerformanceReport:
    """All headline figures of a run."""
    returns = period_returns(points, initial_capital)
    trips = round_trips(fills)
    return PerformanceReport(
        initial_capital=initial_capital,
        final_equity=points[-1].equity if points else initial_capital,
        total_return_pct=total_return_pct(points, initial_capital),
        max_drawdown_pct=max_drawdown_pct(points, initial_capital),
        sharpe=sharpe_ratio(returns, timeframe),
        sortino=sortino_ratio(returns, timeframe),
        trades=len(trips),
        win_rate_pct=win_rate_pct(trips),
        profit_factor=profit_factor(trips),
        exposure_pct=exposure_pct(points),
        fees=sum(f.fee for f in fills),
    )

"""Buy and hold of the same symbols over the same candles: what a strategy is measured against.

Equal weights: each symbol gets ``initial_capital / len(symbols)``, bought at the close of its
first candle and held to the end, without fees or slippage. Equity is marked at the closes, one
point per candle time, stamped at the close as the engine's equity points are; a symbol's share
waits in cash until its first candle. The figures use the same conventions as
``performance`` (returns per point, Sharpe annualized around the clock).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from kubetrade.domain import Candle, EquityPoint, timeframe_ms
from kubetrade.trading.performance import (
    max_drawdown_pct,
    period_returns,
    sharpe_ratio,
    total_return_pct,
)


@dataclass(frozen=True, slots=True)
class BenchmarkReport:
    """Buy and hold's headline figures over a period."""

    total_return_pct: float
    max_drawdown_pct: float
    sharpe: float | None


def equity_point(time: int, equity: float) -> EquityPoint:
    """An equity point holding only its equity (the rest is not a benchmark's concern)."""
    return EquityPoint(
        time=time,
        equity=equity,
        cash=equity,
        realized_pnl=0.0,
        unrealized_pnl=0.0,
        open_positions=0,
        drawdown_pct=0.0,
    )


def buy_and_hold_equity(
    candles: Iterable[Candle], symbols: Sequence[str], initial_capital: float, timeframe: str
) -> list[EquityPoint]:
    """Buy and hold's equity at every candle time of ``candles`` (in time order)."""
    share = initial_capital / len(symbols)
    step = timeframe_ms(timeframe)
    units: dict[str, float] = {}
    closes: dict[str, float] = {}
    points: list[EquityPoint] = []

    def value() -> float:
        held = sum(units[s] * closes[s] for s in units)
        return held + share * (len(symbols) - len(units))

    current: int | None = None
    for candle in candles:
        if current is not None and candle.open_time != current:
            points.append(equity_point(current + step, value()))
        current = candle.open_time
        if candle.symbol not in units:
            units[candle.symbol] = share / candle.close
        closes[candle.symbol] = candle.close
    if current is not None:
        points.append(equity_point(current + step, value()))
    return points


def benchmark_report(
    points: Sequence[EquityPoint], initial_capital: float, timeframe: str
) -> BenchmarkReport:
    """Return, maximum drawdown and Sharpe of a benchmark's equity points."""
    return BenchmarkReport(
        total_return_pct=total_return_pct(points, initial_capital),
        max_drawdown_pct=max_drawdown_pct(points, initial_capital),
        sharpe=sharpe_ratio(period_returns(points, initial_capital), timeframe),
    )

"""Report figures from equity points and fills."""

from __future__ import annotations

import math
import statistics

import pytest

from kubetrade.domain import EquityPoint, Fill, OrderReason, Side
from kubetrade.trading.performance import (
    exposure_pct,
    max_drawdown_pct,
    performance_report,
    period_returns,
    periods_per_year,
    profit_factor,
    round_trips,
    sharpe_ratio,
    sortino_ratio,
    total_return_pct,
    win_rate_pct,
)

H = 3_600_000


def points(*equities: float, open_positions: tuple[int, ...] | None = None) -> list[EquityPoint]:
    held = open_positions or (0,) * len(equities)
    return [
        EquityPoint(
            time=(i + 1) * H,
            equity=e,
            cash=e,
            realized_pnl=0,
            unrealized_pnl=0,
            open_positions=n,
            drawdown_pct=0,
        )
        for i, (e, n) in enumerate(zip(equities, held, strict=True))
    ]


def fill(
    symbol: str, reason: OrderReason, time: int, price: float, pnl: float, fee: float = 0.0
) -> Fill:
    side = Side.SELL if reason in (OrderReason.ENTRY_SHORT, OrderReason.STOP_LOSS) else Side.BUY
    return Fill(f"{symbol}:{time}", symbol, side, 1.0, price, fee, time, reason, pnl)


def test_return_and_drawdown() -> None:
    curve = points(10_100, 9_900, 10_200, 9_000)
    assert total_return_pct(curve, 10_000) == pytest.approx(-10)
    assert max_drawdown_pct(curve, 10_000) == pytest.approx(1_200 / 10_200 * 100)
    assert max_drawdown_pct(points(9_500, 9_800), 10_000) == pytest.approx(5)
    assert total_return_pct([], 10_000) == 0


def test_returns_and_annualized_ratios() -> None:
    curve = points(10_200, 10_098, 10_400.94, 10_192.9212)
    returns = period_returns(curve, 10_000)
    assert returns == pytest.approx([0.02, -0.01, 0.03, -0.02])
    per_year = periods_per_year("1h")
    assert per_year == 8_760
    expected_sharpe = statistics.mean(returns) / statistics.stdev(returns) * math.sqrt(8_760)
    assert sharpe_ratio(returns, "1h") == pytest.approx(expected_sharpe)
    downside = math.sqrt((0.01**2 + 0.02**2) / 4)
    assert sortino_ratio(returns, "1h") == pytest.approx(0.005 / downside * math.sqrt(8_760))


def test_ratios_are_none_when_undefined() -> None:
    assert sharpe_ratio([0.01], "1h") is None
    assert sharpe_ratio([0.01, 0.01, 0.01], "1h") is None
    assert sortino_ratio([0.01, 0.02], "1h") is None


def test_round_trips_pair_fills_per_symbol_and_skip_open_positions() -> None:
    fills = [
        fill("BTC/USDT", OrderReason.ENTRY_LONG, 1, 100, -0.1),
        fill("ETH/USDT", OrderReason.ENTRY_SHORT, 1, 20, -0.02),
        fill("BTC/USDT", OrderReason.STOP_LOSS, 2, 98, -2.1),
        fill("ETH/USDT", OrderReason.TAKE_PROFIT, 3, 18, 2.0),
        fill("BTC/USDT", OrderReason.ENTRY_LONG, 4, 99, -0.1),
    ]
    trips = round_trips(fills)
    assert [(t.symbol, t.direction, t.exit_reason) for t in trips] == [
        ("BTC/USDT", "long", OrderReason.STOP_LOSS),
        ("ETH/USDT", "short", OrderReason.TAKE_PROFIT),
    ]
    assert [t.pnl for t in trips] == pytest.approx([-2.2, 1.98])
    assert (trips[0].entry_price, trips[0].exit_price, trips[0].exit_time) == (100, 98, 2)


def test_win_rate_profit_factor_and_exposure() -> None:
    fills = []
    for i, pnl in enumerate([100.0, -50.0, 30.0]):
        fills.append(fill("BTC/USDT", OrderReason.ENTRY_LONG, 2 * i, 100, 0.0))
        fills.append(fill("BTC/USDT", OrderReason.EXIT_SIGNAL, 2 * i + 1, 100, pnl))
    trips = round_trips(fills)
    assert win_rate_pct(trips) == pytest.approx(200 / 3)
    assert profit_factor(trips) == pytest.approx(130 / 50)
    assert profit_factor(trips[:1]) is None
    assert win_rate_pct([]) is None
    assert exposure_pct(points(1, 1, 1, 1, open_positions=(0, 1, 1, 0))) == 50
    assert exposure_pct([]) == 0


def test_report_gathers_every_figure() -> None:
    fills = [
        fill("BTC/USDT", OrderReason.ENTRY_LONG, 1, 100, -1.0, fee=1.0),
        fill("BTC/USDT", OrderReason.EXIT_SIGNAL, 2, 110, 9.0, fee=1.0),
    ]
    report = performance_report(points(10_000, 10_008, open_positions=(1, 0)), fills, 10_000, "15m")
    assert report.final_equity == 10_008
    assert report.total_return_pct == pytest.approx(0.08)
    assert (report.trades, report.win_rate_pct, report.fees) == (1, 100, 2.0)
    assert report.exposure_pct == 50
    assert report.sharpe is not None
    assert report.profit_factor is None
    empty = performance_report([], [], 10_000, "1h")
    assert (empty.final_equity, empty.trades, empty.sharpe) == (10_000, 0, None)

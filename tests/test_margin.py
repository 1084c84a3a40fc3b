"""Margin for shorts: a short is liquidated at its maintenance margin, with its fee, and pays
its borrow cost per candle; equity cannot run negative on a rising market unnoticed."""

from __future__ import annotations

import pytest

from kubetrade.domain import OrderReason
from kubetrade.report import build_report
from kubetrade.spec import TradingBot
from kubetrade.trading import NoticeKind, TradingEngine
from tests.test_trading_engine import bar, feed, flat, kinds, make_bot

SHORT = {
    "longAbove": 0.6,
    "exitBelow": 0.5,
    "allowShort": True,
    "shortBelow": 0.4,
    "exitAbove": 0.99,
}


def _short_bot(**execution: object) -> TradingBot:
    return make_bot(
        strategy=SHORT,
        risk={"sizing": {"fractionPct": 100}},
        execution={"margin": {"maintenancePct": 50, "liquidationFeeRate": 0.01}, **execution},
    )


def test_a_short_on_a_rising_market_is_liquidated_at_its_maintenance_margin() -> None:
    """The issue's case: a short without a stop on a rising market went to equity -3,342."""
    bot = _short_bot()
    engine = TradingEngine(bot)
    feed(engine, flat(0, 100), 0.3)  # short 100 units at the next open
    [entry] = feed(engine, flat(1, 100), 0.5).fills
    assert entry.reason is OrderReason.ENTRY_SHORT and entry.quantity == 100
    liquidation = 100 * 2 / 1.5  # margin 10 000 + PnL = 50% of the notional
    equities = []
    out = None
    for i, price in enumerate(range(105, 300, 5), start=2):
        out = feed(engine, bar(i, price - 5, price, price - 5, price), 0.5)
        equities.append(engine.summary().equity)
        if out.fills:
            break
    assert out is not None
    [fill] = out.fills
    assert fill.reason is OrderReason.LIQUIDATION
    assert fill.price == pytest.approx(liquidation)
    assert fill.fee == pytest.approx(100 * liquidation * 0.01)
    assert (NoticeKind.LIQUIDATED, "maintenance_margin") in kinds(out)
    assert engine.summary().open_positions == 0
    assert min(equities) > 0
    assert engine.summary().equity == pytest.approx(10_000 - 100 * (liquidation - 100) - fill.fee)
    report = build_report(
        bot,
        candles=0, signals=0, orders=0, fills=[entry, fill], equity=[],
    )  # fmt: skip
    assert [x["price"] for x in report["liquidations"]] == [pytest.approx(liquidation)]


def test_a_gap_through_the_liquidation_price_fills_at_the_open() -> None:
    engine = TradingEngine(_short_bot())
    feed(engine, flat(0, 100), 0.3)
    feed(engine, flat(1, 100), 0.5)
    [fill] = feed(engine, bar(2, 150, 155, 150, 152)).fills
    assert (fill.reason, fill.price) == (OrderReason.LIQUIDATION, 150)


def test_a_stop_below_the_liquidation_price_fires_first() -> None:
    bot = make_bot(
        strategy=SHORT,
        risk={"sizing": {"fractionPct": 100}, "stopLoss": {"atrMultiplier": 2, "atrPeriod": 2}},
    )
    engine = TradingEngine(bot)
    for i in range(2):
        feed(engine, bar(i, 100, 101, 99, 100))
    feed(engine, bar(2, 100, 101, 99, 100), 0.3)
    feed(engine, bar(3, 100, 101, 99, 100), 0.5)  # short at 100, stop at 104
    [fill] = feed(engine, bar(4, 100, 140, 100, 138)).fills
    assert fill.reason is OrderReason.STOP_LOSS


def test_a_short_pays_its_borrow_cost_every_candle() -> None:
    engine = TradingEngine(_short_bot(margin={"borrowPctPerDay": 0.24}))
    feed(engine, flat(0, 100), 0.3)
    feed(engine, flat(1, 100), 0.5)  # short 100 at 100; pays 100 * 100 * 0.24% / 24 = 1
    assert engine.summary().equity == pytest.approx(10_000 - 1)
    feed(engine, flat(2, 100), 0.5)
    assert engine.summary().realized_pnl == pytest.approx(-2)
    long_engine = TradingEngine(make_bot(execution={"margin": {"borrowPctPerDay": 0.24}}))
    feed(long_engine, flat(0, 100), 0.7)
    feed(long_engine, flat(1, 100))
    assert long_engine.summary().equity == 10_000, "a long borrows nothing"

"""Gaps are gaps: a candle without volume (a gap the cleaner filled with a flat candle at the
previous close, or a vendor's fill) is not a market anyone traded in. Nothing fills on it, no
stop fires on it and its signal is not acted on; the order waits for the next real candle."""

from __future__ import annotations

from kubetrade.domain import Candle, OrderReason
from kubetrade.trading import NoticeKind, TradingEngine
from tests.test_trading_engine import BTC, T0, H, bar, feed, flat, kinds, make_bot


def gap(i: int, price: float) -> Candle:
    """What the cleaner puts in a gap: a flat candle at the previous close, no volume."""
    return Candle(BTC, "1h", T0 + i * H, price, price, price, price, 0.0)


def test_an_order_waits_over_a_filled_gap_for_the_first_real_price() -> None:
    """The issue's case: an entry filled at 2,246.12 on an invented candle when the first real
    price was 2,360.41."""
    engine = TradingEngine(make_bot())
    [order] = feed(engine, flat(0, 2246.12), 0.7).orders
    skipped = feed(engine, gap(1, 2246.12), 0.7)
    assert skipped.fills == [] and skipped.orders == []
    assert kinds(skipped) == [(NoticeKind.EVENT_IGNORED, "no_volume")]
    assert feed(engine, gap(2, 2246.12)).fills == []
    [fill] = feed(engine, bar(3, 2360.41, 2370, 2350, 2365)).fills
    assert (fill.client_order_id, fill.price, fill.time) == (
        order.client_order_id,
        2360.41,
        T0 + 3 * H,
    )


def test_no_signal_on_a_filled_gap_is_acted_on() -> None:
    engine = TradingEngine(make_bot(risk={"stopLoss": {"atrMultiplier": 1, "atrPeriod": 2}}))
    feed(engine, bar(0, 100, 101, 99, 100))
    feed(engine, bar(1, 100, 101, 99, 100))
    feed(engine, bar(2, 100, 101, 99, 100), 0.7)  # entry ordered; ATR 2
    feed(engine, bar(3, 100, 101, 99, 100))  # long at 100, stop at 98
    assert engine.summary().open_positions == 1
    # An exit signal on a filled gap is not acted on.
    assert feed(engine, gap(4, 100), 0.3).orders == []
    # A real candle: the exit signal is acted on.
    out = feed(engine, bar(5, 100, 101, 99.5, 100), 0.3)
    assert [o.reason for o in out.orders] == [OrderReason.EXIT_SIGNAL]


def test_equity_points_still_come_for_a_filled_gap() -> None:
    engine = TradingEngine(make_bot())
    feed(engine, flat(0, 100))
    points = feed(engine, gap(1, 100)).equity
    assert [p.time for p in points] == [T0 + 2 * H]

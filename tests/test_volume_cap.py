"""execution.maxVolumePct: an order takes at most that share of a candle's volume; the rest
waits for the next candle. Parts add up to the order, a round trip's PnL counts every part, a
stop overtaking the rest cancels it, and a stop takes no more of the candle than any order."""

from __future__ import annotations

import pytest

from kubetrade.domain import Candle, OrderReason
from kubetrade.trading import NoticeKind, TradingEngine
from kubetrade.trading.performance import round_trips
from tests.test_trading_engine import BTC, T0, H, feed, kinds, make_bot


def candle(i: int, price: float, volume: float, low: float | None = None) -> Candle:
    return Candle(BTC, "1h", T0 + i * H, price, price, price if low is None else low, price, volume)


def test_an_entry_and_its_exit_fill_in_parts_of_the_candles_volume() -> None:
    engine = TradingEngine(make_bot(execution={"maxVolumePct": 10}))
    [order] = feed(engine, candle(0, 100, 1_000), 0.7).orders  # 50 units at 100
    first = feed(engine, candle(1, 100, 200), 0.7)  # 10% of 200 = 20
    assert [(f.quantity, f.client_order_id) for f in first.fills] == [(20, order.client_order_id)]
    assert kinds(first) == [(NoticeKind.PARTIALLY_FILLED, "volume_cap")]
    assert first.orders == [], "no new decision while the order's rest waits"
    second = feed(engine, candle(2, 110, 250))  # 25 more
    third = feed(engine, candle(3, 120, 1_000), 0.3)  # the last 5; then an exit signal
    assert [f.quantity for f in second.fills + third.fills] == [25, 5]
    position = engine.summary()
    assert position.open_positions == 1
    [exit_order] = third.orders
    assert exit_order.quantity == 50 and exit_order.reason is OrderReason.EXIT_SIGNAL
    parts = [feed(engine, candle(4 + i, 130, 300)).fills for i in range(2)]
    last = feed(engine, candle(6, 130, 300)).fills
    assert [f.quantity for f in parts[0] + parts[1] + last] == [30, 20]
    assert engine.summary().open_positions == 0
    # One round trip of 50 units, its PnL summed over every part (no costs in make_bot).
    fills = first.fills + second.fills + third.fills + parts[0] + parts[1] + last
    [trip] = round_trips(fills)
    assert trip.quantity == 50
    entry = (20 * 100 + 25 * 110 + 5 * 120) / 50
    assert trip.pnl == pytest.approx(50 * (130 - entry))
    assert engine.summary().equity == pytest.approx(10_000 + 50 * (130 - entry))


def test_a_stop_overtakes_the_rest_of_an_entry() -> None:
    bot = make_bot(
        execution={"maxVolumePct": 10},
        risk={"stopLoss": {"atrMultiplier": 1, "atrPeriod": 2}},
    )
    engine = TradingEngine(bot)
    for i in range(3):
        feed(
            engine, Candle(BTC, "1h", T0 + i * H, 100, 101, 99, 100, 1_000), 0.7 if i == 2 else None
        )
    first = feed(engine, candle(3, 100, 100))  # 10 of the 50 fill; stop at 98
    out = feed(engine, candle(4, 100, 100, low=97))  # 10 more, then the stop: 10 of the 20
    assert [(f.reason, f.quantity, f.price) for f in out.fills] == [
        (OrderReason.ENTRY_LONG, 10, 100),
        (OrderReason.STOP_LOSS, 10, 98),
    ]
    assert (NoticeKind.ORDER_CANCELLED, "overtaken") in kinds(out)
    assert (NoticeKind.PARTIALLY_FILLED, "volume_cap") in kinds(out)
    assert engine.summary().open_positions == 1, "the stop's rest waits for the next candle"
    rest = feed(engine, candle(5, 99, 100))
    assert [(f.reason, f.quantity, f.price) for f in rest.fills] == [
        (OrderReason.STOP_LOSS, 10, 99)
    ]
    assert engine.summary().open_positions == 0
    assert feed(engine, candle(6, 100, 100)).fills == [], "nothing of the entry is left"
    # One round trip of 20 units, its PnL over both parts of the stop (no costs in make_bot).
    [trip] = round_trips(first.fills + out.fills + rest.fills)
    assert trip.pnl == pytest.approx(10 * (98 - 100) + 10 * (99 - 100))
    assert engine.summary().equity == pytest.approx(10_000 + trip.pnl)


def test_a_snapshot_keeps_the_rest_waiting() -> None:
    bot = make_bot(execution={"maxVolumePct": 10})
    engine = TradingEngine(bot)
    feed(engine, candle(0, 100, 1_000), 0.7)
    feed(engine, candle(1, 100, 200))
    restored = TradingEngine.restore(bot, engine.snapshot())
    assert [f.quantity for f in feed(restored, candle(2, 100, 10_000)).fills] == [30]

"""LiveEngine: the paper engine's decisions, filled by what the exchange reports."""

from __future__ import annotations

import pytest

from kubetrade.domain import OrderReason, Side
from kubetrade.trading import NoticeKind, TradingEngine
from kubetrade.trading.live_engine import LiveEngine, OrderProgress
from kubetrade.trading.validation import MarketRules
from tests.test_trading_engine import BTC, bar, feed, flat, make_bot

RULES = {
    BTC: MarketRules(symbol=BTC, amount_precision=0.00001, price_precision=0.01, min_amount=0.00001)
}


def progress(
    cid: str,
    filled: float,
    price: float,
    *,
    fee_base: float = 0.0,
    done: bool,
    time: int = 1,
    fee_quote: float = 0.0,
) -> OrderProgress:
    return OrderProgress(
        cid, filled, filled * price, fee_quote + fee_base * price, fee_base, time, done
    )


def entered(engine: LiveEngine) -> str:
    feed(engine, flat(0, 100.0), 0.7)
    (order,) = engine.pending_orders()
    return order.client_order_id


def test_no_simulated_fill_at_the_next_open() -> None:
    engine = LiveEngine(make_bot())
    paper = TradingEngine(make_bot())
    for e in (engine, paper):
        out = feed(e, flat(0, 100.0), 0.7)
        assert [o.reason for o in out.orders] == [OrderReason.ENTRY_LONG]
    assert feed(paper, flat(1, 101.0), 0.7).fills  # paper fills at the next open
    out = feed(engine, flat(1, 101.0), 0.7)
    assert out.fills == [] and out.orders == []  # live waits for the exchange
    assert engine.summary().open_positions == 0 and len(engine.pending_orders()) == 1


def test_partial_fills_grow_the_position_once_each_and_base_fees_are_not_held() -> None:
    engine = LiveEngine(make_bot(), RULES)
    cid = entered(engine)
    first = progress(cid, 10.0, 100.0, fee_base=0.01, done=False, time=5)
    out = engine.on_order_progress(first)
    (fill,) = out.fills
    assert (fill.quantity, fill.price) == (10.0, 100.0) and fill.fee == pytest.approx(1.0)
    assert engine.on_order_progress(first).fills == []  # a repeated report books nothing
    out = engine.on_order_progress(progress(cid, 20.0, 101.0, fee_base=0.02, done=True, time=5))
    (fill,) = out.fills
    assert fill.quantity == pytest.approx(10.0) and fill.price == pytest.approx(102.0)
    assert fill.time == 6  # strictly after the previous fill of the order
    summary = engine.summary()
    assert summary.open_positions == 1 and engine.pending_orders() == []
    # Cash paid is exactly what the exchange took: 20 * 101 (the fee came out of the base).
    assert summary.cash == pytest.approx(10_000 - 2020.0)
    position = engine._portfolio.positions[BTC]
    assert position.quantity == pytest.approx(19.98)


def test_exit_fill_closes_the_position_leaving_dust_below_the_lot_step() -> None:
    engine = LiveEngine(make_bot(), RULES)
    cid = entered(engine)
    engine.on_order_progress(progress(cid, 1.0, 100.0, fee_base=0.000001, done=True))
    feed(engine, flat(1, 110.0), 0.2)  # exit signal
    (exit_order,) = engine.pending_orders()
    assert exit_order.side is Side.SELL and exit_order.quantity == pytest.approx(0.999999)
    out = engine.on_order_progress(
        progress(exit_order.client_order_id, 0.99999, 110.0, fee_quote=0.11, done=True, time=9)
    )
    assert [f.reason for f in out.fills] == [OrderReason.EXIT_SIGNAL]
    summary = engine.summary()
    assert summary.open_positions == 0 and summary.trades == 1
    # equity == capital + realized (the dust is written off at its entry price)
    assert summary.equity == pytest.approx(10_000 + summary.realized_pnl)


def test_an_order_done_unfilled_is_dropped_with_a_notice() -> None:
    engine = LiveEngine(make_bot())
    cid = entered(engine)
    out = engine.on_order_progress(OrderProgress(cid, 0, 0, 0, 0, 3, True, "exchange: -2010"))
    assert [(n.kind, n.code) for n in out.notices] == [(NoticeKind.ORDER_REFUSED, "exchange")]
    assert engine.pending_orders() == [] and engine.summary().open_positions == 0


def test_disarmed_opens_nothing_but_exits_and_kill_still_work() -> None:
    engine = LiveEngine(make_bot())
    cid = entered(engine)
    engine.on_order_progress(progress(cid, 1.0, 100.0, done=True))
    engine.disarm("unknown open order 7")
    out = feed(engine, flat(1, 100.0), 0.2)
    assert [o.reason for o in out.orders] == [OrderReason.EXIT_SIGNAL]
    engine.on_order_progress(progress(out.orders[0].client_order_id, 1.0, 100.0, done=True))
    out = feed(engine, flat(2, 100.0), 0.7)
    assert out.orders == [] and [n.code for n in out.notices] == ["disarmed"]
    engine.arm()
    assert feed(engine, flat(3, 100.0), 0.7).orders


def test_stop_hit_becomes_a_market_order_not_a_fill() -> None:
    bot = make_bot(risk={"stopLoss": {"atrMultiplier": 1, "atrPeriod": 2}})
    engine = LiveEngine(bot)
    feed(engine, bar(0, 100, 101, 99, 100), 0.5)  # ATR warm-up
    feed(engine, bar(1, 100, 101, 99, 100), 0.7)
    (entry,) = engine.pending_orders()
    engine.on_order_progress(progress(entry.client_order_id, 1.0, 100.0, done=True))
    out = feed(engine, bar(2, 100, 100, 90, 91), 0.7)
    assert [o.reason for o in out.orders] == [OrderReason.STOP_LOSS] and out.fills == []
    assert engine.summary().open_positions == 1


def test_snapshot_keeps_what_was_booked() -> None:
    engine = LiveEngine(make_bot())
    cid = entered(engine)
    engine.on_order_progress(progress(cid, 1.0, 100.0, done=False))
    restored = LiveEngine.restore(make_bot(), engine.snapshot())
    assert isinstance(restored, LiveEngine)
    assert restored.on_order_progress(progress(cid, 1.0, 100.0, done=False)).fills == []
    assert len(restored.on_order_progress(progress(cid, 2.0, 100.0, done=True)).fills) == 1


def test_an_exit_below_the_exchanges_minimum_writes_the_position_off_as_dust() -> None:
    engine = LiveEngine(make_bot(), RULES)
    cid = entered(engine)
    engine.on_order_progress(progress(cid, 0.00005, 100.0, done=True))
    feed(engine, flat(1, 100.0), 0.2)  # exit signal
    (exit_order,) = engine.pending_orders()
    refused = OrderProgress(exit_order.client_order_id, 0, 0, 0, 0, 5, True, "min_notional: x")
    out = engine.on_order_progress(refused)
    assert [(n.kind, n.code) for n in out.notices] == [
        (NoticeKind.ORDER_REFUSED, "min_notional"),
        (NoticeKind.ORDER_CANCELLED, "dust"),
    ]
    summary = engine.summary()
    assert summary.open_positions == 0
    assert summary.equity == pytest.approx(10_000 + summary.realized_pnl)
    assert feed(engine, flat(2, 100.0), 0.2).orders == []  # no exit refused on every candle

"""TradingEngine behaviour, rule by rule, on crafted candles and predictions."""

from __future__ import annotations

from typing import Any

import pytest

from kubetrade.domain import Candle, Direction, MarketEvent, OrderReason, Prediction, Side
from kubetrade.spec import TradingBot, parse_bot
from kubetrade.trading import (
    ControlAction,
    ControlCommand,
    EngineOutput,
    EventError,
    NoticeKind,
    TradingEngine,
)

T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z
H = 3_600_000
BTC, ETH = "BTC/USDT", "ETH/USDT"


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def make_bot(symbols: tuple[str, ...] = (BTC,), **overrides: Any) -> TradingBot:
    """A 1h bot with no costs, no stops and no breakers unless the test asks for them."""
    spec: dict[str, Any] = {
        "symbols": list(symbols),
        "timeframe": "1h",
        "model": {"name": "m"},
        "strategy": {"longAbove": 0.6, "exitBelow": 0.5},
        "risk": {
            "sizing": {"method": "fixed-fraction", "fractionPct": 50, "maxPositionPct": 100},
            "stopLoss": None,
            "takeProfit": None,
            "breakers": {
                "maxDailyLossPct": None,
                "maxDrawdownPct": None,
                "maxConsecutiveLosses": None,
            },
        },
        "execution": {"initialCapital": 10_000, "feeRate": 0, "slippageBps": 0},
    }
    _merge(spec, overrides)
    return parse_bot({"metadata": {"name": "t"}, "spec": spec})


def bar(i: int, o: float, h: float, lo: float, c: float, symbol: str = BTC) -> Candle:
    return Candle(symbol, "1h", T0 + i * H, o, h, lo, c, 1.0)


def flat(i: int, price: float, symbol: str = BTC) -> Candle:
    return bar(i, price, price, price, price, symbol)


def feed(
    engine: TradingEngine, candle: Candle, p: float | None = None, confidence: float = 1.0
) -> EngineOutput:
    prediction = None
    if p is not None:
        direction = Direction.UP if p > 0.5 else Direction.DOWN
        prediction = Prediction(p, direction, confidence, "m", "1", "hash")
    return engine.on_event(MarketEvent(candle, prediction))


def kinds(out: EngineOutput) -> list[tuple[NoticeKind, str]]:
    return [(n.kind, n.code) for n in out.notices]


# -- fills, costs, ids, equity ---------------------------------------------------------------


def test_entry_is_ordered_at_the_close_and_fills_only_at_the_next_open() -> None:
    engine = TradingEngine(make_bot())
    signal = feed(engine, flat(0, 100), 0.7)
    assert signal.fills == []
    [order] = signal.orders
    assert (order.side, order.reason, order.quantity) == (Side.BUY, OrderReason.ENTRY_LONG, 50)
    assert (order.created_at, order.reference_price) == (T0 + H, 100)
    nxt = feed(engine, bar(1, 101, 102, 100, 101))
    [fill] = nxt.fills
    assert (fill.client_order_id, fill.price, fill.quantity) == (order.client_order_id, 101, 50)
    assert fill.time == T0 + H
    assert engine.summary().open_positions == 1


def test_fees_and_slippage_to_the_cent() -> None:
    engine = TradingEngine(make_bot(execution={"feeRate": 0.001, "slippageBps": 10}))
    feed(engine, flat(0, 100), 0.7)
    [buy] = feed(engine, bar(1, 102, 104, 101, 104), 0.4).fills
    assert buy.price == pytest.approx(102.102, abs=1e-9)
    assert buy.fee == pytest.approx(5.1051, abs=1e-9)
    assert buy.realized_pnl == pytest.approx(-5.1051, abs=1e-9)
    [sell] = feed(engine, bar(2, 106, 106, 105, 105)).fills
    assert sell.price == pytest.approx(105.894, abs=1e-9)
    assert sell.fee == pytest.approx(5.2947, abs=1e-9)
    assert round(sell.realized_pnl, 2) == 184.31
    summary = engine.summary()
    assert round(summary.equity, 2) == 10_179.20
    assert round(summary.cash, 2) == 10_179.20
    assert round(summary.realized_pnl, 2) == 179.20
    assert summary.trades == 1


def test_client_order_ids_are_bot_symbol_candle_and_reason() -> None:
    engine = TradingEngine(make_bot())
    [entry] = feed(engine, flat(0, 100), 0.7).orders
    out = feed(engine, flat(1, 100), 0.3)
    [exit_order] = out.orders
    assert entry.client_order_id == f"t:BTC/USDT:{T0}:entry_long"
    assert exit_order.client_order_id == f"t:BTC/USDT:{T0 + H}:exit_signal"
    assert [f.client_order_id for f in out.fills] == [entry.client_order_id]


def test_one_equity_point_per_candle_with_drawdown_from_the_peak() -> None:
    engine = TradingEngine(make_bot())
    points = [
        feed(engine, flat(0, 100), 0.7).equity,
        feed(engine, bar(1, 100, 110, 100, 110)).equity,
        feed(engine, bar(2, 110, 110, 90, 90)).equity,
    ]
    assert [len(p) for p in points] == [1, 1, 1]
    first, up, down = (p[0] for p in points)
    assert (first.time, first.equity, first.drawdown_pct) == (T0 + H, 10_000, 0)
    assert (up.time, up.equity, up.unrealized_pnl, up.open_positions) == (
        T0 + 2 * H,
        10_500,
        500,
        1,
    )
    assert down.equity == 9_500
    assert down.drawdown_pct == pytest.approx(1_000 / 10_500 * 100)
    assert down.cash + 50 * 90 == down.equity


def test_equity_point_after_the_last_symbol_or_when_a_later_time_shows_a_gap() -> None:
    engine = TradingEngine(make_bot(symbols=(BTC, ETH)))
    assert feed(engine, flat(0, 100, BTC)).equity == []
    assert [p.time for p in feed(engine, flat(0, 50, ETH)).equity] == [T0 + H]
    assert feed(engine, flat(1, 100, BTC)).equity == []
    # ETH skipped hour 1: BTC's hour-2 candle first settles hour 1.
    assert [p.time for p in feed(engine, flat(2, 100, BTC)).equity] == [T0 + 2 * H]
    assert [p.time for p in feed(engine, flat(2, 50, ETH)).equity] == [T0 + 3 * H]
    assert feed(engine, flat(3, 100, BTC)).equity == []
    assert [p.time for p in engine.flush().equity] == [T0 + 4 * H]
    assert engine.flush().equity == []


def test_a_redelivered_candle_is_ignored_with_a_notice() -> None:
    engine = TradingEngine(make_bot())
    feed(engine, flat(0, 100), 0.7)
    again = feed(engine, flat(0, 100), 0.7)
    assert kinds(again) == [(NoticeKind.EVENT_IGNORED, "stale_candle")]
    assert (again.orders, again.fills, again.equity) == ([], [], [])
    assert len(feed(engine, flat(1, 100)).fills) == 1


@pytest.mark.parametrize(
    ("candle", "message"),
    [
        (flat(0, 100, "SOL/USDT"), "not SOL/USDT"),
        (Candle(BTC, "15m", T0, 100, 100, 100, 100, 1), "not 15m"),
        (bar(0, 100, 99, 101, 100), "impossible prices"),
    ],
)
def test_events_the_bot_cannot_trade_raise_before_changing_state(
    candle: Candle, message: str
) -> None:
    engine = TradingEngine(make_bot())
    before = engine.snapshot()
    with pytest.raises(EventError, match=message):
        feed(engine, candle, 0.7)
    assert engine.snapshot() == before


# -- exits -------------------------------------------------------------------------------------


def open_long(engine: TradingEngine) -> None:
    """ATR(2) = 2 after two candles; the entry fills at 100: stop 98, take-profit 104."""
    feed(engine, bar(0, 100, 101, 99, 100))
    feed(engine, bar(1, 100, 101, 99, 100), 0.7)
    [fill] = feed(engine, bar(2, 100, 101, 99, 100)).fills
    assert fill.price == 100


def stops_bot(**overrides: Any) -> TradingBot:
    risk = {"stopLoss": {"atrMultiplier": 1, "atrPeriod": 2}, "takeProfit": {"riskReward": 2}}
    return make_bot(**_merge({"risk": risk}, overrides))


@pytest.mark.parametrize(
    ("candle", "reason", "price"),
    [
        (bar(3, 97, 97.5, 96, 97), OrderReason.STOP_LOSS, 97),  # gapped through: the open
        (bar(3, 99, 99.5, 97.5, 98), OrderReason.STOP_LOSS, 98),
        (bar(3, 100, 105, 97, 104), OrderReason.STOP_LOSS, 98),  # both inside: stop first
        (bar(3, 100, 104.5, 99, 104), OrderReason.TAKE_PROFIT, 104),
        (bar(3, 106, 107, 105, 106), OrderReason.TAKE_PROFIT, 106),  # gapped up: the open
    ],
)
def test_stop_loss_and_take_profit_inside_the_candle(
    candle: Candle, reason: OrderReason, price: float
) -> None:
    engine = TradingEngine(stops_bot())
    open_long(engine)
    out = feed(engine, candle)
    [order] = out.orders
    [fill] = out.fills
    assert (order.reason, fill.reason, fill.side) == (reason, reason, Side.SELL)
    assert fill.price == price
    assert fill.time == candle.open_time
    assert fill.realized_pnl == pytest.approx((price - 100) * 50)
    assert engine.summary().open_positions == 0


def test_stops_pay_slippage_and_take_profits_do_not() -> None:
    bot = stops_bot(execution={"slippageBps": 10})
    stopped, target = TradingEngine(bot), TradingEngine(bot)
    for engine in (stopped, target):
        feed(engine, bar(0, 100, 101, 99, 100))
        feed(engine, bar(1, 100, 101, 99, 100), 0.7)
        [entry] = feed(engine, bar(2, 100, 100.5, 99.5, 100)).fills
        assert entry.price == pytest.approx(100.1)  # stop 98.1, take-profit 104.1
    [stop] = feed(stopped, bar(3, 99, 99, 97, 98)).fills
    assert stop.price == pytest.approx(98.1 * 0.999)
    [take] = feed(target, bar(3, 101, 105, 101, 104)).fills
    assert take.price == pytest.approx(104.1)


def test_short_stop_sits_above_the_entry() -> None:
    engine = TradingEngine(stops_bot(strategy={"allowShort": True, "shortBelow": 0.4}))
    feed(engine, bar(0, 100, 101, 99, 100))
    [order] = feed(engine, bar(1, 100, 101, 99, 100), 0.3).orders
    assert (order.side, order.reason) == (Side.SELL, OrderReason.ENTRY_SHORT)
    feed(engine, bar(2, 100, 101, 99, 100))
    [fill] = feed(engine, bar(3, 101, 102.5, 100, 102)).fills
    assert (fill.reason, fill.side, fill.price) == (OrderReason.STOP_LOSS, Side.BUY, 102)
    assert fill.realized_pnl == pytest.approx(-100)


def test_trailing_stop_arms_at_activation_and_trails_from_the_next_candle() -> None:
    engine = TradingEngine(make_bot(risk={"trailingStop": {"activationPct": 2, "trailPct": 1}}))
    feed(engine, flat(0, 100), 0.7)
    [entry] = feed(engine, bar(1, 100, 101.9, 99, 100.5)).fills  # 1.9%: not armed
    assert entry.reason is OrderReason.ENTRY_LONG
    # Reaches 3% here; the trail (101.97) only applies from the next candle on.
    assert feed(engine, bar(2, 100.5, 103, 100, 102.5)).fills == []
    [fill] = feed(engine, bar(3, 102.5, 102.8, 101.5, 102)).fills
    assert fill.reason is OrderReason.TRAILING_STOP
    assert fill.price == pytest.approx(103 * 0.99)


def test_time_exit_orders_at_the_close_after_max_holding_and_fills_next_open() -> None:
    engine = TradingEngine(make_bot(risk={"maxHolding": "2h"}))
    feed(engine, flat(0, 100), 0.7)
    assert feed(engine, flat(1, 100), 0.55).orders == []  # held 1h
    [order] = feed(engine, flat(2, 101), 0.55).orders  # held 2h at this close
    assert (order.reason, order.created_at) == (OrderReason.TIME_EXIT, T0 + 3 * H)
    [fill] = feed(engine, flat(3, 102)).fills
    assert (fill.reason, fill.price, fill.time) == (OrderReason.TIME_EXIT, 102, T0 + 3 * H)


def test_low_confidence_predictions_are_ignored_for_exits_too() -> None:
    engine = TradingEngine(make_bot(strategy={"minConfidence": 0.6}))
    assert feed(engine, flat(0, 100), 0.9, confidence=0.5).orders == []
    feed(engine, flat(1, 100), 0.9, confidence=0.7)
    feed(engine, flat(2, 100))
    assert feed(engine, flat(3, 100), 0.1, confidence=0.5).orders == []
    [order] = feed(engine, flat(4, 100), 0.1, confidence=0.6).orders
    assert order.reason is OrderReason.EXIT_SIGNAL


def test_entries_wait_for_the_atr_when_a_stop_is_configured() -> None:
    engine = TradingEngine(stops_bot(risk={"stopLoss": {"atrPeriod": 3}}))
    out = feed(engine, bar(0, 100, 101, 99, 100), 0.7)
    assert kinds(out) == [(NoticeKind.ENTRY_REJECTED, "atr_warming_up")]
    assert out.orders == []
    feed(engine, bar(1, 100, 101, 99, 100), 0.7)
    assert len(feed(engine, bar(2, 100, 101, 99, 100), 0.7).orders) == 1


# -- sizing through the engine -----------------------------------------------------------------


def test_kelly_sizing_in_the_engine() -> None:
    bot = make_bot(risk={"sizing": {"method": "kelly", "kellyFraction": 0.5, "payoffRatio": 1}})
    [order] = feed(TradingEngine(bot), flat(0, 100), 0.7).orders
    assert order.quantity == pytest.approx(20)  # f* = 0.4, half-Kelly 20% of 10 000 at 100


def test_volatility_sizing_in_the_engine() -> None:
    bot = stops_bot(risk={"sizing": {"method": "volatility", "riskPerTradePct": 1}})
    engine = TradingEngine(bot)
    feed(engine, bar(0, 100, 101, 99, 100))
    [order] = feed(engine, bar(1, 100, 101, 99, 100), 0.7).orders
    assert order.quantity == pytest.approx(50)  # risk 100 over a stop distance of 2


def test_pending_entries_reserve_cash_across_symbols() -> None:
    bot = make_bot(symbols=(BTC, ETH), risk={"sizing": {"fractionPct": 60}})
    engine = TradingEngine(bot)
    [btc] = feed(engine, flat(0, 100, BTC), 0.7).orders
    [eth] = feed(engine, flat(0, 50, ETH), 0.7).orders
    assert btc.quantity * 100 == pytest.approx(6_000)
    assert eth.quantity * 50 == pytest.approx(4_000)  # what the BTC reservation left


def test_an_entry_gapping_beyond_buying_power_is_reduced() -> None:
    engine = TradingEngine(make_bot(risk={"sizing": {"fractionPct": 100}}))
    feed(engine, flat(0, 100), 0.7)
    out = feed(engine, flat(1, 125))
    [fill] = out.fills
    assert fill.quantity == pytest.approx(80)
    assert kinds(out) == [(NoticeKind.ENTRY_REDUCED, "buying_power")]


# -- breakers and throttles --------------------------------------------------------------------


def test_daily_loss_breaker_trips_and_clears_when_the_utc_day_rolls() -> None:
    bot = make_bot(risk={"sizing": {"fractionPct": 100}, "breakers": {"maxDailyLossPct": 5}})
    engine = TradingEngine(bot)
    feed(engine, flat(20, 100), 0.7)  # 20:00
    tripped = feed(engine, bar(21, 100, 100, 93, 93), 0.3)
    assert (NoticeKind.BREAKER_TRIPPED, "daily_loss") in kinds(tripped)
    assert [o.reason for o in tripped.orders] == [OrderReason.EXIT_SIGNAL]  # exits still run
    rejected = feed(engine, flat(22, 93), 0.7)
    assert kinds(rejected) == [(NoticeKind.ENTRY_REJECTED, "daily_loss")]
    assert engine.summary().halted
    assert feed(engine, flat(23, 93), 0.7).orders == []
    next_day = feed(engine, flat(24, 93), 0.7)
    assert kinds(next_day) == [(NoticeKind.BREAKER_CLEARED, "daily_loss")]
    assert [o.reason for o in next_day.orders] == [OrderReason.ENTRY_LONG]


def test_drawdown_breaker_trips_from_the_peak_and_clears_on_recovery() -> None:
    bot = make_bot(risk={"sizing": {"fractionPct": 100}, "breakers": {"maxDrawdownPct": 10}})
    engine = TradingEngine(bot)
    feed(engine, flat(0, 100), 0.7)
    feed(engine, bar(1, 100, 110, 100, 110))  # peak 11 000
    tripped = feed(engine, bar(2, 110, 110, 99, 99))  # 9 900: 10% down
    assert kinds(tripped) == [(NoticeKind.BREAKER_TRIPPED, "drawdown")]
    assert kinds(feed(engine, flat(3, 100))) == [(NoticeKind.BREAKER_CLEARED, "drawdown")]


def test_drawdown_breaker_holds_until_reset_rebases_the_peak() -> None:
    bot = make_bot(risk={"sizing": {"fractionPct": 100}, "breakers": {"maxDrawdownPct": 10}})
    engine = TradingEngine(bot)
    feed(engine, flat(0, 100), 0.7)
    feed(engine, bar(1, 100, 110, 100, 110))
    feed(engine, bar(2, 110, 110, 95, 95), 0.3)  # tripped; exit at the next open
    feed(engine, flat(3, 95))
    assert kinds(feed(engine, flat(4, 95), 0.7)) == [(NoticeKind.ENTRY_REJECTED, "drawdown")]
    reset = engine.control(ControlCommand(ControlAction.RESET, "reviewed"))
    assert kinds(reset) == [(NoticeKind.HALT_CLEARED, "reset")]
    assert "drawdown" in reset.notices[0].message
    assert not engine.summary().halted
    assert [o.reason for o in feed(engine, flat(5, 95), 0.7).orders] == [OrderReason.ENTRY_LONG]


def test_consecutive_losses_trip_a_cooldown_that_clears_by_time() -> None:
    bot = make_bot(risk={"breakers": {"maxConsecutiveLosses": 2, "consecutiveLossCooldown": "3h"}})
    engine = TradingEngine(bot)
    feed(engine, flat(0, 100), 0.7)
    feed(engine, flat(1, 100), 0.3)  # long at 100, exit next open
    feed(engine, flat(2, 99), 0.7)  # loss 1 at 99; long again
    feed(engine, flat(3, 99), 0.3)  # long at 99, exit next open
    streak = feed(engine, flat(4, 98), 0.7)  # loss 2 at 98 (T0+4h): cooldown to T0+7h
    assert kinds(streak) == [
        (NoticeKind.BREAKER_TRIPPED, "consecutive_losses"),
        (NoticeKind.ENTRY_REJECTED, "consecutive_losses"),
    ]
    assert feed(engine, flat(5, 98), 0.7).orders == []  # decided at T0+6h
    cleared = feed(engine, flat(6, 98), 0.7)  # decided at T0+7h
    assert kinds(cleared) == [(NoticeKind.BREAKER_CLEARED, "consecutive_losses")]
    assert [o.reason for o in cleared.orders] == [OrderReason.ENTRY_LONG]


def test_a_winning_trade_ends_the_loss_streak() -> None:
    bot = make_bot(risk={"breakers": {"maxConsecutiveLosses": 2}})
    engine = TradingEngine(bot)
    prices = [100, 100, 99, 99, 101, 101, 100, 100]  # loss, win, loss
    for i, price in enumerate(prices):
        out = feed(engine, flat(i, price), 0.7 if i % 2 == 0 else 0.3)
        assert NoticeKind.BREAKER_TRIPPED not in [n.kind for n in out.notices]
    assert engine.summary().trades == 3


def test_min_seconds_between_trades() -> None:
    engine = TradingEngine(make_bot(risk={"breakers": {"minSecondsBetweenTrades": 10_800}}))
    feed(engine, flat(0, 100), 0.7)  # entry decided at T0+1h
    feed(engine, flat(1, 100), 0.3)
    too_soon = feed(engine, flat(2, 100), 0.7)  # T0+3h: 2h later
    assert kinds(too_soon) == [(NoticeKind.ENTRY_REJECTED, "min_seconds_between_trades")]
    assert len(feed(engine, flat(3, 100), 0.7).orders) == 1  # T0+4h: 3h later


def test_max_trades_per_day_resets_with_the_utc_day() -> None:
    engine = TradingEngine(make_bot(risk={"breakers": {"maxTradesPerDay": 1}}))
    feed(engine, flat(20, 100), 0.7)
    feed(engine, flat(21, 100), 0.3)
    assert kinds(feed(engine, flat(22, 100), 0.7)) == [
        (NoticeKind.ENTRY_REJECTED, "max_trades_per_day")
    ]
    assert len(feed(engine, flat(24, 100), 0.7).orders) == 1


# -- control -----------------------------------------------------------------------------------


def test_pause_cancels_pending_entries_and_blocks_new_ones_but_exits_run() -> None:
    engine = TradingEngine(make_bot(symbols=(BTC, ETH)))
    feed(engine, flat(0, 100, BTC), 0.7)
    feed(engine, flat(0, 50, ETH))
    feed(engine, flat(1, 100, BTC))  # BTC long open
    feed(engine, flat(1, 50, ETH), 0.7)  # ETH entry pending
    paused = engine.control(ControlCommand(ControlAction.PAUSE))
    assert kinds(paused) == [
        (NoticeKind.ORDER_CANCELLED, "paused"),
        (NoticeKind.PAUSED, "paused"),
    ]
    assert engine.control(ControlCommand(ControlAction.PAUSE)).notices == []
    exit_out = feed(engine, flat(2, 100, BTC), 0.3)
    assert [o.reason for o in exit_out.orders] == [OrderReason.EXIT_SIGNAL]
    eth = feed(engine, flat(2, 50, ETH), 0.7)
    assert eth.fills == []
    assert kinds(eth) == [(NoticeKind.ENTRY_REJECTED, "paused")]
    assert engine.summary().paused
    assert kinds(engine.control(ControlCommand(ControlAction.RESUME))) == [
        (NoticeKind.RESUMED, "resumed")
    ]
    assert len(feed(engine, flat(3, 100, BTC), 0.7).orders) == 1


def test_spec_paused_starts_the_engine_paused() -> None:
    engine = TradingEngine(make_bot(paused=True))
    assert kinds(feed(engine, flat(0, 100), 0.7)) == [(NoticeKind.ENTRY_REJECTED, "paused")]


def test_kill_flattens_at_the_next_open_and_halts_until_reset() -> None:
    engine = TradingEngine(make_bot(symbols=(BTC, ETH), risk={"sizing": {"fractionPct": 30}}))
    feed(engine, flat(0, 100, BTC), 0.7)
    feed(engine, flat(0, 50, ETH))
    feed(engine, flat(1, 100, BTC))
    feed(engine, flat(1, 50, ETH), 0.7)
    killed = engine.control(ControlCommand(ControlAction.KILL, "model drift"))
    assert kinds(killed) == [
        (NoticeKind.ORDER_CANCELLED, "halted"),
        (NoticeKind.HALTED, "kill_switch"),
    ]
    [flatten] = killed.orders
    assert flatten.client_order_id == f"t:BTC/USDT:{T0 + H}:flatten"
    assert (flatten.reason, flatten.side, flatten.quantity) == (OrderReason.FLATTEN, Side.SELL, 30)
    assert engine.control(ControlCommand(ControlAction.KILL)).orders == []  # idempotent
    summary = engine.summary()
    assert summary.halted
    assert summary.halt_reason == "kill switch: model drift"
    out = feed(engine, flat(2, 101, BTC), 0.7)
    assert [(f.reason, f.price) for f in out.fills] == [(OrderReason.FLATTEN, 101)]
    assert kinds(out) == [(NoticeKind.ENTRY_REJECTED, "halted")]
    assert feed(engine, flat(2, 50, ETH), 0.7).fills == []
    engine.control(ControlCommand(ControlAction.RESET))
    assert len(feed(engine, flat(3, 101, BTC), 0.7).orders) == 1


def test_control_command_parse_names_the_valid_actions() -> None:
    assert ControlCommand.parse(" Kill ", "x") == ControlCommand(ControlAction.KILL, "x")
    with pytest.raises(ValueError, match="pause, resume, kill, reset"):
        ControlCommand.parse("stop")

"""Halts are events: every breaker trip and clear, kill and reset is recorded with its time,
cause and figures (engine notices, the ledger's ``halts``, report.json ``halts``, the status),
and the drawdown breaker has a reset policy a backtest models the same way as live trading."""

from __future__ import annotations

import pytest

from kubetrade.backtest import run_backtest
from kubetrade.report import build_report
from kubetrade.spec import TradingBot
from kubetrade.store import Checkpoint, Store
from kubetrade.trading import ControlAction, ControlCommand, NoticeKind, TradingEngine
from kubetrade.trading.outputs import HaltEvent, halt_events
from tests.test_trading_engine import T0, H, bar, feed, flat, kinds, make_bot

DAY = 24


def _drawdown_bot(**breakers: object) -> TradingBot:
    return make_bot(
        risk={"sizing": {"fractionPct": 100}, "breakers": {"maxDrawdownPct": 10, **breakers}}
    )


def _trip(engine: TradingEngine) -> None:
    """Long at 100, peak at 110, then 95: drawdown 13.6% trips; the exit fills at 95."""
    feed(engine, flat(0, 100), 0.7)
    feed(engine, bar(1, 100, 110, 100, 110))
    feed(engine, bar(2, 110, 110, 95, 95), 0.3)
    feed(engine, flat(3, 95))


def test_a_drawdown_halt_without_cooldown_lasts_until_reset_and_is_an_event() -> None:
    engine = TradingEngine(_drawdown_bot())
    feed(engine, flat(0, 100), 0.7)
    feed(engine, bar(1, 100, 110, 100, 110))
    tripped = feed(engine, bar(2, 110, 110, 95, 95), 0.3)
    [event] = halt_events(tripped.notices)
    assert (event.time, event.kind, event.cause) == (T0 + 3 * H, "breaker_tripped", "drawdown")
    assert event.figures["peak_equity"] == pytest.approx(11_000)
    assert event.figures["equity"] == pytest.approx(9_500)
    assert event.figures["drawdown_pct"] == pytest.approx(100 * 1_500 / 11_000)
    summary = engine.summary()
    assert summary.halted_since == T0 + 3 * H
    assert summary.to_status().halted_since == "2024-01-01T03:00:00Z"
    # Flat equity forever: without drawdownCooldown the halt stands, as in live trading.
    for i in range(4, 20 * DAY):
        assert NoticeKind.BREAKER_CLEARED not in [n.kind for n in feed(engine, flat(i, 95)).notices]
    reset = engine.control(ControlCommand(ControlAction.RESET, "reviewed"))
    [cleared] = halt_events(reset.notices)
    assert (cleared.kind, cleared.cause) == ("halt_cleared", "reset")
    assert cleared.figures["peak_equity"] == pytest.approx(9_500)
    assert engine.summary().halted_since is None


def test_after_the_drawdown_cooldown_the_peak_rebases_and_trading_resumes() -> None:
    engine = TradingEngine(_drawdown_bot(drawdownCooldown="2d"))
    _trip(engine)  # tripped at T0+3h
    back = 2 + 2 * DAY  # the candle closing at T0+3h+2d
    for i in range(4, back):
        out = feed(engine, flat(i, 95), 0.7)
        assert kinds(out) == [(NoticeKind.ENTRY_REJECTED, "drawdown")]
    resumed = feed(engine, flat(back, 95), 0.7)
    assert kinds(resumed) == [(NoticeKind.BREAKER_CLEARED, "drawdown")]
    [event] = halt_events(resumed.notices)
    assert "drawdownCooldown 2d over" in event.message
    assert event.figures["peak_equity"] == pytest.approx(9_500)  # the new high-water mark
    assert event.figures["drawdown_pct"] == 0
    assert len(resumed.orders) == 1  # the entry is no longer refused
    # The drawdown is now measured from 9 500: a fall to 8 550 (-10%) trips again.
    feed(engine, flat(back + 1, 95))
    again = feed(engine, bar(back + 2, 95, 95, 85.5, 85.5))
    assert kinds(again) == [(NoticeKind.BREAKER_TRIPPED, "drawdown")]


def test_a_snapshot_restores_the_halt_start_and_snapshots_from_before_it_still_load() -> None:
    bot = _drawdown_bot(drawdownCooldown="2d")
    engine = TradingEngine(bot)
    _trip(engine)
    snapshot = engine.snapshot()
    restored = TradingEngine.restore(bot, snapshot)
    assert restored.summary().halted_since == T0 + 3 * H
    old = {**snapshot, "breakers": dict(snapshot["breakers"])}
    del old["breakers"]["tripped_at"], old["kill_time"]
    legacy = TradingEngine.restore(bot, old)
    # A halt of unknown start counts from the next candle on.
    assert [n.kind for n in feed(legacy, flat(4, 95)).notices] == []
    assert legacy.summary().halted_since == T0 + 5 * H


def test_the_backtest_report_lists_every_halt_with_its_figures() -> None:
    bot = _drawdown_bot(drawdownCooldown="1d")
    engine = TradingEngine(bot)
    notices = []
    for candle in [flat(0, 100), bar(1, 100, 110, 100, 110), bar(2, 110, 110, 95, 95)]:
        notices += feed(engine, candle, 0.7).notices
    for i in range(3, 3 + 2 * DAY):
        notices += feed(engine, flat(i, 95)).notices
    events = halt_events(notices)
    candles = 3 + 2 * DAY
    report = build_report(
        bot,
        candles=candles,
        signals=candles,
        orders=0,
        fills=[],
        equity=[],
        halts=events,
    )
    assert [(h["kind"], h["cause"]) for h in report["halts"]] == [
        ("breaker_tripped", "drawdown"),
        ("breaker_cleared", "drawdown"),
    ]
    assert report["halts"][0]["time"] == "2024-01-01T03:00:00Z"
    assert report["halts"][0]["figures"]["drawdown_pct"] > 10


def test_run_backtest_collects_the_halt_events(model: str) -> None:
    from kubetrade.market import generate, to_candles
    from kubetrade.modelstore.predictor import OnnxPredictor

    bot = make_bot(
        model={"name": model, "version": "latest"},
        strategy={"longAbove": 0.5, "exitBelow": 0.5},
        risk={"sizing": {"fractionPct": 100}, "breakers": {"maxDrawdownPct": 2}},
    )
    candles = to_candles(generate(["BTC/USDT"], "1h", 1500, seed=4), "1h")
    result = run_backtest(bot, candles, OnnxPredictor.load(model))
    assert result.halts, "a 2% drawdown limit should trip on 1 500 candles"
    assert result.halts[0].kind == "breaker_tripped"
    assert set(result.halts[0].figures) >= {"equity", "peak_equity", "drawdown_pct"}


def test_the_ledger_stores_halt_events_with_the_batch(db_url: str) -> None:
    event = HaltEvent(T0, "breaker_tripped", "drawdown", "drawdown 12% >= 10%", {"equity": 1.5})
    with Store.connect(db_url) as db:
        db.migrate()
        db.write_batch("t/halts", checkpoint=Checkpoint(1, 1, {}), halts=[event])
        db.write_batch("t/halts", checkpoint=Checkpoint(2, 2, {}), halts=[event])  # re-sent
        assert db.read_halts("t/halts") == [event]


def test_engine_events_and_control_notices_are_halt_events() -> None:
    engine = TradingEngine(make_bot())
    feed(engine, flat(0, 100))
    killed = engine.control(ControlCommand(ControlAction.KILL, "drift"))
    [event] = halt_events(killed.notices)
    assert (event.kind, event.cause, event.time) == ("halted", "kill_switch", T0 + H)
    assert event.figures["equity"] == 10_000
    assert engine.summary().halted_since == T0 + H


def test_the_ledger_stores_refusals_and_gives_back_the_candles(db_url: str) -> None:
    from kubetrade.domain import Candle
    from kubetrade.trading.outputs import Refusal, refusal_counts

    refused = [
        Refusal(T0, "entry_rejected", "drawdown", "BTC/USDT", "t-1", "drawdown 4% >= 3%"),
        Refusal(T0 + H, "entry_rejected", "max_trades_per_day", "BTC/USDT", "t-2", "2 >= 2"),
    ]
    candle = Candle("BTC/USDT", "1h", T0, 100.0, 101.0, 99.0, 100.5, 3.0)
    with Store.connect(db_url) as db:
        db.migrate()
        db.write_candles("t/r", [candle])
        db.write_batch("t/r", checkpoint=Checkpoint(1, 1, {}), refusals=refused)
        db.write_batch("t/r", checkpoint=Checkpoint(2, 2, {}), refusals=refused)  # re-sent
        assert db.read_refusals("t/r") == refused
        assert db.read_candles("t/r") == [candle]
    assert refusal_counts(refused) == {"entry_rejected": {"drawdown": 1, "max_trades_per_day": 1}}

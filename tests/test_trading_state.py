"""Determinism and snapshots: the same events give the same output, and a restored engine
continues exactly where the original would have, over seeded random streams."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from kubetrade.domain import Candle, Direction, MarketEvent, Prediction
from kubetrade.spec import TradingBot, parse_bot
from kubetrade.trading import (
    ControlAction,
    ControlCommand,
    EngineOutput,
    NoticeKind,
    SnapshotError,
    TradingEngine,
)
from kubetrade.trading.orders import ENTRY_REASONS

T0 = 1_704_067_200_000
H = 3_600_000
SYMBOLS = ("BTC/USDT", "ETH/USDT")
Step = MarketEvent | ControlCommand


def busy_bot(sizing: str, name: str = "prop") -> TradingBot:
    """A bot that uses every rule: shorts, stops, trail, time exit, breakers, costs."""
    return parse_bot(
        {
            "metadata": {"name": name},
            "spec": {
                "symbols": list(SYMBOLS),
                "timeframe": "1h",
                "model": {"name": "m"},
                "strategy": {
                    "longAbove": 0.55,
                    "exitBelow": 0.45,
                    "allowShort": True,
                    "shortBelow": 0.45,
                    "exitAbove": 0.55,
                    "minConfidence": 0.2,
                },
                "risk": {
                    "sizing": {"method": sizing, "fractionPct": 30, "maxPositionPct": 40},
                    "stopLoss": {"atrMultiplier": 1.5, "atrPeriod": 5},
                    "takeProfit": {"riskReward": 2},
                    "trailingStop": {"activationPct": 1, "trailPct": 0.5},
                    "maxHolding": "6h",
                    "breakers": {
                        "maxDailyLossPct": 3,
                        "maxDrawdownPct": 8,
                        "maxConsecutiveLosses": 3,
                        "consecutiveLossCooldown": "2h",
                        "minSecondsBetweenTrades": 3600,
                        "maxTradesPerDay": 8,
                    },
                },
                "execution": {"initialCapital": 10_000, "feeRate": 0.001, "slippageBps": 5},
            },
        }
    )


def random_stream(seed: int, hours: int = 300) -> list[Step]:
    """Random-walk candles (with gaps and skipped candles), predictions and control commands."""
    rng = random.Random(seed)
    prices = {"BTC/USDT": 100.0, "ETH/USDT": 20.0}
    steps: list[Step] = []
    for hour in range(hours):
        for symbol in SYMBOLS:
            if rng.random() < 0.05:
                continue  # a missed candle: the equity point for this hour comes later
            previous = prices[symbol]
            gap = rng.gauss(0, 0.01) if rng.random() < 0.1 else 0.0
            open_ = previous * (1 + gap)
            close = open_ * (1 + rng.gauss(0, 0.012))
            high = max(open_, close) * (1 + abs(rng.gauss(0, 0.006)))
            low = min(open_, close) * (1 - abs(rng.gauss(0, 0.006)))
            prices[symbol] = close
            candle = Candle(symbol, "1h", T0 + hour * H, open_, high, low, close, 1.0)
            prediction = None
            if hour >= 3:
                p = rng.random()
                prediction = Prediction(p, Direction.UP, rng.random(), "m", "1", "h")
            steps.append(MarketEvent(candle, prediction))
        if rng.random() < 0.03:
            # Resume and reset more often than pause and kill, so the bot keeps trading.
            action = rng.choice([*ControlAction, ControlAction.RESUME, ControlAction.RESET])
            steps.append(ControlCommand(action, f"test {action.value}"))
    return steps


def run(engine: TradingEngine, steps: list[Step]) -> list[EngineOutput]:
    outputs = []
    for step in steps:
        if isinstance(step, ControlCommand):
            outputs.append(engine.control(step))
        else:
            outputs.append(engine.on_event(step))
    outputs.append(engine.flush())
    return outputs


@pytest.mark.parametrize("sizing", ["kelly", "fixed-fraction", "volatility"])
@pytest.mark.parametrize("seed", [2, 4])
def test_restore_of_a_snapshot_continues_identically(sizing: str, seed: int) -> None:
    bot = busy_bot(sizing)
    steps = random_stream(seed)
    original = TradingEngine(bot)
    expected = run(original, steps)
    fills = [f for out in expected for f in out.fills]
    assert len(fills) > 20, "the stream should trade enough to exercise the rules"
    rng = random.Random(seed)
    for cut in sorted(rng.sample(range(1, len(steps)), 4)):
        first = TradingEngine(bot)
        for step in steps[:cut]:
            if isinstance(step, ControlCommand):
                first.control(step)
            else:
                first.on_event(step)
        stored = json.loads(json.dumps(first.snapshot()))
        restored = TradingEngine.restore(bot, stored)
        assert restored.snapshot() == first.snapshot()
        assert run(restored, steps[cut:]) == expected[cut:]
        assert restored.summary() == original.summary()
        assert restored.snapshot() == original.snapshot()


def test_two_runs_over_the_same_events_are_identical() -> None:
    steps = random_stream(7)
    first = run(TradingEngine(busy_bot("kelly")), steps)
    second = run(TradingEngine(busy_bot("kelly")), steps)
    assert first == second


@pytest.mark.parametrize("seed", [5, 6])
def test_invariants_over_a_random_stream(seed: int) -> None:
    bot = busy_bot("fixed-fraction")
    engine = TradingEngine(bot)
    created: dict[str, int] = {}
    notices: set[NoticeKind] = set()
    for step in random_stream(seed):
        out = engine.control(step) if isinstance(step, ControlCommand) else engine.on_event(step)
        for order in out.orders:
            assert order.client_order_id not in created, "client order ids must be unique"
            created[order.client_order_id] = order.created_at
        for fill in out.fills:
            assert fill.time >= created[fill.client_order_id]
            if fill.reason in ENTRY_REASONS:
                assert fill.time > created[fill.client_order_id] - H  # a later candle
        notices.update(n.kind for n in out.notices)
        summary = engine.summary()
        assert summary.equity == pytest.approx(
            10_000 + summary.realized_pnl + summary.unrealized_pnl, abs=1e-6
        )
        assert summary.cash > 0
    assert NoticeKind.BREAKER_TRIPPED in notices
    assert NoticeKind.ENTRY_REJECTED in notices


def test_restore_refuses_another_bot_or_version() -> None:
    snapshot = TradingEngine(busy_bot("kelly")).snapshot()
    with pytest.raises(SnapshotError, match="bot 'prop' cannot restore bot 'other'"):
        TradingEngine.restore(busy_bot("kelly", name="other"), snapshot)
    with pytest.raises(SnapshotError, match="version 0"):
        TradingEngine.restore(busy_bot("kelly"), {**snapshot, "version": 0})


def _snapshot_with_open_position() -> dict[str, Any]:
    engine = TradingEngine(busy_bot("fixed-fraction"))
    for step in random_stream(5):
        if isinstance(step, MarketEvent):
            engine.on_event(step)
        if engine.summary().open_positions:
            return engine.snapshot()
    raise AssertionError("the stream never opened a position")


def test_restore_refuses_positions_in_symbols_the_bot_no_longer_trades() -> None:
    snapshot = _snapshot_with_open_position()
    held = snapshot["positions"][0]["symbol"]
    remaining = [s for s in SYMBOLS if s != held]
    spec = json.loads(busy_bot("fixed-fraction").model_dump_json(by_alias=True))
    spec["spec"]["symbols"] = remaining
    narrowed = parse_bot({"metadata": {"name": "prop"}, "spec": spec["spec"]})
    with pytest.raises(SnapshotError, match=f"{held}.*flatten them"):
        TradingEngine.restore(narrowed, snapshot)


def test_restore_names_the_malformed_part() -> None:
    snapshot = _snapshot_with_open_position()
    broken = json.loads(json.dumps(snapshot))
    del broken["positions"][0]["entry_price"]
    with pytest.raises(SnapshotError, match="snapshot position: KeyError: 'entry_price'"):
        TradingEngine.restore(busy_bot("fixed-fraction"), broken)
    with pytest.raises(SnapshotError, match="missing 'breakers'"):
        TradingEngine.restore(
            busy_bot("fixed-fraction"), {k: v for k, v in snapshot.items() if k != "breakers"}
        )


def test_a_changed_atr_period_restarts_the_atr_warm_up() -> None:
    bot = busy_bot("fixed-fraction")
    engine = TradingEngine(bot)
    for hour in range(6):  # ATR(5) is warm after these
        candle = Candle("BTC/USDT", "1h", T0 + hour * H, 100, 101, 99, 100, 1.0)
        engine.on_event(MarketEvent(candle, None))
    document = json.loads(bot.model_dump_json(by_alias=True))
    document["spec"]["risk"]["stopLoss"]["atrPeriod"] = 7
    longer = parse_bot({"metadata": {"name": "prop"}, "spec": document["spec"]})
    signal = Prediction(0.9, Direction.UP, 1, "m", "1", "h")
    candle = Candle("BTC/USDT", "1h", T0 + 6 * H, 100, 101, 99, 100, 1.0)
    same = TradingEngine.restore(bot, engine.snapshot()).on_event(MarketEvent(candle, signal))
    assert [o.symbol for o in same.orders] == ["BTC/USDT"]
    restored = TradingEngine.restore(longer, engine.snapshot())
    out = restored.on_event(MarketEvent(candle, signal))
    assert [n.code for n in out.notices] == ["atr_warming_up"]
    assert "1 of 7 candles" in out.notices[0].message

"""A halt's cause travels typed: engine -> executor status message -> operator status and the
Halted condition's reason, and the operator's kill is told from anyone else's by its cause."""

from __future__ import annotations

from kubetrade.domain import HaltCause
from kubetrade.messages import ControlMessage, StatusMessage, decode, encode
from kubetrade.operator.conditions import HALT_REASONS
from kubetrade.operator.observations import BotObservations
from kubetrade.operator.status import KILL_REASON, BotState, compute_status, control_commands
from kubetrade.runtime import WorkerStatus
from kubetrade.spec import Phase
from kubetrade.trading import ControlCommand, TradingEngine
from tests.test_trading_engine import bar, feed, flat, make_bot

NOW, WALL, TIMEOUT = 1000.0, 1_700_000_000.0, 10.0


def _heard(engine: TradingEngine) -> BotObservations:
    """The operator's view after the executor of ``engine`` published one status, on the wire."""
    summary = engine.summary()
    status = WorkerStatus("executor", "bots/alpha", state="halted" if summary.halted else "running")
    status.trading = {
        **summary.to_status().model_dump(by_alias=True, exclude_none=True, exclude={"halt_causes"}),
        "halted": summary.halted,
        "paused": summary.paused,
    }
    status.halt_causes = list(summary.halt_causes)
    seen = BotObservations()
    for component, model in (("feed", None), ("inference", "btc-xgb:2")):
        seen.record(
            StatusMessage(
                component=component, bot="bots/alpha", state="running", time=0, model=model
            ),
            NOW - 1,
        )
    seen.record(decode(StatusMessage, encode(status.to_message())), NOW - 1)
    return seen


def _state(kill_switch: str | None = None) -> BotState:
    return BotState("bots/alpha", 1, 1, "btc-xgb:2", paused=False, kill_switch=kill_switch)


def _halted(seen: BotObservations, kill_switch: str | None = None) -> tuple[str, str]:
    status = compute_status(
        _state(kill_switch), seen, None, now=NOW, wall=WALL, heartbeat_timeout=TIMEOUT
    )
    halted = next(c for c in status.conditions if c.type == "Halted")
    return halted.status, halted.reason


def _drawn_down() -> TradingEngine:
    bot = make_bot(risk={"sizing": {"fractionPct": 100}, "breakers": {"maxDrawdownPct": 10}})
    engine = TradingEngine(bot)
    feed(engine, flat(0, 100), 0.7)
    feed(engine, bar(1, 100, 110, 100, 110))  # peak 11 000
    feed(engine, bar(2, 110, 110, 99, 99))  # 9 900: 10% below the peak
    return engine


def test_a_tripped_breaker_reaches_status_trading_and_the_halted_reason() -> None:
    engine = _drawn_down()
    assert engine.summary().halt_causes == (HaltCause.DRAWDOWN,)

    seen = _heard(engine)
    status = compute_status(_state(), seen, None, now=NOW, wall=WALL, heartbeat_timeout=TIMEOUT)

    assert status.phase is Phase.HALTED
    assert status.trading is not None and status.trading.halt_causes == [HaltCause.DRAWDOWN]
    assert _halted(seen) == ("True", "Drawdown")


def test_a_kill_from_the_control_subject_is_manual_and_the_operator_leaves_it_alone() -> None:
    engine = TradingEngine(make_bot())
    wire = decode(ControlMessage, encode(ControlMessage(action="kill", reason="kill switch: x")))
    engine.control(ControlCommand.parse(wire.action, wire.reason, wire.cause))
    seen = _heard(engine)

    assert seen.executor is not None and seen.executor.halt_causes == (HaltCause.MANUAL,)
    assert _halted(seen) == ("True", "ManualKill")
    assert control_commands(_state(), seen.executor) == []  # not the operator's to reset


def test_the_operators_kill_is_recognised_by_its_cause_and_reset_when_the_annotation_goes() -> None:
    engine = _drawn_down()
    state = _state(kill_switch="flatten")
    [kill] = control_commands(state, _heard(engine).executor)
    wire = decode(ControlMessage, encode(kill))
    engine.control(ControlCommand.parse(wire.action, wire.reason, wire.cause))
    seen = _heard(engine)

    # The kill comes first, then the breaker that had tripped before it.
    assert engine.summary().halt_causes == (HaltCause.KILL_SWITCH, HaltCause.DRAWDOWN)
    assert _halted(seen) == ("True", "KillSwitch")
    assert control_commands(state, seen.executor) == []  # confirmed: nothing more to send
    [reset] = control_commands(_state(), seen.executor)
    assert reset.action == "reset"
    engine.control(ControlCommand.parse(reset.action, reset.reason))
    assert engine.summary().halt_causes == ()
    assert _halted(_heard(engine)) == ("False", "NotHalted")
    assert KILL_REASON in kill.reason


def test_every_cause_has_a_condition_reason() -> None:
    assert set(HALT_REASONS) == set(HaltCause)


def test_a_snapshot_keeps_the_cause_and_an_older_one_counts_its_kill_as_manual() -> None:
    engine = TradingEngine(make_bot())
    engine.control(ControlCommand.parse("kill", "drill", HaltCause.KILL_SWITCH))
    snapshot = engine.snapshot()
    restored = TradingEngine.restore(make_bot(), snapshot)
    assert restored.summary().halt_causes == (HaltCause.KILL_SWITCH,)

    older = {k: v for k, v in snapshot.items() if k != "kill_cause"}
    assert TradingEngine.restore(make_bot(), older).summary().halt_causes == (HaltCause.MANUAL,)


def test_a_status_message_without_causes_still_decodes() -> None:
    """Version 1 messages from an executor that predates the field: no causes, no failure."""
    raw = b'{"v":1,"component":"executor","bot":"bots/alpha","state":"halted","time":0}'
    assert decode(StatusMessage, raw).halt_causes == []

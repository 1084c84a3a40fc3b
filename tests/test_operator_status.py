"""The operator's decisions without a cluster: status, Events, control commands, drift."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import pytest

from kubetrade.domain import HaltCause
from kubetrade.messages import StatusMessage
from kubetrade.operator.conditions import merge, timestamp
from kubetrade.operator.drift import differences
from kubetrade.operator.observations import BotObservations
from kubetrade.operator.status import (
    KILL_REASON,
    BotState,
    compute_status,
    control_commands,
    status_events,
)
from kubetrade.render import CONFIG_HASH_ANNOTATION, Platform, render
from kubetrade.spec import Condition, Phase, TradingBotStatus, parse_bot

TIMEOUT = 10.0
NOW = 1000.0
WALL = 1_700_000_000.0
TRADING = {
    "equity": 10100.0,
    "realizedPnl": 90.0,
    "unrealizedPnl": 10.0,
    "openPositions": 1,
    "trades": 4,
    "lastSignalAt": "2024-01-01T00:00:00Z",
    "cash": 9000.0,
    "halted": False,
    "paused": False,
}


def state(**changes: Any) -> BotState:
    base: dict[str, Any] = {
        "key": "bots/alpha",
        "generation": 3,
        "applied_generation": 3,
        "model": "btc-xgb:2",
        "paused": False,
        "kill_switch": None,
    }
    return BotState(**{**base, **changes})


def heard(*messages: tuple[Any, ...]) -> BotObservations:
    """Observations from (component, state, message, trading, received-at[, halt causes])."""
    seen = BotObservations()
    for component, worker_state, message, trading, at, *causes in messages:
        seen.record(
            StatusMessage(
                component=component,
                bot="bots/alpha",
                state=worker_state,
                message=message,
                time=0,
                trading=trading,
                halt_causes=causes[0] if causes else [],
                # What the bridge reports: the model it serves, typed beside the text.
                model=message.removeprefix("serving ") if message.startswith("serving ") else None,
            ),
            at,
        )
    return seen


def running(
    model: str = "btc-xgb:2",
    trading: dict[str, Any] | None = None,
    causes: Sequence[HaltCause] = (),
) -> BotObservations:
    return heard(
        ("feed", "running", "", None, NOW - 1),
        ("inference", "running", f"serving {model}", None, NOW - 1),
        ("executor", "running", "", trading or dict(TRADING), NOW - 1, list(causes)),
    )


def status_of(
    bot: BotState, seen: BotObservations, previous: TradingBotStatus | None = None
) -> TradingBotStatus:
    return compute_status(bot, seen, previous, now=NOW, wall=WALL, heartbeat_timeout=TIMEOUT)


def conditions(status: TradingBotStatus) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in status.conditions}


# --- status -----------------------------------------------------------------------------


def test_a_bot_nobody_has_heard_from_is_pending() -> None:
    status = status_of(state(), BotObservations())

    assert status.phase is Phase.PENDING
    assert conditions(status) == {
        "Ready": ("False", "ComponentsNotReady"),
        "FeedReady": ("False", "AwaitingHeartbeat"),
        "ModelReady": ("False", "AwaitingHeartbeat"),
        "ExecutorReady": ("False", "AwaitingHeartbeat"),
        "Halted": ("False", "NotHalted"),
    }
    assert status.observed_generation == 3
    assert status.trading is None
    assert status.model is not None and status.model.state == "Pending"


def test_all_workers_running_make_the_bot_ready_with_its_figures() -> None:
    status = status_of(state(), running())

    assert status.phase is Phase.RUNNING
    assert {t: s for t, (s, _) in conditions(status).items()} == {
        "Ready": "True",
        "FeedReady": "True",
        "ModelReady": "True",
        "ExecutorReady": "True",
        "Halted": "False",
    }
    assert all(c.observed_generation == 3 for c in status.conditions)
    assert all(c.last_transition_time == timestamp(WALL) for c in status.conditions)
    assert status.trading is not None
    assert (status.trading.equity, status.trading.open_positions) == (10100.0, 1)
    assert status.model is not None
    assert (status.model.active, status.model.transition) == ("btc-xgb:2", "UpToDate")


def test_live_fees_left_out_of_equity_are_shown_beside_it() -> None:
    trading = {**TRADING, "reconciled": True, "unconvertedFees": {"BNB": 0.0123}}
    status = status_of(state(), running(trading=trading))

    assert status.trading is not None
    assert status.trading.unconverted_fees == {"BNB": 0.0123}
    dumped = status.model_dump(by_alias=True, exclude_none=True)
    assert dumped["trading"]["unconvertedFees"] == {"BNB": 0.0123}


def test_a_rule_bot_without_a_model_is_ready_once_inference_computes_its_signals() -> None:
    rule = state(model=None)
    seen = heard(
        ("feed", "running", "", None, NOW - 1),
        ("inference", "running", "computing sma-crossover signals (no model)", None, NOW - 1),
        ("executor", "running", "", dict(TRADING), NOW - 1),
    )

    status = status_of(rule, seen)

    assert status.phase is Phase.RUNNING
    assert conditions(status)["ModelReady"] == ("True", "NoModel")
    assert conditions(status)["Ready"] == ("True", "AllComponentsReady")
    assert status.model is None  # no rollout to report
    waiting = status_of(rule, heard(("feed", "running", "", None, NOW - 1)))
    assert conditions(waiting)["ModelReady"] == ("False", "AwaitingHeartbeat")
    failed = heard(("inference", "failed", "bridge stopped: boom", None, NOW - 1))
    assert conditions(status_of(rule, failed))["ModelReady"] == ("False", "InferenceFailed")


def test_observed_generation_is_the_applied_one_not_the_latest() -> None:
    status = status_of(state(generation=4, applied_generation=3), running())

    assert status.observed_generation == 3
    assert {c.observed_generation for c in status.conditions} == {3}


def test_transition_times_move_only_when_the_status_does() -> None:
    first = status_of(state(), running())
    later = compute_status(
        state(), running(), first, now=NOW, wall=WALL + 60, heartbeat_timeout=TIMEOUT
    )
    assert [c.last_transition_time for c in later.conditions] == [
        c.last_transition_time for c in first.conditions
    ]

    silent = heard(
        ("feed", "running", "", None, NOW - 1),
        ("inference", "running", "serving btc-xgb:2", None, NOW - 1),
        ("executor", "running", "", dict(TRADING), NOW - TIMEOUT - 1),
    )
    lost = compute_status(
        state(), silent, first, now=NOW, wall=WALL + 60, heartbeat_timeout=TIMEOUT
    )
    moved = {c.type for c in lost.conditions if c.last_transition_time == timestamp(WALL + 60)}
    assert moved == {"Ready", "ExecutorReady"}
    assert conditions(lost)["ExecutorReady"] == ("False", "HeartbeatLost")
    assert lost.phase is Phase.DEGRADED


def test_a_stale_heartbeat_message_does_not_change_while_it_stays_stale() -> None:
    silent = heard(("executor", "running", "", dict(TRADING), NOW - 20))
    one = status_of(state(), silent)
    other = compute_status(
        state(), silent, None, now=NOW + 30, wall=WALL, heartbeat_timeout=TIMEOUT
    )

    assert one.model_dump() == other.model_dump()


def test_merge_keeps_a_transition_time_until_the_status_changes() -> None:
    old = [Condition(type="Ready", status="True", reason="A", last_transition_time="t0")]
    same = [Condition(type="Ready", status="True", reason="B")]
    flipped = [Condition(type="Ready", status="False", reason="B")]

    assert merge(old, same, "t1")[0].last_transition_time == "t0"
    assert merge(old, flipped, "t1")[0].last_transition_time == "t1"


def test_pause_shows_as_phase_paused() -> None:
    assert status_of(state(paused=True), running()).phase is Phase.PAUSED


def test_a_tripped_breaker_halts_with_its_reason() -> None:
    tripped = {**TRADING, "halted": True, "haltReason": "max drawdown 15% reached"}
    status = status_of(state(), running(trading=tripped, causes=[HaltCause.DRAWDOWN]))

    assert status.phase is Phase.HALTED
    assert conditions(status)["Halted"] == ("True", "Drawdown")
    assert conditions(status)["Ready"] == ("False", "Halted")
    assert status.trading is not None and status.trading.halt_reason == tripped["haltReason"]
    assert status.trading.halt_causes == [HaltCause.DRAWDOWN]


def test_the_kill_switch_annotation_halts_at_once() -> None:
    status = status_of(state(kill_switch="flatten"), running())

    assert status.phase is Phase.HALTED
    halted = next(c for c in status.conditions if c.type == "Halted")
    assert (halted.status, halted.reason) == ("True", "KillSwitch")
    assert "waiting for the executor" in halted.message


def test_a_failed_worker_fails_the_bot() -> None:
    seen = running()
    seen.record(
        StatusMessage(component="feed", bot="bots/alpha", state="failed", message="boom", time=0),
        NOW,
    )
    status = status_of(state(), seen)

    assert status.phase is Phase.FAILED
    assert conditions(status)["FeedReady"] == ("False", "Failed")


def test_a_reconcile_error_fails_the_bot_naming_it() -> None:
    status = status_of(state(reconcile_error="name too long"), running())

    assert status.phase is Phase.FAILED
    ready = next(c for c in status.conditions if c.type == "Ready")
    assert (ready.reason, ready.message) == ("ReconcileFailed", "name too long")


# --- model rollout ----------------------------------------------------------------------


def test_while_the_new_model_loads_the_bot_trades_on_the_old_one() -> None:
    status = status_of(state(model="btc-xgb:3"), running("btc-xgb:2"))

    assert status.phase is Phase.RUNNING
    assert conditions(status)["ModelReady"] == ("False", "RolloutInProgress")
    assert conditions(status)["Ready"][0] == "True"
    assert status.model is not None
    assert (status.model.active, status.model.state, status.model.transition) == (
        "btc-xgb:2",
        "Loading",
        "InProgress",
    )


def test_a_new_model_that_does_not_match_blocks_the_rollout_but_trading_goes_on() -> None:
    seen = running("btc-xgb:2")
    seen.record(
        StatusMessage(
            component="inference",
            bot="bots/alpha",
            state="degraded",
            message="feature mismatch: model wants [a, b]",
            time=0,
        ),
        NOW,
    )
    status = status_of(state(model="btc-xgb:3"), seen)

    assert status.phase is Phase.DEGRADED
    assert conditions(status)["ModelReady"] == ("False", "FeatureMismatch")
    assert conditions(status)["Halted"][0] == "False"
    assert status.model is not None
    assert status.model.transition == "BlockedByFailedLoad"
    assert status.model.last_failure is not None
    assert status.model.last_failure.message == "feature mismatch: model wants [a, b]"


def test_a_model_that_cannot_serve_with_no_other_halts_the_bot() -> None:
    seen = heard(
        ("feed", "running", "", None, NOW),
        ("inference", "degraded", "feature mismatch", None, NOW),
        ("executor", "running", "", dict(TRADING), NOW),
    )
    status = status_of(state(), seen)

    assert status.phase is Phase.HALTED
    assert conditions(status)["Halted"] == ("True", "FeatureMismatch")
    assert status.model is not None and status.model.active is None


def test_latest_accepts_any_version_of_the_model() -> None:
    status = status_of(state(model="btc-xgb:latest"), running("btc-xgb:7"))

    assert conditions(status)["ModelReady"] == ("True", "ModelLoaded")


def test_a_model_failure_keeps_its_first_time_while_it_lasts() -> None:
    seen = heard(("inference", "degraded", "mismatch", None, NOW))
    first = status_of(state(), seen)
    later = compute_status(state(), seen, first, now=NOW, wall=WALL + 30, heartbeat_timeout=TIMEOUT)

    assert first.model is not None and later.model is not None
    assert first.model.last_failure == later.model.last_failure


# --- events -----------------------------------------------------------------------------


def test_events_on_phase_changes_halts_and_model_outcomes() -> None:
    pending = status_of(state(), BotObservations())
    ready = status_of(state(), running(), pending)
    halted = status_of(state(kill_switch="flatten"), running(), ready)
    cleared = status_of(state(), running(), halted)

    assert [(e.type, e.reason) for e in status_events(None, pending)] == [("Normal", "Pending")]
    assert [(e.type, e.reason) for e in status_events(pending, ready)] == [
        ("Normal", "Running"),
        ("Normal", "ModelLoaded"),
    ]
    assert [(e.type, e.reason) for e in status_events(ready, halted)] == [
        ("Warning", "Halted"),
        ("Warning", "KillSwitch"),
    ]
    assert [(e.type, e.reason) for e in status_events(halted, cleared)] == [
        ("Normal", "Running"),
        ("Normal", "HaltCleared"),
    ]
    assert status_events(ready, status_of(state(), running(), ready)) == []


# --- control ----------------------------------------------------------------------------


def executor(causes: Sequence[HaltCause] = (), **trading: Any) -> Any:
    return running(trading={**TRADING, **trading}, causes=causes).executor


def test_the_executor_is_paused_and_resumed_to_match_the_spec() -> None:
    assert [c.action for c in control_commands(state(paused=True), executor())] == ["pause"]
    assert [c.action for c in control_commands(state(), executor(paused=True))] == ["resume"]
    assert control_commands(state(paused=True), executor(paused=True)) == []


def test_the_kill_switch_is_sent_until_the_executor_confirms_and_reset_when_removed() -> None:
    ours: dict[str, Any] = {"halted": True, "haltReason": "halted"}
    mine = [HaltCause.KILL_SWITCH]

    [kill] = control_commands(state(kill_switch="flatten"), executor())
    assert (kill.action, kill.reason, kill.cause) == ("kill", KILL_REASON, HaltCause.KILL_SWITCH)
    assert control_commands(state(kill_switch="flatten"), executor(mine, **ours)) == []
    assert [c.action for c in control_commands(state(), executor(mine, **ours))] == ["reset"]


def test_a_kill_engaged_by_someone_else_is_left_alone() -> None:
    # Even with the operator's own words in its reason: the cause, not the text, decides.
    theirs: dict[str, Any] = {"halted": True, "haltReason": f"kill switch: {KILL_REASON}"}

    assert control_commands(state(), executor([HaltCause.MANUAL], **theirs)) == []


def test_an_unknown_kill_switch_value_sends_nothing() -> None:
    assert control_commands(state(kill_switch="yes"), executor()) == []


def test_no_command_without_figures_from_the_executor() -> None:
    assert control_commands(state(paused=True), None) == []


# --- drift and the config hash ----------------------------------------------------------


def make_bot(**spec: Any) -> Any:
    return parse_bot(
        {
            "apiVersion": "kubetrade.io/v1alpha1",
            "kind": "TradingBot",
            "metadata": {"name": "alpha", "namespace": "bots", "uid": "u-1"},
            "spec": {"symbols": ["BTC/USDT"], "model": {"name": "btc-xgb"}, **spec},
        }
    )


def hashes(bot: Any) -> list[str]:
    """Config hashes of feed, inference and executor, in that order."""
    return [
        o["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH_ANNOTATION]
        for o in render(bot, Platform())
        if o["kind"] == "Deployment"
    ]


@pytest.mark.parametrize("change", [{"paused": True}, {"onDelete": "flatten"}])
def test_pausing_or_the_delete_policy_restarts_no_pod(change: dict[str, Any]) -> None:
    assert hashes(make_bot(**change)) == hashes(make_bot())


def test_a_new_model_restarts_only_inference() -> None:
    before = hashes(make_bot())
    after = hashes(make_bot(model={"name": "btc-xgb", "version": "2"}))

    assert [b != a for b, a in zip(before, after, strict=True)] == [False, True, False]


def test_the_rendered_objects_are_no_drift_of_themselves_with_server_defaults() -> None:
    [deployment] = [o for o in render(make_bot(), Platform()) if o["kind"] == "Deployment"][:1]
    live = copy.deepcopy(deployment)
    live["metadata"]["resourceVersion"] = "42"
    live["spec"]["progressDeadlineSeconds"] = 600
    live["spec"]["template"]["spec"]["containers"][0]["terminationMessagePath"] = "/dev/log"
    live["status"] = {"replicas": 1}

    assert differences(deployment, live) == []


def test_drift_names_the_changed_and_missing_fields() -> None:
    [deployment] = [o for o in render(make_bot(), Platform()) if o["kind"] == "Deployment"][:1]
    live = copy.deepcopy(deployment)
    live["spec"]["replicas"] = 0
    del live["spec"]["template"]["spec"]["containers"][0]["env"][0]
    live["spec"]["template"]["metadata"]["annotations"].pop(CONFIG_HASH_ANNOTATION)

    assert differences(deployment, live) == [
        "spec.replicas",
        f"spec.template.metadata.annotations.{CONFIG_HASH_ANNOTATION}",
        "spec.template.spec.containers[0].env",
    ]


def test_a_live_executor_not_reconciled_says_why_in_the_reconciled_condition() -> None:
    seen = heard(
        ("feed", "running", "", None, NOW - 1),
        ("inference", "running", "serving btc-xgb:2", None, NOW - 1),
        (
            "executor",
            "degraded",
            "Reconciled=False: unknown open order 7 (client id by-hand)",
            {**TRADING, "reconciled": False},
            NOW - 1,
        ),
    )
    status = status_of(state(), seen)

    reconciled = next(c for c in status.conditions if c.type == "Reconciled")
    assert (reconciled.status, reconciled.reason) == ("False", "Unexplained")
    assert reconciled.message == "unknown open order 7 (client id by-hand)"
    assert conditions(status)["Ready"][0] == "False"
    armed = status_of(state(), running(trading={**TRADING, "reconciled": True}))
    assert conditions(armed)["Reconciled"] == ("True", "Reconciled")
    assert "Reconciled" not in conditions(status_of(state(), running()))  # paper

"""A bot's status from what the operator knows: pure functions, no I/O and no clock.

Inputs are the bot as last reconciled (:class:`BotState`) and the heartbeats its workers sent
(:class:`~kubetrade.operator.observations.BotObservations`); outputs are the ``status`` to
write, the Events a change deserves and the control commands that bring the executor in line
with the spec (pause) and the kill-switch annotation. The status loop calls these every tick.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from kubetrade.domain import HaltCause
from kubetrade.messages import ControlMessage
from kubetrade.operator.conditions import (
    EXECUTOR_READY,
    FEED_READY,
    HALT_REASONS,
    HALTED,
    MODEL_READY,
    READY,
    RECONCILED,
    condition,
    find,
    merge,
    timestamp,
)
from kubetrade.operator.observations import BotObservations, Heartbeat
from kubetrade.spec import (
    API_GROUP,
    Condition,
    ModelFailure,
    ModelStatus,
    Phase,
    TradingBotStatus,
    TradingSummary,
)

KILL_SWITCH_ANNOTATION = f"{API_GROUP}/kill-switch"
KILL_SWITCH_FLATTEN = "flatten"
# The reason the operator gives the executor with its kill (shown in the executor's notices);
# the kill's cause, HaltCause.KILL_SWITCH, is how the operator recognises a kill of its own.
KILL_REASON = f"annotation {KILL_SWITCH_ANNOTATION}={KILL_SWITCH_FLATTEN}"
PAUSE_REASON = "spec.paused"

_TRADING_FIELDS = {f.alias or name for name, f in TradingSummary.model_fields.items()}
_WARNING_PHASES = frozenset({Phase.HALTED, Phase.DEGRADED, Phase.FAILED})
_MODEL_FAILURES = frozenset({"FeatureMismatch", "InferenceFailed"})


@dataclass(frozen=True, slots=True)
class BotState:
    """What the operator knows of a bot apart from its heartbeats."""

    key: str
    generation: int | None
    applied_generation: int | None
    model: str | None
    """``name:version`` the spec asks for; None when the bot's strategy uses no model."""
    paused: bool
    kill_switch: str | None
    """Value of the kill-switch annotation, None when absent."""
    reconcile_error: str | None = None


@dataclass(frozen=True, slots=True)
class EventSpec:
    """A Kubernetes Event to post about a bot."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class _Model:
    ready: Condition
    status: ModelStatus | None
    active: str | None
    halts: bool


def _no_model(seen: BotObservations, now: float, timeout: float, generation: int | None) -> _Model:
    """ModelReady of a bot whose strategy uses no model: inference computes the rule's signals,
    so the condition follows inference's heartbeat and there is no rollout to report."""
    beat = seen.inference
    if beat is not None and beat.age(now) <= timeout and beat.state == "running":
        return _Model(
            condition(MODEL_READY, True, "NoModel", beat.message, generation),
            None,
            "no model",
            halts=False,
        )
    if beat is None:
        reason, message = "AwaitingHeartbeat", "no status from inference yet"
    elif beat.age(now) > timeout:
        reason, message = "HeartbeatLost", f"no status from inference within {timeout:g}s"
    else:
        reason, message = "InferenceFailed", f"inference is {beat.state}: {beat.message}"
    return _Model(
        condition(MODEL_READY, False, reason, message, generation), None, None, halts=False
    )


def model_matches(target: str, served: str) -> bool:
    """True when ``served`` is what ``target`` asks for (``:latest`` takes any version)."""
    name, _, version = target.rpartition(":")
    return served == target or (version == "latest" and served.rpartition(":")[0] == name)


def _component(
    name: str, beat: Heartbeat | None, now: float, timeout: float, generation: int | None
) -> Condition:
    """Readiness of the feed or the executor from its heartbeat."""
    type_ = FEED_READY if name == "feed" else EXECUTOR_READY
    if beat is None:
        return condition(
            type_, False, "AwaitingHeartbeat", f"no status from the {name} yet", generation
        )
    if beat.age(now) > timeout:
        # The timeout, not the age, so the message (and the status) stays put while it lasts.
        message = f"no status from the {name} within {timeout:g}s (last state {beat.state})"
        return condition(type_, False, "HeartbeatLost", message, generation)
    if beat.state in ("running", "halted"):
        return condition(type_, True, "Running", beat.message, generation)
    if beat.state == "finished":
        return condition(
            type_, True, "Finished", beat.message or f"the {name} finished", generation
        )
    return condition(type_, False, beat.state.title(), beat.message, generation)


def _model(
    target: str,
    seen: BotObservations,
    now: float,
    timeout: float,
    generation: int | None,
    previous: ModelStatus | None,
    wall: float,
) -> _Model:
    """ModelReady and status.model, after KServe's states: the target serves, loads or fails."""
    serving = seen.fresh_serving(now, timeout)
    current = [m for m in serving if model_matches(target, m)]
    others = [m for m in serving if not model_matches(target, m)]
    last_failure = previous.last_failure if previous and previous.target == target else None
    if current:
        return _Model(
            condition(MODEL_READY, True, "ModelLoaded", f"serving {current[0]}", generation),
            ModelStatus(
                target=target,
                active=current[0],
                state="Loaded",
                transition="UpToDate",
                last_failure=last_failure,
            ),
            current[0],
            halts=False,
        )
    problem = seen.inference_problem
    if problem is not None and problem.age(now) <= timeout:
        reason = "FeatureMismatch" if problem.state == "degraded" else "InferenceFailed"
        still = (
            f"signals still come from {others[0]}"
            if others
            else "the bot is halted until a model that matches loads"
        )
        same = last_failure is not None and last_failure.reason == reason
        failure = ModelFailure(
            reason=reason,
            message=problem.message,
            time=last_failure.time if same and last_failure else timestamp(wall),
        )
        return _Model(
            condition(
                MODEL_READY,
                False,
                reason,
                f"{target} cannot serve: {problem.message}; {still}",
                generation,
            ),
            ModelStatus(
                target=target,
                active=others[0] if others else None,
                state="FailedToLoad",
                transition="BlockedByFailedLoad",
                last_failure=failure,
            ),
            others[0] if others else None,
            halts=not others,
        )
    if others:
        return _Model(
            condition(
                MODEL_READY,
                False,
                "RolloutInProgress",
                f"loading {target}; signals still come from {others[0]}",
                generation,
            ),
            ModelStatus(
                target=target,
                active=others[0],
                state="Loading",
                transition="InProgress",
                last_failure=last_failure,
            ),
            others[0],
            halts=False,
        )
    beat = seen.inference
    if beat is not None and beat.age(now) <= timeout:
        reason, message = "ModelLoading", f"inference is {beat.state}: {target} is loading"
    elif beat is not None:
        reason = "HeartbeatLost"
        message = f"no status from inference within {timeout:g}s"
    else:
        reason, message = "AwaitingHeartbeat", f"no status from inference yet ({target})"
    return _Model(
        condition(MODEL_READY, False, reason, message, generation),
        ModelStatus(
            target=target,
            state="Loading" if reason == "ModelLoading" else "Pending",
            transition="InProgress",
            last_failure=last_failure,
        ),
        None,
        halts=False,
    )


def trading_summary(
    trading: dict[str, Any] | None, halt_causes: tuple[HaltCause, ...] = ()
) -> TradingSummary | None:
    """``status.trading`` from the executor's figures (unknown keys are left out) and the halt
    causes its status message carries."""
    if trading is None:
        return None
    figures = {k: v for k, v in trading.items() if k in _TRADING_FIELDS and k != "haltCauses"}
    return TradingSummary.model_validate({**figures, "haltCauses": list(halt_causes) or None})


def _reconciled(executor: Heartbeat | None, gen: int | None) -> list[Condition]:
    """A live executor's ``Reconciled`` condition (none for a paper bot): False with the
    reason while its journal does not agree with the exchange."""
    trading = (executor.trading or {}) if executor else {}
    if executor is None or "reconciled" not in trading:
        return []
    if trading["reconciled"]:
        message = "journal, open orders and balances match the exchange"
        return [condition(RECONCILED, True, "Reconciled", message, gen)]
    message = executor.message.removeprefix("Reconciled=False: ")
    return [condition(RECONCILED, False, "Unexplained", message, gen)]


def _halted(state: BotState, executor: Heartbeat | None, model: _Model) -> Condition:
    trading = (executor.trading or {}) if executor else {}
    halted = bool(trading.get("halted"))
    halt_reason = trading.get("haltReason") if halted else None
    causes = executor.halt_causes if executor and halted else ()
    gen = state.applied_generation
    if state.kill_switch == KILL_SWITCH_FLATTEN:
        confirmed = f"; executor: {halt_reason}" if halt_reason else "; waiting for the executor"
        message = (
            f"kill switch engaged by {KILL_REASON}: open positions are flattened and entries "
            f"halted until the annotation is removed{confirmed}"
        )
        return condition(HALTED, True, "KillSwitch", message, gen)
    if causes:
        # The first cause names the condition (the kill first, then breakers as they tripped).
        return condition(HALTED, True, HALT_REASONS[causes[0]], str(halt_reason or ""), gen)
    if halted:
        # An executor from before halt causes were sent: halted, for a reason it only wrote.
        return condition(HALTED, True, "ExecutorHalted", str(halt_reason or ""), gen)
    if model.halts:
        return condition(HALTED, True, model.ready.reason, model.ready.message, gen)
    return condition(HALTED, False, "NotHalted", "", gen)


def compute_status(
    state: BotState,
    seen: BotObservations,
    previous: TradingBotStatus | None,
    *,
    now: float,
    wall: float,
    heartbeat_timeout: float,
) -> TradingBotStatus:
    """The status to write: phase, conditions, trading figures and model rollout.

    ``now`` is the monotonic clock the heartbeats were stamped with; ``wall`` is epoch seconds
    for transition times.
    """
    gen = state.applied_generation
    feed = _component("feed", seen.feed, now, heartbeat_timeout, gen)
    executor = _component("executor", seen.executor, now, heartbeat_timeout, gen)
    model = (
        _no_model(seen, now, heartbeat_timeout, gen)
        if state.model is None
        else _model(
            state.model,
            seen,
            now,
            heartbeat_timeout,
            gen,
            previous.model if previous else None,
            wall,
        )
    )
    halted = _halted(state, seen.executor, model)
    trading = seen.executor.trading if seen.executor else None
    causes = seen.executor.halt_causes if seen.executor else ()
    components_ready = feed.status == "True" and executor.status == "True" and model.active
    if state.reconcile_error:
        ready = condition(READY, False, "ReconcileFailed", state.reconcile_error, gen)
    elif halted.status == "True":
        ready = condition(READY, False, "Halted", halted.message, gen)
    elif components_ready:
        message = "feed, model and executor ready"
        if model.ready.status != "True":
            message = f"trading; {model.ready.message}"
        ready = condition(READY, True, "AllComponentsReady", message, gen)
    else:
        waiting = [
            f"{c.type}: {c.reason}" + (f" ({c.message})" if c.message else "")
            for c in (feed, model.ready, executor)
            if c.status != "True"
        ]
        ready = condition(READY, False, "ComponentsNotReady", "; ".join(waiting), gen)
    phase = _phase(state, seen, now, heartbeat_timeout, ready, halted, model, previous)
    wall_time = timestamp(wall)
    reconciled = _reconciled(seen.executor, gen)
    conditions = merge(
        previous.conditions if previous else [],
        [ready, feed, model.ready, executor, halted, *reconciled],
        wall_time,
    )
    return TradingBotStatus(
        phase=phase,
        observed_generation=gen,
        conditions=conditions,
        trading=trading_summary(trading, causes),
        model=model.status,
    )


def _phase(
    state: BotState,
    seen: BotObservations,
    now: float,
    timeout: float,
    ready: Condition,
    halted: Condition,
    model: _Model,
    previous: TradingBotStatus | None,
) -> Phase:
    fresh = [b for b in (seen.feed, seen.executor) if b is not None and b.age(now) <= timeout]
    if state.reconcile_error or any(b.state == "failed" for b in fresh):
        return Phase.FAILED
    if halted.status == "True":
        return Phase.HALTED
    if state.paused:
        return Phase.PAUSED
    troubled = model.ready.reason in _MODEL_FAILURES or any(b.state == "degraded" for b in fresh)
    if ready.status == "True":
        return Phase.DEGRADED if troubled else Phase.RUNNING
    started = previous is not None and previous.phase is not Phase.PENDING
    return Phase.DEGRADED if started or troubled else Phase.PENDING


def status_events(old: TradingBotStatus | None, new: TradingBotStatus) -> list[EventSpec]:
    """The Events a status change deserves: phase changes, halts and model outcomes."""
    events: list[EventSpec] = []
    old_phase = old.phase if old else None
    ready = find(new.conditions, READY)
    if new.phase != old_phase:
        kind: Literal["Normal", "Warning"] = "Warning" if new.phase in _WARNING_PHASES else "Normal"
        why = f": {ready.message}" if ready and ready.message else ""
        came_from = old_phase.value if old_phase else "(new)"
        events.append(EventSpec(kind, new.phase.value, f"phase {came_from} -> {new.phase}{why}"))
    before = find(old.conditions, HALTED) if old else None
    halted = find(new.conditions, HALTED)
    if halted is not None and halted.status == "True":
        if before is None or before.status != "True" or before.reason != halted.reason:
            events.append(EventSpec("Warning", halted.reason, f"halted: {halted.message}"))
    elif before is not None and before.status == "True":
        events.append(EventSpec("Normal", "HaltCleared", f"no longer halted ({before.reason})"))
    model_before = find(old.conditions, MODEL_READY) if old else None
    model_now = find(new.conditions, MODEL_READY)
    if model_now is not None and (model_before is None or model_before.reason != model_now.reason):
        if model_now.reason in _MODEL_FAILURES:
            events.append(EventSpec("Warning", model_now.reason, model_now.message))
        elif model_now.reason == "ModelLoaded":
            events.append(EventSpec("Normal", "ModelLoaded", model_now.message))
    return events


def control_commands(state: BotState, executor: Heartbeat | None) -> list[ControlMessage]:
    """Commands that bring a live executor in line with ``spec.paused`` and the kill switch.

    Level-triggered: computed from what the executor last reported, so a command lost while
    the executor restarted is sent again. A kill engaged by anyone else is left alone.
    """
    if executor is None or executor.trading is None:
        return []
    trading = executor.trading
    commands = []
    if bool(trading.get("paused")) != state.paused:
        action: Literal["pause", "resume"] = "pause" if state.paused else "resume"
        commands.append(ControlMessage(action=action, reason=PAUSE_REASON))
    ours = HaltCause.KILL_SWITCH in executor.halt_causes
    if state.kill_switch == KILL_SWITCH_FLATTEN and not ours:
        commands.append(
            ControlMessage(action="kill", reason=KILL_REASON, cause=HaltCause.KILL_SWITCH)
        )
    elif state.kill_switch is None and ours:
        commands.append(ControlMessage(action="reset", reason=f"{KILL_SWITCH_ANNOTATION} removed"))
    return commands

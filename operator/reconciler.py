"""Reconcile: a TradingBot becomes its objects, stays that way, and goes away cleanly.

``reconcile`` renders the bot with the same pure ``render`` that ``kubetrade run`` uses and
server-side applies every object under one field manager. ``restore`` puts back an owned
object that was deleted or edited by hand; ``resync`` does the same from a periodic read, for
changes no watch event reported. ``finalize`` runs when a bot is deleted: it
flattens or leaves positions as ``spec.onDelete`` says, bounded by a timeout, then deletes
what the bot owns.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry import trace

from kubetrade.domain import HaltCause
from kubetrade.errors import InvalidInputError, KubetradeError
from kubetrade.messages import ControlMessage
from kubetrade.operator.bots import BotRecord, config_hashes, object_key
from kubetrade.operator.conditions import READY, condition, merge, timestamp
from kubetrade.operator.drift import differences
from kubetrade.operator.kubeapi import KINDS, ApiError, kind_of
from kubetrade.operator.metrics import RECONCILE_ERRORS, RECONCILE_SECONDS, RECONCILES, RESTORED
from kubetrade.operator.status import (
    KILL_REASON,
    KILL_SWITCH_ANNOTATION,
    KILL_SWITCH_FLATTEN,
    EventSpec,
)
from kubetrade.operator.wiring import Collaborators
from kubetrade.render import BOT_LABEL, RenderError, render
from kubetrade.spec import ManifestError, Phase, TradingBot, TradingBotStatus, parse_bot

log = logging.getLogger(__name__)
tracer = trace.get_tracer("kubetrade.operator")

OWNED_KINDS = [
    KINDS["v1", "ConfigMap"],
    KINDS["v1", "ServiceAccount"],
    KINDS["v1", "Service"],
    KINDS["apps/v1", "Deployment"],
]


CONCURRENT_RECONCILES = 8


class InvalidBotError(InvalidInputError):
    """The bot cannot be reconciled until its spec changes (retrying would not help)."""


class RetryableError(KubetradeError):
    """The API server could not take the change now; reconcile again shortly."""


def bot_from_body(body: Mapping[str, Any]) -> TradingBot:
    """The TradingBot in a watched object, without the server's bookkeeping."""
    meta = body.get("metadata", {})
    metadata = {
        key: meta[key]
        for key in ("name", "namespace", "labels", "annotations", "generation", "uid")
        if meta.get(key) is not None
    }
    where = f"TradingBot {meta.get('namespace')}/{meta.get('name')}"
    try:
        return parse_bot(
            {
                "apiVersion": body.get("apiVersion"),
                "kind": body.get("kind"),
                "metadata": metadata,
                "spec": body.get("spec"),
            },
            where,
        )
    except ManifestError as error:
        raise InvalidBotError(str(error)) from None


def status_from_body(body: Mapping[str, Any]) -> TradingBotStatus | None:
    """The status already on the object (kept across operator restarts), if readable."""
    raw = body.get("status")
    if not raw:
        return None
    try:
        return TradingBotStatus.model_validate(raw)
    except ValueError:
        return None


class Reconciler:
    """Applies, restores and finalizes the objects of every bot."""

    def __init__(
        self,
        parts: Collaborators,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = parts.config
        self.api = parts.api
        self.bots = parts.bots
        self.observations = parts.observations
        self.heartbeats = parts.heartbeats
        self.events = parts.events
        self._clock = clock
        self._applying: set[str] = set()
        # Owned objects deleted or edited while their bot was being applied: the apply may
        # have sent them before the change, so they are applied again once it ends.
        self._changed_while_applying: dict[str, set[str]] = {}
        # Bots applied at once: hundreds of bots arriving together are applied a batch at a
        # time instead of queueing thousands of requests on the connection pool.
        self._concurrent = asyncio.Semaphore(CONCURRENT_RECONCILES)

    async def reconcile(self, body: Mapping[str, Any], trigger: str) -> None:
        """Render the bot and apply every object; raise InvalidBotError or RetryableError."""
        meta = body["metadata"]
        key = f"{meta['namespace']}/{meta['name']}"
        attributes = {"kubetrade.bot": key, "kubetrade.trigger": trigger}
        with (
            tracer.start_as_current_span("operator.reconcile", attributes=attributes) as span,
            RECONCILE_SECONDS.time(),
        ):
            record = self.bots.get(key)
            try:
                bot = bot_from_body(body)
                objects = render(bot, self.config.platform)
            except (InvalidBotError, RenderError) as error:
                span.set_attribute("kubetrade.outcome", "invalid")
                await self._refuse(key, body, record, str(error), trigger)
                raise InvalidBotError(str(error)) from None
            before = config_hashes(list(record.objects.values())) if record else {}
            if record is None:
                record = BotRecord(bot, status=status_from_body(body))
            record.bot = bot
            record.objects = {object_key(o): o for o in objects}
            self.bots.put(record)
            self._applying.add(key)
            try:
                async with self._concurrent:
                    await asyncio.gather(
                        *(self.api.apply(o, self.config.field_manager) for o in objects)
                    )
                    await self._apply_changed_meanwhile(key, record)
            except ApiError as error:
                RECONCILE_ERRORS.labels("api").inc()
                RECONCILES.labels(trigger, "error").inc()
                span.set_attribute("kubetrade.outcome", "error")
                if error.retryable:
                    # Transient: the status keeps what it said; kopf retries shortly.
                    raise RetryableError(str(error)) from error
                record.reconcile_error = str(error)
                await self.events.post(
                    record.reference(), EventSpec("Warning", "ApplyRefused", str(error))
                )
                raise InvalidBotError(str(error)) from error
            finally:
                self._applying.discard(key)
                self._changed_while_applying.pop(key, None)
            record.applied_generation = bot.metadata.generation
            record.reconcile_error = None
            RECONCILES.labels(trigger, "applied").inc()
            span.set_attribute("kubetrade.outcome", "applied")
            log.info(
                "reconciled",
                extra={"bot": key, "trigger": trigger, "generation": record.applied_generation},
            )
        after = config_hashes(objects)
        rolled = sorted(c for c in after if before and before.get(c) != after[c])
        if rolled:
            message = f"spec generation {record.applied_generation}: rolling " + ", ".join(
                f"{c} (config hash {before[c][:12]} -> {after[c][:12]})" for c in rolled
            )
            await self.events.post(
                record.reference(), EventSpec("Normal", "ConfigChanged", message)
            )
        switch = bot.metadata.annotations.get(KILL_SWITCH_ANNOTATION)
        if switch is not None and switch != KILL_SWITCH_FLATTEN:
            message = (
                f"annotation {KILL_SWITCH_ANNOTATION}={switch!r} is not understood and is ignored: "
                f"the only value is {KILL_SWITCH_FLATTEN!r}"
            )
            await self.events.post(
                record.reference(), EventSpec("Warning", "InvalidKillSwitch", message)
            )

    async def _refuse(
        self, key: str, body: Mapping[str, Any], record: BotRecord | None, error: str, trigger: str
    ) -> None:
        """Say in the status why the bot cannot be reconciled, and post an Event."""
        RECONCILE_ERRORS.labels("invalid").inc()
        RECONCILES.labels(trigger, "invalid").inc()
        log.error("cannot reconcile", extra={"bot": key, "error": error})
        await self.events.post(_reference(body), EventSpec("Warning", "InvalidSpec", error))
        if record is not None:
            # The status loop keeps writing it, with the heartbeats of what still runs.
            record.reconcile_error = error
            return
        generation = body["metadata"].get("generation")
        ready = condition(READY, False, "ReconcileFailed", error, generation)
        status = TradingBotStatus(
            phase=Phase.FAILED,
            observed_generation=generation,
            conditions=merge([], [ready], timestamp(time.time())),
        )
        try:
            await self.api.apply_status(
                {
                    "apiVersion": body.get("apiVersion"),
                    "kind": body.get("kind"),
                    "metadata": {
                        "name": body["metadata"]["name"],
                        "namespace": body["metadata"]["namespace"],
                    },
                    "status": status.model_dump(by_alias=True, exclude_none=True, mode="json"),
                },
                self.config.field_manager,
            )
        except ApiError as write_error:
            log.warning("could not write status", extra={"bot": key, "error": str(write_error)})

    async def _apply_changed_meanwhile(self, key: str, record: BotRecord) -> None:
        """Apply again the objects of ``key`` changed by someone else during its apply."""
        while names := self._changed_while_applying.pop(key, None):
            await asyncio.gather(
                *(
                    self.api.apply(record.objects[name], self.config.field_manager)
                    for name in sorted(names)
                    if name in record.objects
                )
            )

    async def restore(self, event_type: str | None, obj: Mapping[str, Any]) -> bool:
        """Put an owned object back as rendered when it was deleted or edited; True if it was."""
        meta = obj.get("metadata", {})
        bot_name = (meta.get("labels") or {}).get(BOT_LABEL)
        record = self.bots.get(f"{meta.get('namespace')}/{bot_name}")
        if record is None:
            return False
        live = None if event_type == "DELETED" else obj
        return await self._restore(record, object_key(obj), live)

    async def resync(self) -> int:
        """Check every owned object of every bot against the API server; restore what drifted.

        Watch events are not enough on their own: an object deleted while the operator was
        starting (after its bot was applied, before the watch of its kind listed) has no event
        to come. Returns how many objects were restored.
        """
        records = [r for r in self.bots if r.objects and not r.deleting]
        # One list per namespace and kind (list and watch are all the chart's Role grants).
        wanted = {(ns, kind_of(o)) for r in records for o in r.objects.values()
                  for ns in [o["metadata"]["namespace"]]}  # fmt: skip
        live: dict[str, dict[str, Any]] = {}
        unread: set[tuple[str, str]] = set()
        for namespace, kind in wanted:
            try:
                items = await self.api.list(kind, namespace, BOT_LABEL)
            except ApiError as error:
                log.warning(
                    "could not list owned objects",
                    extra={"namespace": namespace, "kind": kind.kind, "error": str(error)},
                )
                unread.add((namespace, kind.kind))
                continue
            for item in items:
                # Items of a list carry neither field; the rendered objects do.
                obj = {"apiVersion": kind.api_version, "kind": kind.kind, **item}
                live[f"{namespace}/{object_key(obj)}"] = obj
        restored = 0
        for record in records:
            for name, desired in list(record.objects.items()):
                namespace = desired["metadata"]["namespace"]
                if (namespace, desired["kind"]) not in unread:
                    restored += await self._restore(record, name, live.get(f"{namespace}/{name}"))
        return restored

    async def _restore(self, record: BotRecord, name: str, live: Mapping[str, Any] | None) -> bool:
        """Apply ``name`` of ``record`` again if ``live`` (None: deleted) differs from it."""
        key = record.key
        desired = record.objects.get(name)
        if desired is None or record.deleting:
            return False
        if live is None:
            what = "was deleted"
        else:
            changed = differences(desired, live)
            if not changed:
                return False
            what = "was changed at " + ", ".join(changed[:5])
        if key in self._applying:
            self._changed_while_applying.setdefault(key, set()).add(name)
            return False
        if record.applied_generation is None or record.reconcile_error is not None:
            return False
        try:
            await self.api.apply(desired, self.config.field_manager)
        except ApiError as error:
            # The object's next event (or the next resync) tries again.
            log.warning(
                "could not restore", extra={"bot": key, "object": name, "error": str(error)}
            )
            return False
        RESTORED.labels(desired.get("kind", "")).inc()
        await self.events.post(
            record.reference(),
            EventSpec("Normal", "ObjectRestored", f"{name} {what}; restored as rendered"),
        )
        return True

    async def finalize(self, body: Mapping[str, Any]) -> None:
        """Flatten or leave positions as ``spec.onDelete`` says, then delete what the bot owns."""
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        key = f"{namespace}/{name}"
        reference = _reference(body)
        record = self.bots.get(key)
        if record is not None:
            record.deleting = True
        on_delete = (body.get("spec") or {}).get("onDelete", "leave")
        with tracer.start_as_current_span(
            "operator.finalize", attributes={"kubetrade.bot": key, "kubetrade.on_delete": on_delete}
        ):
            if on_delete == "flatten":
                await self._flatten(namespace, name, reference)
            else:
                open_positions = self._open_positions(key)
                held = "an unknown number of" if open_positions is None else str(open_positions)
                await self.events.post(
                    reference,
                    EventSpec(
                        "Normal",
                        "PositionsLeft",
                        f"onDelete: leave: {held} open position(s) are left as they are",
                    ),
                )
            deleted = await self._delete_owned(namespace, name)
            await self.events.post(
                reference,
                EventSpec(
                    "Normal", "Deleted", f"deleted {', '.join(deleted) or 'nothing (already gone)'}"
                ),
            )
        self.bots.forget(key)
        self.observations.forget(key)

    def _open_positions(self, key: str) -> int | None:
        beat = self.observations.of(key).executor
        if beat is None or beat.trading is None:
            return None
        return int(beat.trading.get("openPositions") or 0)

    async def _flatten(self, namespace: str, name: str, reference: dict[str, Any]) -> None:
        """Kill-switch the executor until it reports no open position and no order still working
        on the exchange (a cancelled entry may yet fill), or give up at the timeout."""
        key = f"{namespace}/{name}"
        timeout = self.config.finalizer_timeout_s
        deadline = self._clock() + timeout
        kill = ControlMessage(
            action="kill",
            reason=f"{KILL_REASON}: bot deleted, onDelete: flatten",
            cause=HaltCause.KILL_SWITCH,
        )
        announced = False
        while True:
            beat = self.observations.of(key).executor
            fresh = beat is not None and beat.age(self._clock()) <= self.config.heartbeat_timeout_s
            open_positions = self._open_positions(key)
            working = 0 if beat is None else beat.working_orders
            if fresh and open_positions == 0 and working == 0:
                await self.events.post(
                    reference,
                    EventSpec(
                        "Normal",
                        "Flattened",
                        "onDelete: flatten: no open position or working order is left",
                    ),
                )
                return
            if self._clock() >= deadline:
                why = (
                    f"{open_positions} position(s) still open, {working} order(s) working"
                    if fresh
                    else "no status from the executor"
                )
                await self.events.post(
                    reference,
                    EventSpec(
                        "Warning",
                        "FinalizerTimeout",
                        f"onDelete: flatten not confirmed within {timeout:g}s ({why}); deleting "
                        "the bot anyway: check the account for open positions",
                    ),
                )
                return
            if fresh and await self.heartbeats.send(namespace, name, kill) and not announced:
                announced = True
                await self.events.post(
                    reference,
                    EventSpec(
                        "Normal",
                        "Flattening",
                        f"onDelete: flatten: closing {open_positions} open position(s) first",
                    ),
                )
            await asyncio.sleep(1.0)

    async def _delete_owned(self, namespace: str, name: str) -> list[str]:
        """Delete every object labelled as the bot's; their dependents go in the background."""
        deleted = []
        for kind in OWNED_KINDS:
            for obj in await self.api.list(kind, namespace, f"{BOT_LABEL}={name}"):
                if await self.api.delete(kind, namespace, obj["metadata"]["name"]):
                    deleted.append(f"{kind.kind}/{obj['metadata']['name']}")
        return deleted


def _reference(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = body["metadata"]
    return {
        "apiVersion": body.get("apiVersion", "kubetrade.io/v1alpha1"),
        "kind": body.get("kind", "TradingBot"),
        "name": meta["name"],
        "namespace": meta["namespace"],
        "uid": meta.get("uid"),
    }

"""The reconciler puts back what someone else deleted or changed, whenever it happened.

Against an in-memory API server (the e2e tests cover the real one): changes that arrive while
the bot is being applied, and changes no watch event ever reports (``resync``).
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import yaml

from kubetrade.operator.bots import object_key
from kubetrade.operator.config import OperatorConfig
from kubetrade.operator.kubeapi import ApiError, Kind
from kubetrade.operator.reconciler import Reconciler
from kubetrade.operator.wiring import Collaborators
from kubetrade.render import BOT_LABEL

EXAMPLE = Path(__file__).parent.parent / "k8s" / "examples" / "synthetic-paper.yaml"
NAMESPACE = "bots"


def bot_body(name: str = "alpha") -> dict[str, Any]:
    """The synthetic example as the watch delivers it."""
    body: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    body["metadata"] = {"name": name, "namespace": NAMESPACE, "generation": 1, "uid": "u-1"}
    return body


class MemoryApi:
    """The parts of KubeApi the reconciler uses, over a dict; lists return items as the server
    does (without ``apiVersion`` and ``kind``)."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.applies = 0
        self.on_apply: Callable[[dict[str, Any]], Awaitable[None]] | None = None
        self.list_error: ApiError | None = None

    async def apply(self, obj: dict[str, Any], field_manager: str) -> dict[str, Any]:
        self.applies += 1
        if self.on_apply is not None:
            await self.on_apply(obj)
        self.objects[object_key(obj)] = copy.deepcopy(obj)
        return obj

    async def list(self, kind: Kind, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        assert label_selector == BOT_LABEL
        if self.list_error is not None:
            raise self.list_error
        return [
            {k: v for k, v in copy.deepcopy(o).items() if k not in ("apiVersion", "kind")}
            for o in self.objects.values()
            if o["kind"] == kind.kind and o["metadata"]["namespace"] == namespace
        ]

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.events.append(obj)
        return obj


def reconciler(api: MemoryApi) -> Reconciler:
    return Reconciler(Collaborators.create(OperatorConfig(), api))  # type: ignore[arg-type]


def restored_events(api: MemoryApi) -> list[str]:
    return [e["message"] for e in api.events if e["reason"] == "ObjectRestored"]


def test_a_deployment_deleted_while_its_bot_is_applied_is_applied_again() -> None:
    async def scenario() -> None:
        api = MemoryApi()
        r = reconciler(api)

        deleted: list[str] = []

        async def delete_the_executor_meanwhile(obj: dict[str, Any]) -> None:
            await asyncio.sleep(0)  # every apply of the bot has started
            gone = api.objects.pop("Deployment/alpha-executor", None)
            if gone is not None:
                api.on_apply = None
                deleted.append(object_key(gone))
                # Its DELETED event arrives while the rest of the bot is still being applied.
                assert not await r.restore("DELETED", gone)

        api.on_apply = delete_the_executor_meanwhile
        await r.reconcile(bot_body(), "create")
        assert deleted == ["Deployment/alpha-executor"]
        assert "Deployment/alpha-executor" in api.objects, "applied again once the apply ended"
        assert r.bots.get(f"{NAMESPACE}/alpha") is not None
        assert await r.resync() == 0

    asyncio.run(scenario())


def test_resync_restores_what_no_watch_event_reported_and_nothing_else() -> None:
    async def scenario() -> None:
        api = MemoryApi()
        r = reconciler(api)
        await r.reconcile(bot_body(), "resume")
        assert await r.resync() == 0, "an untouched bot has nothing to restore"
        applies = api.applies

        del api.objects["Deployment/alpha-executor"]
        api.objects["ConfigMap/alpha-config"]["data"] = {"bot.json": "{}"}
        api.objects["Deployment/alpha-feed"]["status"] = {"replicas": 1}  # not ours: no drift
        assert await r.resync() == 2
        assert api.applies == applies + 2
        assert sorted(restored_events(api)) == [
            "ConfigMap/alpha-config was changed at data.bot.json; restored as rendered",
            "Deployment/alpha-executor was deleted; restored as rendered",
        ]
        assert await r.resync() == 0

    asyncio.run(scenario())


def test_resync_restores_nothing_it_could_not_read() -> None:
    async def scenario() -> None:
        api = MemoryApi()
        r = reconciler(api)
        await r.reconcile(bot_body(), "resume")
        api.list_error = ApiError(403, "Forbidden", "cannot list", "deployments")
        assert await r.resync() == 0
        assert restored_events(api) == []

    asyncio.run(scenario())


def test_resync_leaves_a_bot_being_deleted_alone() -> None:
    async def scenario() -> None:
        api = MemoryApi()
        r = reconciler(api)
        await r.reconcile(bot_body(), "resume")
        record = r.bots.get(f"{NAMESPACE}/alpha")
        assert record is not None
        record.deleting = True
        api.objects.clear()
        assert await r.resync() == 0

    asyncio.run(scenario())

"""The bots the operator currently manages: each one's spec, rendered objects and outcome."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubetrade.operator.status import KILL_SWITCH_ANNOTATION, BotState
from kubetrade.render import CONFIG_HASH_ANNOTATION, Object
from kubetrade.spec import API_GROUP, API_VERSION, KIND, TradingBot, TradingBotStatus


def object_key(obj: Mapping[str, Any]) -> str:
    """``Kind/name``: how an owned object is named within its bot."""
    return f"{obj['kind']}/{obj['metadata']['name']}"


def config_hashes(objects: list[Object]) -> dict[str, str]:
    """Component -> config hash of each rendered Deployment."""
    return {
        o["metadata"]["labels"]["app.kubernetes.io/component"]: o["spec"]["template"]["metadata"][
            "annotations"
        ][CONFIG_HASH_ANNOTATION]
        for o in objects
        if o["kind"] == "Deployment"
    }


@dataclass
class BotRecord:
    """One bot as last reconciled."""

    bot: TradingBot
    objects: dict[str, Object] = field(default_factory=dict)
    """``Kind/name`` -> the rendered object, as applied."""
    applied_generation: int | None = None
    reconcile_error: str | None = None
    deleting: bool = False
    status: TradingBotStatus | None = None
    """The status last written (or found on the object when the operator started)."""

    @property
    def key(self) -> str:
        """``namespace/name``."""
        return self.bot.key

    def state(self) -> BotState:
        """The inputs of the status computation."""
        spec, meta = self.bot.spec, self.bot.metadata
        return BotState(
            key=self.key,
            generation=meta.generation,
            applied_generation=self.applied_generation,
            model=None if spec.model is None else f"{spec.model.name}:{spec.model.version}",
            paused=spec.paused,
            kill_switch=meta.annotations.get(KILL_SWITCH_ANNOTATION),
            reconcile_error=self.reconcile_error,
        )

    def reference(self) -> dict[str, Any]:
        """The bot as an Event's ``involvedObject``."""
        meta = self.bot.metadata
        return {
            "apiVersion": f"{API_GROUP}/{API_VERSION}",
            "kind": KIND,
            "name": meta.name,
            "namespace": meta.namespace,
            "uid": meta.uid,
        }


class Bots:
    """Every managed bot by ``namespace/name``."""

    def __init__(self) -> None:
        self._records: dict[str, BotRecord] = {}

    def get(self, key: str) -> BotRecord | None:
        """The record of ``key``, if the bot is managed."""
        return self._records.get(key)

    def put(self, record: BotRecord) -> None:
        """Add or replace a record."""
        self._records[record.key] = record

    def forget(self, key: str) -> None:
        """Drop a deleted bot."""
        self._records.pop(key, None)

    def __iter__(self) -> Iterator[BotRecord]:
        return iter(list(self._records.values()))

    def __len__(self) -> int:
        return len(self._records)

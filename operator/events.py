"""Kubernetes Events about bots (what ``kubectl describe tradingbot`` lists)."""

from __future__ import annotations

import logging
import socket
from datetime import UTC, datetime
from typing import Any

from kubetrade.operator.kubeapi import ApiError, KubeApi
from kubetrade.operator.status import EventSpec

log = logging.getLogger(__name__)

COMPONENT = "kubetrade-operator"
# The API server refuses longer Event messages.
MAX_MESSAGE = 1024


def event_object(
    involved: dict[str, Any], spec: EventSpec, now: datetime, instance: str
) -> dict[str, Any]:
    """A core/v1 Event about ``involved``."""
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    message = spec.message if len(spec.message) <= MAX_MESSAGE else spec.message[:1021] + "..."
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{involved['name']}.", "namespace": involved["namespace"]},
        "involvedObject": involved,
        "type": spec.type,
        "reason": spec.reason,
        "message": message,
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": instance,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


class EventPoster:
    """Posts Events; a refused Event is logged, never raised (it must not fail a reconcile)."""

    def __init__(self, api: KubeApi) -> None:
        self._api = api
        self._instance = socket.gethostname()

    async def post(self, involved: dict[str, Any], spec: EventSpec) -> None:
        """Post one Event about ``involved`` (an object reference) and log it."""
        where = f"{involved['namespace']}/{involved['name']}"
        level = logging.WARNING if spec.type == "Warning" else logging.INFO
        log.log(level, spec.message, extra={"bot": where, "reason": spec.reason})
        try:
            await self._api.create(
                event_object(involved, spec, datetime.now(tz=UTC), self._instance)
            )
        except ApiError as error:
            log.warning(
                "could not post an event",
                extra={"bot": where, "reason": spec.reason, "error": str(error)},
            )

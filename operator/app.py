"""``kubetrade operator``: the kopf operator, its status loop, NATS and metrics in one process.

kopf peering is not high availability: run exactly one replica (the chart's Deployment uses
the Recreate strategy so two never overlap during an upgrade).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping
from typing import Any

import kopf

from kubetrade.operator.config import OperatorConfig
from kubetrade.operator.handlers import register
from kubetrade.operator.kubeapi import Connection, KubeApi
from kubetrade.operator.metrics import RESYNCS, MetricsServer
from kubetrade.operator.reconciler import Reconciler
from kubetrade.operator.statusloop import StatusLoop, cancel
from kubetrade.operator.wiring import Collaborators

log = logging.getLogger(__name__)

STATUS_CONNECTIONS = 8


class Operator:
    """Everything the handlers share: API client, bots, heartbeats, status loop, metrics."""

    def __init__(self, config: OperatorConfig, connection: Connection) -> None:
        self.config = config
        parts = Collaborators.create(config, KubeApi(connection, config.max_connections))
        # Status writes get a pool of their own: with hundreds of bots being applied at once,
        # they would otherwise queue behind every apply and statuses would lag the objects.
        status_parts = parts.through(KubeApi(connection, STATUS_CONNECTIONS))
        self.api, self.status_api, self.heartbeats = parts.api, status_parts.api, parts.heartbeats
        self.reconciler = Reconciler(parts)
        self.status = StatusLoop(status_parts)
        self.metrics = (
            MetricsServer(config.metrics_host, config.metrics_port) if config.metrics_port else None
        )
        self._loop_task: asyncio.Task[None] | None = None
        self._resync_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect to NATS, serve metrics and start the status loop (kopf's startup)."""
        await self.heartbeats.start()
        if self.metrics is not None:
            await self.metrics.start()
        self._loop_task = asyncio.create_task(self.status.run(), name="status-loop")
        self._resync_task = asyncio.create_task(self._resync_forever(), name="resync")
        log.info(
            "operator started",
            extra={
                "namespaces": list(self.config.namespaces) or "all",
                "nats_url": self.config.nats_url,
                "metrics_port": self.config.metrics_port,
            },
        )

    async def stop(self) -> None:
        """Stop the loop, NATS, metrics and the API session (kopf's cleanup)."""
        await cancel(self._loop_task)
        await cancel(self._resync_task)
        await self.heartbeats.stop()
        if self.metrics is not None:
            await self.metrics.stop()
        await self.api.close()
        await self.status_api.close()

    async def _resync_forever(self) -> None:
        """Resync every ``resync_interval_s``; a failing pass is logged and the next one runs."""
        while True:
            await asyncio.sleep(self.config.resync_interval_s)
            try:
                await self.reconciler.resync()
            except Exception:
                RESYNCS.labels("error").inc()
                log.exception("resync failed")
            else:
                RESYNCS.labels("ok").inc()

    async def finalize(self, body: Mapping[str, Any]) -> None:
        """A bot is being deleted: the reconciler's finalizer, then forget its bookkeeping."""
        await self.reconciler.finalize(body)
        self.status.forget(f"{body['metadata']['namespace']}/{body['metadata']['name']}")


async def serve(
    config: OperatorConfig,
    *,
    connection: Connection | None = None,
    stop_flag: asyncio.Event | threading.Event | None = None,
    ready_flag: asyncio.Event | threading.Event | None = None,
) -> None:
    """Run the operator in the current event loop until ``stop_flag`` is set."""
    operator = Operator(config, connection or Connection.from_environment())
    registry = kopf.OperatorRegistry()
    register(registry, operator)
    await kopf.operator(
        registry=registry,
        standalone=True,
        clusterwide=not config.namespaces,
        namespaces=list(config.namespaces),
        liveness_endpoint=config.liveness_endpoint,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    )

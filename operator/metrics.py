"""Prometheus metrics of the operator, on a registry of its own (served at ``/metrics``)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from kubetrade.spec import Phase

REGISTRY = CollectorRegistry()

RECONCILES = Counter(
    "kubetrade_operator_reconciles_total",
    "Reconciles of TradingBots, by trigger and outcome",
    ["trigger", "outcome"],
    registry=REGISTRY,
)
RECONCILE_ERRORS = Counter(
    "kubetrade_operator_reconcile_errors_total",
    "Failed reconciles, by kind of error",
    ["kind"],
    registry=REGISTRY,
)
RECONCILE_SECONDS = Histogram(
    "kubetrade_operator_reconcile_duration_seconds",
    "Render and server-side apply of one bot",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
RESTORED = Counter(
    "kubetrade_operator_restored_objects_total",
    "Owned objects put back after a manual deletion or edit",
    ["kind"],
    registry=REGISTRY,
)
RESYNCS = Counter(
    "kubetrade_operator_resyncs_total",
    "Periodic reads of every owned object, by outcome (ok: the pass completed)",
    ["outcome"],
    registry=REGISTRY,
)
STATUS_WRITES = Counter(
    "kubetrade_operator_status_writes_total",
    "TradingBot status writes, by outcome",
    ["outcome"],
    registry=REGISTRY,
)
CONTROLS = Counter(
    "kubetrade_operator_control_commands_total",
    "Control commands sent to executors",
    ["action"],
    registry=REGISTRY,
)
BOTS = Gauge(
    "kubetrade_operator_bots", "Managed TradingBots by phase", ["phase"], registry=REGISTRY
)
HEARTBEATS = Counter(
    "kubetrade_operator_heartbeats_total",
    "Worker status messages received on NATS",
    registry=REGISTRY,
)
STATUS_REFUSED = Counter(
    "kubetrade_operator_status_refused_total",
    "Status messages refused by admission (wrong bot for the subject, clock, counters)",
    ["reason"],
    registry=REGISTRY,
)


def count_phases(phases: list[Phase]) -> None:
    """Set the bots-by-phase gauge (every phase present, zeros included)."""
    for phase in Phase:
        BOTS.labels(phase.value).set(sum(1 for p in phases if p is phase))


class MetricsServer:
    """Serves ``/metrics`` from the operator's event loop."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Start listening."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

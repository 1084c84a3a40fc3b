"""The process entry point of ``kubetrade operator``: flags in, a running operator out."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from kubetrade.operator.app import serve
from kubetrade.operator.config import OperatorConfig
from kubetrade.render import NatsAuth, Platform
from kubetrade.telemetry import setup_logging, setup_tracing


@dataclass(frozen=True)
class OperatorOptions:
    """The command's flags, as given (each also has an environment variable)."""

    namespaces: tuple[str, ...] = ()
    nats_url: str | None = None
    bot_nats_url: str | None = None
    image: str | None = None
    image_pull_policy: str = "IfNotPresent"
    database_secret: str = "kubetrade-database"
    database_secret_key: str = "uri"
    bot_nats_auth: str | None = None
    bot_nats_secret: str = "{bot}-nats"
    bot_nats_tls_secret: str | None = None
    bot_otlp_endpoint: str | None = None
    model_store: str | None = None
    model_store_claim: str | None = None
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 9090
    liveness: str | None = "http://0.0.0.0:8080/healthz"
    status_interval: float = 5.0
    heartbeat_timeout: float = 10.0
    finalizer_timeout: float = 60.0
    resync_interval: float = 60.0
    log_level: str = "INFO"

    def config(self) -> OperatorConfig:
        """The operator's configuration; ValueError names a flag that does not fit."""
        defaults = Platform()
        platform = Platform(
            image=self.image or defaults.image,
            image_pull_policy=self.image_pull_policy,
            nats_url=self.bot_nats_url or self.nats_url or defaults.nats_url,
            database_secret=self.database_secret,
            database_secret_key=self.database_secret_key,
            nats_auth=(
                NatsAuth(kind=self.bot_nats_auth, secret=self.bot_nats_secret)  # type: ignore[arg-type]
                if self.bot_nats_auth
                else None
            ),
            nats_tls_secret=self.bot_nats_tls_secret,
            otlp_endpoint=self.bot_otlp_endpoint,
            model_store=self.model_store,
            model_store_claim=self.model_store_claim,
        )
        return OperatorConfig(
            platform=platform,
            nats_url=self.nats_url,
            namespaces=self.namespaces,
            trading_interval_s=self.status_interval,
            heartbeat_timeout_s=self.heartbeat_timeout,
            finalizer_timeout_s=self.finalizer_timeout,
            resync_interval_s=self.resync_interval,
            metrics_host=self.metrics_host,
            metrics_port=self.metrics_port,
            liveness_endpoint=self.liveness,
        )


class _DropKopfSettings(logging.Filter):
    """kopf attaches its whole settings object to each record; one JSON line each is enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.__dict__.pop("settings", None)
        return True


def run_operator(options: OperatorOptions) -> None:
    """Run until SIGTERM or SIGINT (kopf handles both and stops gracefully)."""
    config = options.config()
    setup_logging("operator", options.log_level)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_DropKopfSettings())
    if options.log_level.upper() != "DEBUG":
        # kopf logs every handler call at INFO; at hundreds of bots that drowns the rest.
        logging.getLogger("kopf").setLevel(logging.WARNING)
    setup_tracing("kubetrade-operator", "(all bots)")
    asyncio.run(serve(config))

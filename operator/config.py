"""The operator's settings: where bots run and how often it looks at them."""

from __future__ import annotations

from dataclasses import dataclass, field

from kubetrade.errors import InvalidInputError
from kubetrade.render import Platform

FIELD_MANAGER = "kubetrade-operator"
FINALIZER = "kubetrade.io/finalizer"


@dataclass(frozen=True)
class OperatorConfig:
    """Everything ``kubetrade operator`` is told by flags or the environment.

    ``trading_interval_s`` bounds how often the trading figures of one bot are written to its
    status (they change every second); condition and phase changes are written on the next
    tick. ``resync_interval_s`` is how often every owned object is read back and restored if it
    drifted without a watch event saying so. ``finalizer_timeout_s`` bounds how long deleting a
    bot waits for its positions to flatten before it deletes the workloads anyway.
    """

    platform: Platform = field(default_factory=Platform)
    nats_url: str | None = None
    namespaces: tuple[str, ...] = ()
    field_manager: str = FIELD_MANAGER
    status_tick_s: float = 0.5
    trading_interval_s: float = 5.0
    heartbeat_timeout_s: float = 10.0
    control_resend_s: float = 5.0
    finalizer_timeout_s: float = 60.0
    resync_interval_s: float = 60.0
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 9090
    liveness_endpoint: str | None = "http://0.0.0.0:8080/healthz"
    max_connections: int = 32

    def __post_init__(self) -> None:
        for name in (
            "status_tick_s",
            "trading_interval_s",
            "heartbeat_timeout_s",
            "resync_interval_s",
        ):
            if getattr(self, name) <= 0:
                raise InvalidInputError(
                    f"OperatorConfig.{name} must be positive, got {getattr(self, name)}"
                )
        if self.finalizer_timeout_s < 0:
            raise InvalidInputError("OperatorConfig.finalizer_timeout_s must not be negative")
